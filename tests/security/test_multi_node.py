"""Several nodes: two ``tether server`` processes (node-a, node-b) sharing one PostgreSQL schema
and one root key (the ``env`` key provider), both serving the same ``public_url``.

- a task revoked (or completed) through one node is refused by the other on the very next request;
- a DPoP proof (and a client assertion) used on one node is refused when replayed on the other;
- concurrent activations of a ``max_uses`` grant through both nodes never exceed the budget;
- the audit log stays one hash chain, verifiable from either node, holding both nodes' events.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import shutil
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest

from tests.integration.governed import SECRETS, seed
from tests.security.canaries import new_canary
from tests.security.nodes import (
    PUBLIC_URL,
    Registered,
    ServerProcess,
    drop_schema,
    new_root_key,
    node_client,
    node_env,
    pg_dsn_or_skip,
    register,
    tether_init,
)
from tests.security.report import record

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres, pytest.mark.slow]

T = TypeVar("T")
SECRET = "prod/github/token"
TASK = {
    "purpose": "deploy",
    "objective": "ship through two nodes",
    "sensitivity": "internal",
    "secrets": [SECRET],
    "destinations": ["github"],
    "ttl_seconds": 300,
}


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on its own loop, in a thread (from a sync fixture)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    admin: dict[str, str]
    value: str
    names: Iterator[int] = field(default_factory=lambda: iter(range(1_000_000)))

    async def agent(self, http: httpx.AsyncClient, label: str) -> Registered:
        return await register(http, self.admin, f"{label}-{next(self.names)}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    dsn = pg_dsn_or_skip()
    schema = "t_nodes_" + secrets.token_hex(6)
    base = tmp_path_factory.mktemp("nodes")
    env = node_env(TETHER_ROOT_KEY=new_root_key())
    servers: list[ServerProcess] = []
    try:
        token = tether_init(
            base / "a", env, "--database-url", dsn, "--pg-schema", schema, "--key-provider", "env"
        )
        (base / "b").mkdir(mode=0o700)
        shutil.copy(base / "a" / "tether.toml", base / "b" / "tether.toml")  # same store, same key
        for name in ("a", "b"):
            server = ServerProcess(
                base / name, {**env, "TETHER_NODE_ID": f"node-{name}"}, base / f"{name}.log"
            )
            servers.append(server)
            server.start()
        admin = {"Authorization": f"Bearer {token}"}
        values = {path: new_canary(path) for path in SECRETS}

        async def seeded() -> None:
            async with node_client(servers[0].port) as http:
                await seed(http, admin, values)

        _run(seeded)
        yield Cluster(servers[0], servers[1], admin, values[SECRET])
    finally:
        for server in servers:
            server.stop()
        _run(lambda: drop_schema(dsn, schema))


@pytest.fixture
async def clients(cluster: Cluster) -> Any:
    async with node_client(cluster.a.port) as http_a, node_client(cluster.b.port) as http_b:
        yield http_a, http_b


def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_task_ended_through_one_node_is_refused_by_the_other_on_the_next_request(
    cluster: Cluster, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    http_a, http_b = clients
    bot = await cluster.agent(http_a, "revoke-bot")
    on = {"a": bot.on(http_a), "b": bot.on(http_b)}
    rounds = 0
    # Each round: written through one node, used through the other, ended through the first,
    # refused through the other at once. By an operator (revoke) and by the agent (complete).
    for writer, reader, how in (
        ("a", "b", "revoke"),
        ("b", "a", "revoke"),
        ("a", "b", "complete"),
        ("b", "a", "complete"),
    ):
        http_w = http_a if writer == "a" else http_b
        task = _ok(await on[writer].request("POST", "/v1/tasks", json=TASK), 201)
        grant = _ok(
            await on[writer].request(
                "POST",
                f"/v1/tasks/{task['id']}/grants",
                json={"secret": SECRET, "destination": "github", "mode": "reveal", "max_uses": 10},
            ),
            201,
        )
        used = _ok(await on[reader].request("POST", f"/v1/grants/{grant['id']}/activate"))
        assert used["value"] == cluster.value
        if how == "revoke":
            _ok(
                await http_w.post(
                    f"/v1/tasks/{task['id']}/revoke", json={"reason": "drill"}, headers=cluster.admin
                )
            )
        else:
            _ok(await on[writer].request("POST", f"/v1/tasks/{task['id']}/complete"))
        refused = await on[reader].request("POST", f"/v1/grants/{grant['id']}/activate")
        assert refused.status_code == 403, refused.text
        assert refused.json()["type"] == "urn:tether:problem:denied"
        assert ("revoked" if how == "revoke" else "completed") in refused.json()["detail"]
        assert cluster.value not in refused.text
        seen = _ok(await on[reader].request("GET", f"/v1/tasks/{task['id']}"))
        assert seen["status"] == ("revoked" if how == "revoke" else "completed")
        rounds += 1
    record("multi-node", tried=rounds, refused=rounds, note="2 nodes, one PostgreSQL")


async def test_dpop_proof_and_client_assertion_replayed_on_the_other_node_are_refused(
    cluster: Cluster, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    http_a, http_b = clients
    bot = await cluster.agent(http_a, "replay-bot")
    agent = bot.on(http_a)
    task = _ok(await agent.request("POST", "/v1/tasks", json=TASK), 201)
    grant = _ok(
        await agent.request(
            "POST",
            f"/v1/tasks/{task['id']}/grants",
            json={"secret": SECRET, "destination": "github", "mode": "reveal", "max_uses": 10},
        ),
        201,
    )
    session = agent._session
    token = await agent.token()  # issued by node A
    read = f"/v1/tasks/{task['id']}"

    # Control: node B accepts node A's token with a fresh proof, so a refusal below is the replay.
    _ok(await http_b.get(read, headers=session.signed_headers("GET", PUBLIC_URL + read, token)))

    # A read: the identical request, first to A, then to B.
    headers = session.signed_headers("GET", PUBLIC_URL + read, token)
    _ok(await http_a.get(read, headers=headers))
    replayed = await http_b.get(read, headers=headers)
    assert replayed.status_code == 401, replayed.text
    assert "DPoP" in replayed.headers["www-authenticate"]

    # An activation: first to B, then to A; the replay is refused and counts no use.
    use = f"/v1/grants/{grant['id']}/activate"
    headers = session.signed_headers("POST", PUBLIC_URL + use, token)
    assert _ok(await http_b.post(use, headers=headers))["value"] == cluster.value
    replayed_use = await http_a.post(use, headers=headers)
    assert replayed_use.status_code == 401, replayed_use.text
    assert cluster.value not in replayed_use.text
    grants = _ok(await http_b.get(f"{read}/grants", headers=cluster.admin))
    assert [g["uses"] for g in grants["items"]] == [1]

    # The token request itself (client assertion and DPoP proof), first to A, then to B.
    form, token_headers = session.token_request()
    _ok(await http_a.post("/v1/auth/token", data=form, headers=token_headers))
    replayed_token = await http_b.post("/v1/auth/token", data=form, headers=token_headers)
    assert replayed_token.status_code in (400, 401), replayed_token.text
    assert "access_token" not in replayed_token.text
    record("multi-node", tried=3, refused=3)


async def test_concurrent_activations_through_both_nodes_never_exceed_max_uses(
    cluster: Cluster, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    http_a, http_b = clients
    bot = await cluster.agent(http_a, "race-bot")
    agents = [bot.on(http_a), bot.on(http_b)]
    for agent in agents:
        await agent.token()
    task = _ok(await agents[0].request("POST", "/v1/tasks", json=TASK), 201)
    max_uses, per_node, grants = 4, 8, 3
    tried = refused = 0
    for _ in range(grants):
        grant = _ok(
            await agents[0].request(
                "POST",
                f"/v1/tasks/{task['id']}/grants",
                json={"secret": SECRET, "destination": "github", "mode": "reveal", "max_uses": max_uses},
            ),
            201,
        )
        path = f"/v1/grants/{grant['id']}/activate"
        answers = await asyncio.gather(
            *(agent.request("POST", path) for agent in agents for _ in range(per_node))
        )
        statuses = sorted(r.status_code for r in answers)
        assert set(statuses) <= {200, 403}, statuses
        assert statuses.count(200) == max_uses, statuses
        listed = _ok(await http_a.get(f"/v1/tasks/{task['id']}/grants", headers=cluster.admin))
        assert {g["id"]: g["uses"] for g in listed["items"]}[grant["id"]] == max_uses
        events = _ok(
            await http_b.get(
                "/v1/audit/events",
                params={"kind": "grant.activate", "task": task["id"], "limit": 1000},
                headers=cluster.admin,
            )
        )["events"]
        assert sum(e["data"]["grant_id"] == grant["id"] for e in events) == max_uses
        tried += len(answers)
        refused += statuses.count(403)
    record("multi-node", tried=tried, refused=refused)


async def test_audit_log_stays_one_chain_verifiable_from_either_node(
    cluster: Cluster, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    http_a, http_b = clients
    bots = [await cluster.agent(http, "chain-bot") for http in (http_a, http_b)]
    agents = [bot.on(http) for bot in bots for http in (http_a, http_b)]
    # Both nodes append at once: each batch must land on the other's head, never fork the chain.
    opened = await asyncio.gather(*(agent.request("POST", "/v1/tasks", json=TASK) for agent in agents * 5))
    assert all(r.status_code == 201 for r in opened), [r.text for r in opened if r.status_code != 201]

    verdicts = [_ok(await http.get("/v1/audit/verify", headers=cluster.admin)) for http in (http_a, http_b)]
    for verdict in verdicts:
        assert verdict["ok"] is True, verdict
    assert verdicts[0]["head_seq"] <= verdicts[1]["head_seq"]

    exported = await http_b.get("/v1/audit/export", headers=cluster.admin)
    assert exported.status_code == 200
    events = [json.loads(line) for line in exported.content.splitlines() if line]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["prev_hash"] == p["hash"] for p, e in itertools.pairwise(events))
    nodes = {e["node"] for e in events}
    assert {"node-a", "node-b"} <= nodes, nodes
    opened_by = {e["node"] for e in events if e["kind"] == "task.open"}
    assert opened_by >= {"node-a", "node-b"}, opened_by
    record(
        "multi-node",
        tried=len(opened),
        note=f"2 nodes, one PostgreSQL: one chain of {len(events)} events from {sorted(nodes)}",
    )
