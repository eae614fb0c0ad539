"""Crash safety: a ``tether server`` process under load is killed with SIGKILL mid-way and restarted
on the same data dir.

While several agents open tasks, issue grants, activate them (reveal and dynamic) and complete
their tasks, the server is killed with no chance to flush anything. After a restart:

- the audit chain verifies;
- nothing acknowledged is lost: every activation the client got a 200 for has its
  ``grant.activate`` event, and each grant's use count equals its events (they commit in one
  transaction) and is never below what was acknowledged; at most one in-flight activation per
  interrupted agent is counted without an acknowledgement;
- no grant of an ended task activates, and every grant of an ended task is revoked in the store;
- a task that expired while the server was down is refused on the first request and ended by the
  sweeper (its grants revoked, its engine leases revoked);
- no engine lease of an ended task is left unrevoked (``leases_to_revoke`` is empty).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.governed import SECRETS, seed
from tests.security.canaries import new_canary
from tests.security.nodes import (
    PUBLIC_URL,
    Registered,
    ServerProcess,
    drop_schema,
    node_client,
    node_env,
    pg_dsn_or_skip,
    register,
    tether_init,
)
from tests.security.report import record
from tether.api import create_app
from tether.audit.verify import verify_store
from tether.broker import Broker
from tether.config import Settings
from tether.domain.tasks import Lease
from tether.engines import IssuedCredential, LeaseRequest
from tether.sdk import AsyncAgent, TetherConnectionError
from tether.store import open_storage

# Puts a node under load for a bounded time: never beside the load suite (one xdist worker, in turn).
pytestmark = [pytest.mark.asyncio, pytest.mark.xdist_group("load")]

AGENTS = 6
KILL_AFTER_TASKS = 2  # completed tasks before the kill ...
KILL_AFTER_ACTIVATIONS = 30  # ... and acknowledged activations ...
LOAD_MAX_SECONDS = 12.0  # ... unless the machine is too slow for that
KILL_JITTER_SECONDS = 0.3
DOWN_TASK_TTL_SECONDS = 4  # opened just before the kill, expires while the server is down
SWEEP_INTERVAL_SECONDS = 1
SWEEP_WAIT_SECONDS = 10.0
ENDED = ("completed", "failed", "revoked", "expired")

SECRET = "prod/github/token"
TASK = {
    "purpose": "deploy",
    "objective": "ship under load",
    "sensitivity": "internal",
    "secrets": [SECRET],
    "destinations": ["github"],
    "ttl_seconds": 120,
}
REVEAL = {"secret": SECRET, "destination": "github", "mode": "reveal", "max_uses": 5}
DYNAMIC = {"secret": SECRET, "destination": "github", "mode": "dynamic"}


class UnexpectedStatusError(Exception):
    """A status the governed path should not have answered."""


@dataclass
class Ledger:
    """What the clients were told (acknowledged), as opposed to what they only asked."""

    acked: Counter[str] = field(default_factory=Counter)  # grant id -> 200s for its activations
    grants: dict[str, str] = field(default_factory=dict)  # grant id -> task id (issuance acknowledged)
    reveal_grant_of: dict[str, str] = field(default_factory=dict)  # task id -> its reveal grant
    owner: dict[str, int] = field(default_factory=dict)  # task id -> agent index
    completed: set[str] = field(default_factory=set)  # completion acknowledged
    interrupted: int = 0  # agents whose request was cut off by the kill
    requests: int = 0
    server_errors: int = 0
    unexpected: list[str] = field(default_factory=list)

    def expect(self, response: httpx.Response, status: int) -> dict[str, Any]:
        self.requests += 1
        if response.status_code >= 500:
            self.server_errors += 1
        if response.status_code != status:
            self.unexpected.append(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:200]}"
            )
            raise UnexpectedStatusError(self.unexpected[-1])
        body: dict[str, Any] = response.json()
        return body


@dataclass
class Deployment:
    server: ServerProcess
    settings: Settings
    admin: dict[str, str]
    agents: list[Registered]
    value: str
    sqlite_path: Path | None
    pg: tuple[str, str] | None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Deployment]:
    env = node_env(TETHER_SWEEP_INTERVAL_SECONDS=str(SWEEP_INTERVAL_SECONDS))
    init_args: list[str] = []
    pg: tuple[str, str] | None = None
    if request.param == "postgresql":
        dsn = pg_dsn_or_skip()
        pg = (dsn, "t_crash_" + secrets.token_hex(6))
        init_args = ["--database-url", dsn, "--pg-schema", pg[1]]
    data_dir = tmp_path / "data"
    try:
        token = tether_init(data_dir, env, *init_args)
        server = ServerProcess(data_dir, env, tmp_path / "server.log")
        server.start()
        try:
            admin = {"Authorization": f"Bearer {token}"}
            values = {path: new_canary(path) for path in SECRETS}
            async with node_client(server.port) as http:
                await seed(http, admin, values)
                agents = [await register(http, admin, f"crash-bot-{i}") for i in range(AGENTS)]
            settings = Settings.load(data_dir, environ=env)
            sqlite_path = data_dir / "tether.db" if pg is None else None
            yield Deployment(server, settings, admin, agents, values[SECRET], sqlite_path, pg)
        finally:
            server.stop()
    finally:
        if pg is not None:
            await drop_schema(*pg)


async def _activate(agent: AsyncAgent, grant_id: str) -> httpx.Response:
    return await agent.request("POST", f"/v1/grants/{grant_id}/activate")


async def _agent_loop(agent: AsyncAgent, index: int, ledger: Ledger, stop: asyncio.Event) -> None:
    """Task after task until the server dies under it (or ``stop``)."""
    try:
        while not stop.is_set():
            task_id = ledger.expect(await agent.request("POST", "/v1/tasks", json=TASK), 201)["id"]
            ledger.owner[task_id] = index
            for body in (REVEAL, DYNAMIC):
                grant = ledger.expect(
                    await agent.request("POST", f"/v1/tasks/{task_id}/grants", json=body), 201
                )
                ledger.grants[grant["id"]] = task_id
                if body is REVEAL:
                    ledger.reveal_grant_of[task_id] = grant["id"]
                for _ in range(3 if body is REVEAL else 1):
                    ledger.expect(await _activate(agent, grant["id"]), 200)
                    ledger.acked[grant["id"]] += 1
            ledger.expect(await agent.request("POST", f"/v1/tasks/{task_id}/complete"), 200)
            ledger.completed.add(task_id)
    except TetherConnectionError:
        ledger.interrupted += 1  # the kill: this request's outcome is unknown to the client


async def _audit_events(http: httpx.AsyncClient, admin: dict[str, str], kind: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = await http.get(
            "/v1/audit/events", params={"kind": kind, "after": after, "limit": 1000}, headers=admin
        )
        assert page.status_code == 200, page.text
        events += page.json()["events"]
        if page.json()["next_after"] is None:
            return events
        after = page.json()["next_after"]


def _sweeper_ended(events: list[dict[str, Any]], task_id: str) -> bool:
    return any(
        e.get("reason") == "expired" and task_id in e.get("data", {}).get("tasks_ended", []) for e in events
    )


async def _unrevoked_leases_of_ended_tasks(deployment: Deployment) -> tuple[int, list[str]]:
    """(leases of ended tasks, those whose engine credential is not revoked), read from the tables."""
    query = (
        "SELECT l.id, l.engine_revoked_at_us FROM {leases} l JOIN {tasks} t ON t.id = l.task_id "
        "WHERE t.status IN ('completed', 'failed', 'revoked', 'expired')"
    )
    if deployment.sqlite_path is not None:
        with sqlite3.connect(deployment.sqlite_path) as conn:
            rows = list(conn.execute(query.format(leases="leases", tasks="tasks")))
        conn.close()
    else:
        import asyncpg

        assert deployment.pg is not None
        dsn, schema = deployment.pg
        pg = await asyncpg.connect(dsn)
        try:
            found = await pg.fetch(query.format(leases=f'"{schema}".leases', tasks=f'"{schema}".tasks'))
        finally:
            await pg.close()
        rows = [tuple(row) for row in found]
    return len(rows), [row[0] for row in rows if row[1] is None]


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing_acknowledged_and_ended_tasks_stay_ended(
    deployment: Deployment,
) -> None:
    started = time.monotonic()
    server, admin = deployment.server, deployment.admin
    ledger = Ledger()

    # Load; once tasks complete and activations flow, a task that will expire while the server is
    # down (a reveal and a dynamic grant in use), then SIGKILL with the load still running.
    stop = asyncio.Event()
    clients = [node_client(server.port, timeout_seconds=15.0) for _ in deployment.agents]
    try:
        workers = [
            asyncio.create_task(_agent_loop(agent.on(http), i, ledger, stop))
            for i, (agent, http) in enumerate(zip(deployment.agents, clients, strict=True))
        ]
        load_started = time.monotonic()
        while (
            (len(ledger.completed) < KILL_AFTER_TASKS or sum(ledger.acked.values()) < KILL_AFTER_ACTIVATIONS)
            and time.monotonic() - load_started < LOAD_MAX_SECONDS
            and not any(w.done() for w in workers)
        ):
            await asyncio.sleep(0.02)
        async with node_client(server.port) as http:
            owner = deployment.agents[0].on(http)
            down = ledger.expect(
                await owner.request("POST", "/v1/tasks", json={**TASK, "ttl_seconds": DOWN_TASK_TTL_SECONDS}),
                201,
            )
            down_expires = datetime.fromisoformat(down["expires_at"])
            ledger.owner[down["id"]] = 0
            down_grants = []
            for body in (REVEAL, DYNAMIC):
                grant = ledger.expect(
                    await owner.request("POST", f"/v1/tasks/{down['id']}/grants", json=body), 201
                )
                ledger.expect(await _activate(owner, grant["id"]), 200)
                ledger.grants[grant["id"]] = down["id"]
                ledger.acked[grant["id"]] += 1
                down_grants.append(grant["id"])
        await asyncio.sleep(random.uniform(0.0, KILL_JITTER_SECONDS))  # land anywhere in a request
        server.kill()
        killed_at = datetime.now(UTC)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), timeout=30)
        for worker in workers:
            if not worker.cancelled() and isinstance(worker.exception(), UnexpectedStatusError):
                raise worker.exception()  # type: ignore[misc]
    finally:
        for http in clients:
            await http.aclose()
    assert killed_at < down_expires, "the down task expired before the kill; raise DOWN_TASK_TTL_SECONDS"
    assert ledger.completed, "no task completed before the kill"
    acked_before_kill = sum(ledger.acked.values())

    # Down until the task has expired, then restart on the same data dir.
    await asyncio.sleep(max(0.0, (down_expires - datetime.now(UTC)).total_seconds()) + 0.3)
    await asyncio.to_thread(server.start)
    refused = 0
    async with node_client(server.port) as http:
        owner = deployment.agents[0].on(http)
        for grant_id in down_grants:  # the first requests after the restart
            response = await _activate(owner, grant_id)
            ledger.requests += 1
            assert response.status_code == 403, response.text
            assert "expired" in response.json()["detail"]
            assert deployment.value not in response.text
            refused += 1

        deadline = time.monotonic() + SWEEP_WAIT_SECONDS
        while not _sweeper_ended(await _audit_events(http, admin, "task.end"), down["id"]):
            assert time.monotonic() < deadline, "the sweeper did not end the task that expired while down"
            await asyncio.sleep(0.2)

        verified = await http.get("/v1/audit/verify", headers=admin)
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"] is True, verified.json()

        activations = Counter(
            e["data"]["grant_id"] for e in await _audit_events(http, admin, "grant.activate")
        )
        # Every acknowledged opening, issuance and completion has its event too.
        opened = {e["task_id"] for e in await _audit_events(http, admin, "task.open")}
        assert set(ledger.owner) <= opened, set(ledger.owner) - opened
        issued = {e["data"]["grant_id"] for e in await _audit_events(http, admin, "grant.issue")}
        assert set(ledger.grants) <= issued, set(ledger.grants) - issued
        ended = {
            e["task_id"]: e["data"]["status"]
            for e in await _audit_events(http, admin, "task.end")
            if e.get("task_id") is not None
        }
        assert {task_id: ended.get(task_id) for task_id in ledger.completed} == dict.fromkeys(
            ledger.completed, "completed"
        )

        # No grant of an ended task activates (through its own agent, with a fresh proof).
        for task_id in sorted(ledger.completed)[:8]:
            agent = deployment.agents[ledger.owner[task_id]].on(http)
            response = await _activate(agent, ledger.reveal_grant_of[task_id])
            ledger.requests += 1
            assert response.status_code == 403, response.text
            assert "completed" in response.json()["detail"]
            refused += 1
        # The sweeper's pass may still be revoking the down task's leases: let it finish one more.
        await asyncio.sleep(SWEEP_INTERVAL_SECONDS + 0.5)
    server.stop()

    # Read the store in-process, the server stopped.
    storage = open_storage(deployment.settings.database_url, pg_schema=deployment.settings.pg_schema)
    try:
        assert await verify_store(storage)
        counted_without_ack = 0
        for grant_id, task_id in ledger.grants.items():
            stored = await storage.get_grant(grant_id)
            assert stored is not None
            assert stored.uses == activations[grant_id], (grant_id, stored.uses, activations[grant_id])
            assert stored.uses >= ledger.acked[grant_id], (grant_id, stored.uses, ledger.acked[grant_id])
            counted_without_ack += stored.uses - ledger.acked[grant_id]
            task = await storage.get_task(task_id)
            assert task is not None
            if task.status.value in ENDED:
                assert stored.revoked_at is not None, (
                    f"grant {grant_id} of {task.status.value} task {task_id}"
                )
        assert counted_without_ack <= ledger.interrupted
        for task_id in ledger.completed:
            task = await storage.get_task(task_id)
            assert task is not None
            assert task.status.value == "completed"
        down_task = await storage.get_task(down["id"])
        assert down_task is not None
        assert down_task.status.value == "expired"  # ended in the store, not only on read
        assert await storage.leases_to_revoke(datetime.now(UTC)) == []
    finally:
        await storage.close()
    leases, unrevoked = await _unrevoked_leases_of_ended_tasks(deployment)
    assert unrevoked == [], f"engine leases of ended tasks not revoked: {unrevoked}"
    assert leases >= 1

    elapsed = time.monotonic() - started
    record(
        f"crash safety ({deployment.settings.backend})",
        tried=ledger.requests,
        refused=refused,
        server_errors=ledger.server_errors,
        note=(
            f"SIGKILL after {acked_before_kill} acknowledged activations, "
            f"{len(ledger.completed)} tasks completed, {ledger.interrupted} requests cut off, "
            f"{counted_without_ack} in-flight uses committed, {leases} leases of ended tasks all revoked, "
            f"{elapsed:.1f} s"
        ),
    )
    assert ledger.server_errors == 0


class GatedEngine:
    """A secret engine whose issuance waits for the test: the window between an activation's
    commit and its lease being recorded, held open deterministically."""

    name = "gated"
    reveals_value = False

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.issued: list[str] = []
        self.revoked: list[str] = []

    async def issue(self, request: LeaseRequest) -> IssuedCredential:
        self.entered.set()
        await self.release.wait()
        self.issued.append(request.lease_id)
        return IssuedCredential(
            credential={"type": "gated", "token": request.lease_id},
            handle={"lease": request.lease_id},
            expires_at=request.expires_at,
        )

    async def revoke(self, lease: Lease) -> None:
        self.revoked.append(lease.id)


async def test_lease_issued_while_its_task_ends_is_revoked(broker: Broker, admin: dict[str, str]) -> None:
    engine = GatedEngine()
    broker.engines.mount("prod/github/", engine)
    transport = httpx.ASGITransport(app=create_app(broker))
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        await seed(http, admin, {path: new_canary(path) for path in SECRETS})
        bot = (await register(http, admin, "race-bot")).on(http)
        task = (await bot.request("POST", "/v1/tasks", json=TASK)).json()
        grant = await bot.request("POST", f"/v1/tasks/{task['id']}/grants", json=DYNAMIC)
        assert grant.status_code == 201, grant.text
        activation = asyncio.create_task(bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate"))
        await asyncio.wait_for(engine.entered.wait(), timeout=10)  # the use is counted and audited
        done = await bot.request("POST", f"/v1/tasks/{task['id']}/complete")
        assert done.status_code == 200, done.text
        engine.release.set()
        answered = await activation
    assert answered.status_code == 403, answered.text  # the credential is not handed over
    assert "the task ended" in answered.json()["detail"]
    assert engine.issued, "the engine issued no credential"
    await broker.tasks.sweep()
    # Revoked by the ending (by lease id, before the handle was known) and again with the handle:
    # revocation is idempotent, what matters is that nothing issued stays live.
    assert set(engine.revoked) == set(engine.issued), "a credential of a completed task is still live"
