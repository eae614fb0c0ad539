"""Delegation over HTTP (issue 7): every hop a new trust decision, only ever narrower, revoked
down the tree.

A three-agent chain (planner → researcher → tool-runner) under the example policies, which forbid
restricted secrets beyond depth 0. Each test runs on SQLite, and on PostgreSQL when
``TETHER_TEST_PG_DSN`` is set (except the depth-limit test, which needs its own node).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.governed import BASE, SECRETS, deploy_policies, register_agent, seed
from tests.integration.test_governed_path import MintingEngine
from tests.security.canaries import new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.sdk import AsyncAgent

pytestmark = pytest.mark.asyncio

DENIED = "urn:tether:problem:denied"
GITHUB = "prod/github/token"
DOCS = "prod/docs/token"
STRIPE = "prod/stripe/key"
PAGERDUTY = "prod/pagerduty/key"

DEPLOY_TASK: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "ship release 1.2",
    "sensitivity": "internal",
    "secrets": [GITHUB, DOCS],
    "destinations": ["github"],
    "tools": ["git.clone", "git.push"],
    "ttl_seconds": 600,
}
INCIDENT_TASK: dict[str, Any] = {
    "purpose": "incident",
    "objective": "page the on-call for INC-7",
    "sensitivity": "restricted",
    "secrets": [PAGERDUTY],
    "destinations": ["pagerduty"],
    "ttl_seconds": 600,
}
REVEAL_GITHUB: dict[str, Any] = {"secret": GITHUB, "destination": "github", "mode": "reveal"}
DYNAMIC_PAGERDUTY: dict[str, Any] = {"secret": PAGERDUTY, "destination": "pagerduty", "mode": "dynamic"}
NARROW_GITHUB: dict[str, Any] = {"secrets": [GITHUB], "destinations": ["github"], "tools": ["git.clone"]}


@dataclass
class Bot:
    """An agent as the tests drive it: its SDK client and SPIFFE ID."""

    sdk: AsyncAgent
    id: str

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.sdk.request(method, path, json=body)

    async def open(self, body: dict[str, Any] = DEPLOY_TASK) -> dict[str, Any]:
        response = await self.call("POST", "/v1/tasks", body)
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    async def delegate(self, task_id: str, to: Bot | str, **body: Any) -> httpx.Response:
        agent = to.id if isinstance(to, Bot) else to
        return await self.call(
            "POST", f"/v1/tasks/{task_id}/delegate", {"agent": agent, "objective": "a part of it", **body}
        )

    async def sub_task(self, task_id: str, to: Bot, **body: Any) -> dict[str, Any]:
        response = await self.delegate(task_id, to, **body)
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    async def issue(self, task_id: str, body: dict[str, Any] = REVEAL_GITHUB) -> httpx.Response:
        return await self.call("POST", f"/v1/tasks/{task_id}/grants", body)

    async def grant(self, task_id: str, body: dict[str, Any] = REVEAL_GITHUB) -> dict[str, Any]:
        response = await self.issue(task_id, body)
        assert response.status_code == 201, response.text
        grant: dict[str, Any] = response.json()
        return grant

    async def activate(self, grant_id: str) -> httpx.Response:
        return await self.call("POST", f"/v1/grants/{grant_id}/activate")


async def _bot(http: httpx.AsyncClient, admin: dict[str, str], name: str, **kwargs: Any) -> Bot:
    sdk = await register_agent(http, admin, name, **kwargs)
    return Bot(sdk=sdk, id=(await sdk.whoami())["id"])


@dataclass
class Env:
    http: httpx.AsyncClient
    admin: dict[str, str]
    values: dict[str, str]
    planner: Bot
    researcher: Bot
    runner: Bot

    async def tree(self, task_id: str) -> dict[str, dict[str, Any]]:
        response = await self.http.get(f"/v1/tasks/{task_id}/tree", headers=self.admin)
        assert response.status_code == 200, response.text
        return {item["id"]: item for item in response.json()["items"]}

    async def events(self, task_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(
            "/v1/audit/events", params={"task": task_id, "limit": 1000}, headers=self.admin
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


@pytest.fixture
async def env(broker: Broker, client: httpx.AsyncClient, admin: dict[str, str]) -> Env:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    # Restricted pagerduty credentials are minted per lease (the static engine's credential is the
    # stored value itself, which policy decides as a reveal).
    broker.engines.mount("prod/pagerduty/", MintingEngine())
    return Env(
        http=client,
        admin=admin,
        values=values,
        planner=await _bot(client, admin, "planner"),
        researcher=await _bot(client, admin, "researcher"),
        runner=await _bot(client, admin, "tool-runner"),
    )


def _denied(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == DENIED
    assert body["decision"]["allowed"] is False
    return body


async def _approve(env: Env, approver: dict[str, str], approval_id: str) -> None:
    response = await env.http.post(
        f"/v1/approvals/{approval_id}/approve", json={"reason": "INC-7 is real"}, headers=approver
    )
    assert response.status_code == 200, response.text


# -- the chain -----------------------------------------------------------------------------------
async def test_restricted_secret_allowed_at_depth_zero_denied_at_depth_two(
    env: Env, make_operator: Any
) -> None:
    approver = await make_operator("carol", "approver")
    root = await env.planner.open(INCIDENT_TASK)
    assert root["status"] == "active"
    assert root["depth"] == 0

    # Depth 0: restricted needs a human approval for issuance and again for use, then works.
    asked = _denied(await env.planner.issue(root["id"], DYNAMIC_PAGERDUTY))
    assert asked["decision"]["missing"] == ["approval"]
    await _approve(env, approver, asked["approval_id"])
    grant = await env.planner.grant(root["id"], DYNAMIC_PAGERDUTY)
    asked = _denied(await env.planner.activate(grant["id"]))
    await _approve(env, approver, asked["approval_id"])
    used = await env.planner.activate(grant["id"])
    assert used.status_code == 200, used.text
    assert used.json()["credential"]["type"] == "minted"

    # planner → researcher → tool-runner, each hop its own decision; the scope stays declared.
    scope = {"secrets": [PAGERDUTY], "destinations": ["pagerduty"]}
    mid = await env.planner.sub_task(root["id"], env.researcher, **scope)
    assert (mid["depth"], mid["chain"], mid["parent_id"]) == (1, [root["id"]], root["id"])
    assert mid["agent"] == env.researcher.id
    assert mid["purpose"] == "incident"
    leaf = await env.researcher.sub_task(mid["id"], env.runner, **scope)
    assert (leaf["depth"], leaf["chain"], leaf["root_id"]) == (2, [root["id"], mid["id"]], root["id"])
    assert leaf["status"] == "active"
    assert leaf["sensitivity"] == "restricted"

    # Depth 2: denied by the forbid, whatever an approver would say (no approval is offered).
    refused = _denied(await env.runner.issue(leaf["id"], DYNAMIC_PAGERDUTY))
    assert "no-restricted-when-delegated" in refused["decision"]["policies"]
    assert refused["decision"]["missing"] == []
    assert refused.get("approval_id") is None
    # And at depth 1 too: the rule is "only from the root task".
    refused = _denied(await env.researcher.issue(mid["id"], DYNAMIC_PAGERDUTY))
    assert "no-restricted-when-delegated" in refused["decision"]["policies"]
    # The root task is untouched by its children's refusals.
    assert (await env.planner.activate(grant["id"])).status_code == 200

    tree = await env.tree(leaf["id"])
    assert [(t["depth"], t["agent"]) for t in tree.values()] == [
        (0, env.planner.id),
        (1, env.researcher.id),
        (2, env.runner.id),
    ]
    assert all(t["status"] == "active" for t in tree.values())


# -- narrowing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "wider", "complaint"),
    [
        ("secrets", [GITHUB, STRIPE], "secrets not in the parent task"),
        ("destinations", ["stripe"], "destinations not in the parent task"),
        ("tools", ["git.clone", "shell.exec"], "tools not in the parent task"),
        ("sensitivity", "confidential", "sensitivity confidential exceeds"),
        ("ttl_seconds", 3600, "ttl_seconds exceeds"),
    ],
)
async def test_sub_task_cannot_widen_its_parent(env: Env, field: str, wider: Any, complaint: str) -> None:
    root = await env.planner.open()
    body = {**NARROW_GITHUB, field: wider}
    refused = _denied(await env.planner.delegate(root["id"], env.researcher, **body))
    assert "only narrow" in refused["detail"]
    assert complaint in refused["detail"]
    assert list(await env.tree(root["id"])) == [root["id"]]  # nothing was opened


async def test_sub_task_narrows_and_inherits_purpose_and_lifetime(env: Env) -> None:
    root = await env.planner.open()
    child = await env.planner.sub_task(root["id"], env.researcher, **NARROW_GITHUB, sensitivity="public")
    assert child["purpose"] == root["purpose"]
    assert child["secrets"] == [GITHUB]
    assert child["tools"] == ["git.clone"]
    assert child["sensitivity"] == "public"
    assert datetime.fromisoformat(child["expires_at"]) <= datetime.fromisoformat(root["expires_at"])
    # Without a sensitivity the child takes the parent's; with a shorter TTL, the shorter one.
    short = await env.planner.sub_task(root["id"], env.runner, secrets=[DOCS], ttl_seconds=30)
    assert short["sensitivity"] == "internal"
    lifetime = datetime.fromisoformat(short["expires_at"]) - datetime.fromisoformat(short["created_at"])
    assert lifetime.total_seconds() == 30
    # A sub-task cannot widen itself afterwards either.
    patched = await env.runner.call("PATCH", f"/v1/tasks/{short['id']}", {"secrets": [DOCS, STRIPE]})
    assert "only narrow" in _denied(patched)["detail"]


async def test_depth_limit_refuses_the_hop_beyond_it(tmp_path: Path) -> None:
    broker = Broker.from_settings(Settings(data_dir=tmp_path, max_delegation_depth=2))
    admin = {"Authorization": f"Bearer {(await broker.init()).root_token}"}
    try:
        transport = httpx.ASGITransport(app=create_app(broker))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            await seed(http, admin, {path: new_canary(path) for path in SECRETS})
            bots = [await _bot(http, admin, f"hop-{i}") for i in range(4)]
            task = await bots[0].open()
            for depth in (1, 2):
                task = await bots[depth - 1].sub_task(task["id"], bots[depth], secrets=[GITHUB])
                assert task["depth"] == depth
            refused = _denied(await bots[2].delegate(task["id"], bots[3], secrets=[GITHUB]))
            assert "deeper than 2" in refused["detail"]
            response = await http.get(f"/v1/tasks/{task['id']}/tree", headers=admin)
            assert len(response.json()["items"]) == 3
    finally:
        await broker.close()


# -- who may be a delegate -------------------------------------------------------------------------
async def test_delegation_to_another_team_is_refused(env: Env) -> None:
    outsider = await _bot(env.http, env.admin, "outsider", team="payments")
    root = await env.planner.open()
    refused = _denied(await env.planner.delegate(root["id"], outsider, **NARROW_GITHUB))
    # `delegate-same-team` is a permit: across teams nothing permits, a default deny (no policy id).
    assert refused["decision"]["policies"] == []
    assert "policy denies this delegation" in refused["detail"]
    assert list(await env.tree(root["id"])) == [root["id"]]

    # Written as a forbid, the same rule names itself in the refusal.
    forbid = (
        '\n@id("delegate-within-team-only")\n'
        'forbid(principal, action == Action::"delegate", resource)\n'
        "unless { resource.team == principal.team };\n"
    )
    text = (Path(__file__).resolve().parents[2] / "examples" / "policies" / "tether.cedar").read_text()
    text = text.replace("when { resource.team == principal.team };", "when { true };") + forbid
    await deploy_policies(env.http, env.admin, text)
    refused = _denied(await env.planner.delegate(root["id"], outsider, **NARROW_GITHUB))
    assert refused["decision"]["policies"] == ["delegate-within-team-only"]
    assert (await env.planner.delegate(root["id"], env.researcher, **NARROW_GITHUB)).status_code == 201


async def test_delegate_must_be_another_active_agent(env: Env) -> None:
    root = await env.planner.open()
    unknown = await env.planner.delegate(root["id"], "nobody", **NARROW_GITHUB)
    assert unknown.status_code == 422, unknown.text
    foreign = await env.planner.delegate(root["id"], "spiffe://elsewhere.test/agent/researcher")
    assert foreign.status_code == 422, foreign.text
    disabled = await env.http.post("/v1/agents/researcher/disable", headers=env.admin)
    assert disabled.status_code == 200, disabled.text
    refused = await env.planner.delegate(root["id"], env.researcher, **NARROW_GITHUB)
    assert refused.status_code == 422, refused.text
    for me in (env.planner.id, "planner"):
        self_hop = await env.planner.delegate(root["id"], me, **NARROW_GITHUB)
        assert self_hop.status_code == 422, self_hop.text
        assert "itself" in self_hop.json()["detail"]
    assert list(await env.tree(root["id"])) == [root["id"]]


async def test_only_the_tasks_agent_delegates(env: Env) -> None:
    root = await env.planner.open()
    stolen = await env.researcher.delegate(root["id"], env.runner, **NARROW_GITHUB)
    assert stolen.status_code == 404, stolen.text
    child = await env.planner.sub_task(root["id"], env.researcher, **NARROW_GITHUB)
    # The delegator does not act inside the child, nor the delegate inside the parent.
    assert (await env.planner.issue(child["id"])).status_code == 404
    assert (await env.planner.call("GET", f"/v1/tasks/{child['id']}")).status_code == 404
    assert (await env.researcher.issue(root["id"])).status_code == 404
    joined = await env.researcher.call("GET", f"/v1/tasks/{child['id']}")
    assert joined.status_code == 200
    assert joined.json()["agent"] == env.researcher.id


async def test_delegators_key_is_not_handed_over(env: Env) -> None:
    root = await env.planner.open()
    child = await env.planner.sub_task(root["id"], env.researcher, **NARROW_GITHUB)
    grant = await env.researcher.grant(child["id"])
    # The delegate's grant is bound to the delegate (and its key): the delegator cannot use it.
    assert (await env.planner.activate(grant["id"])).status_code == 404
    used = await env.researcher.activate(grant["id"])
    assert used.status_code == 200, used.text
    assert used.json()["value"] == env.values[GITHUB]


# -- cascade -------------------------------------------------------------------------------------
async def _chain_with_grants(env: Env) -> tuple[list[dict[str, Any]], list[tuple[Bot, str]]]:
    root = await env.planner.open()
    mid = await env.planner.sub_task(root["id"], env.researcher, **NARROW_GITHUB)
    leaf = await env.researcher.sub_task(mid["id"], env.runner, secrets=[GITHUB], destinations=["github"])
    grants = [
        (bot, (await bot.grant(task["id"]))["id"])
        for bot, task in ((env.planner, root), (env.researcher, mid), (env.runner, leaf))
    ]
    for bot, grant_id in grants:
        assert (await bot.activate(grant_id)).status_code == 200
    return [root, mid, leaf], grants


async def test_revoking_the_middle_task_revokes_the_leaf_not_the_root(env: Env) -> None:
    (root, mid, leaf), grants = await _chain_with_grants(env)
    revoked = await env.http.post(
        f"/v1/tasks/{mid['id']}/revoke", json={"reason": "researcher misbehaved"}, headers=env.admin
    )
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["grants_revoked"] == 2

    (_, root_grant), (researcher, mid_grant), (runner, leaf_grant) = grants
    for bot, grant_id in ((researcher, mid_grant), (runner, leaf_grant)):
        refused = _denied(await bot.activate(grant_id))
        assert "revoked" in refused["detail"]
    assert (await env.planner.activate(root_grant)).status_code == 200
    # The ended sub-tasks refuse new work too; the root can still delegate.
    assert "revoked" in _denied(await env.runner.issue(leaf["id"]))["detail"]
    assert (
        "revoked" in _denied(await env.researcher.delegate(mid["id"], env.runner, secrets=[GITHUB]))["detail"]
    )

    tree = await env.tree(root["id"])
    assert {t["id"]: t["status"] for t in tree.values()} == {
        root["id"]: "active",
        mid["id"]: "revoked",
        leaf["id"]: "revoked",
    }
    for task_id in (mid["id"], leaf["id"]):
        listed = await env.http.get(f"/v1/tasks/{task_id}/grants", headers=env.admin)
        assert [item["status"] for item in listed.json()["items"]] == ["revoked"]
    assert (await env.planner.sub_task(root["id"], env.researcher, secrets=[GITHUB]))["depth"] == 1


async def test_revoking_the_root_revokes_the_whole_tree(env: Env) -> None:
    (root, _, _), grants = await _chain_with_grants(env)
    done = await env.planner.call("POST", f"/v1/tasks/{root['id']}/revoke")
    assert done.status_code == 200, done.text
    assert done.json()["grants_revoked"] == 3
    for bot, grant_id in grants:
        assert "revoked" in _denied(await bot.activate(grant_id))["detail"]


async def test_child_completes_without_affecting_its_parent(env: Env) -> None:
    (root, mid, leaf), grants = await _chain_with_grants(env)
    done = await env.runner.call("POST", f"/v1/tasks/{leaf['id']}/complete")
    assert done.status_code == 200, done.text
    (planner, root_grant), (researcher, mid_grant), (runner, leaf_grant) = grants
    assert "completed" in _denied(await runner.activate(leaf_grant))["detail"]
    assert (await researcher.activate(mid_grant)).status_code == 200
    assert (await planner.activate(root_grant)).status_code == 200
    tree = await env.tree(root["id"])
    assert [t["status"] for t in tree.values()] == ["active", "active", "completed"]
    # The child cannot end twice, and its parent can still hand out work.
    assert (await env.runner.call("POST", f"/v1/tasks/{leaf['id']}/complete")).status_code == 409
    again = await env.researcher.sub_task(mid["id"], env.runner, secrets=[GITHUB])
    assert again["depth"] == 2


# -- audit ---------------------------------------------------------------------------------------
async def test_events_of_a_sub_task_carry_the_chain(env: Env) -> None:
    (root, mid, leaf), grants = await _chain_with_grants(env)
    runner, leaf_grant = grants[2]
    refused = await env.runner.issue(
        leaf["id"], {"secret": STRIPE, "mode": "reveal"}
    )  # undeclared: a recorded denial
    assert refused.status_code == 403
    assert (await env.runner.call("POST", f"/v1/tasks/{leaf['id']}/complete")).status_code == 200
    assert (await runner.activate(leaf_grant)).status_code == 403

    events = await env.events(leaf["id"])
    kinds = {event["kind"] for event in events}
    assert {"task.open", "grant.issue", "grant.activate", "decision", "task.end"} <= kinds
    for event in events:
        assert event["chain"] == [root["id"], mid["id"]], event
    opened = next(event for event in events if event["kind"] == "task.open")
    assert opened["data"]["delegated_by"] == env.researcher.id

    # The hop itself is recorded on the parent task, with the parent's chain and the delegate.
    hops = [event for event in await env.events(mid["id"]) if event["kind"] == "delegation"]
    assert len(hops) == 1
    assert hops[0]["chain"] == [root["id"]]
    assert hops[0]["data"]["delegate"] == env.runner.id
    assert hops[0]["data"]["depth"] == 2
    assert all("chain" not in event for event in await env.events(root["id"]))  # empty: omitted


async def test_revocation_event_of_an_ending_sub_task_carries_the_chain(env: Env) -> None:
    (root, mid, leaf), _ = await _chain_with_grants(env)
    assert (await env.runner.call("POST", f"/v1/tasks/{leaf['id']}/complete")).status_code == 200
    (revoked,) = [event for event in await env.events(leaf["id"]) if event["kind"] == "grant.revoke"]
    assert revoked["data"]["grants_revoked"] == 1
    assert revoked.get("chain") == [root["id"], mid["id"]], revoked


async def test_narrowing_a_parent_narrows_its_sub_tasks(env: Env) -> None:
    root = await env.planner.open()
    child = await env.planner.sub_task(root["id"], env.researcher, **NARROW_GITHUB)
    grant = await env.researcher.grant(child["id"])
    patched = await env.planner.call("PATCH", f"/v1/tasks/{root['id']}", {"secrets": [DOCS]})
    assert patched.status_code == 200, patched.text
    # The child now declares a secret its parent no longer does: it must not be usable.
    _denied(await env.researcher.activate(grant["id"]))


async def test_changing_a_parents_purpose_does_not_leave_sub_tasks_on_the_old_one(env: Env) -> None:
    root = await env.planner.open()
    child = await env.planner.sub_task(root["id"], env.researcher, **NARROW_GITHUB)
    grant = await env.researcher.grant(child["id"])
    patched = await env.planner.call("PATCH", f"/v1/tasks/{root['id']}", {"purpose": "incident"})
    assert patched.status_code == 200, patched.text
    tree = await env.tree(root["id"])
    stale = tree[child["id"]]
    # The sub-task must not keep serving a purpose its parent no longer has.
    assert stale["status"] != "active" or stale["purpose"] == "incident", stale
    assert (await env.researcher.activate(grant["id"])).status_code == 403
