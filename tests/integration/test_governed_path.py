"""The governed path over HTTP (issue 5): open a task, issue grants, decide again at every use,
require and void approvals, end everything at once, and fail closed.

Each test runs on SQLite, and on PostgreSQL when ``TETHER_TEST_PG_DSN`` is set. Secret values are
canaries: they must reach the agent only where it asked for them, and never the audit log.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.governed import BASE, EXAMPLE_POLICIES, SECRETS, deploy_policies, seed
from tests.security.canaries import find_leaks, new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.clock import FrozenClock
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent
from tether.store.sqlite._driver import SQLiteDriver

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


# -- fixtures ------------------------------------------------------------------------------------
@dataclass
class Bot:
    """An agent as the tests drive it: its SDK client, id, name and private key."""

    sdk: AsyncAgent
    id: str
    name: str

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.sdk.request(method, path, json=body)

    async def open(self, **overrides: Any) -> dict[str, Any]:
        response = await self.call("POST", "/v1/tasks", {**DEPLOY_TASK, **overrides})
        assert response.status_code == 201, response.text
        task: dict[str, Any] = response.json()
        return task

    async def issue(self, task_id: str, body: dict[str, Any] = REVEAL_GITHUB, **extra: Any) -> httpx.Response:
        return await self.call("POST", f"/v1/tasks/{task_id}/grants", {**body, **extra})

    async def grant(self, task_id: str, body: dict[str, Any] = REVEAL_GITHUB, **extra: Any) -> dict[str, Any]:
        response = await self.issue(task_id, body, **extra)
        assert response.status_code == 201, response.text
        grant: dict[str, Any] = response.json()
        return grant

    async def activate(self, grant_id: str) -> httpx.Response:
        return await self.call("POST", f"/v1/grants/{grant_id}/activate")


@dataclass
class Env:
    broker: Broker
    http: httpx.AsyncClient
    admin: dict[str, str]
    values: dict[str, str]
    bot: Bot
    add_agent: Callable[..., Awaitable[Bot]]

    async def audit_events(self, **params: Any) -> list[dict[str, Any]]:
        """Every audit event matching ``params``, all pages."""
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            query = {k: v for k, v in {**params, "after": after, "limit": 1000}.items() if v is not None}
            response = await self.http.get("/v1/audit/events", params=query, headers=self.admin)
            assert response.status_code == 200, response.text
            page = response.json()
            events.extend(page["events"])
            if page["next_after"] is None:
                return events
            after = page["next_after"]

    async def operator_grants(self, task_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/v1/tasks/{task_id}/grants", headers=self.admin)
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def operator_task(self, task_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/tasks/{task_id}", headers=self.admin)
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()
        return task


def _agent_factory(
    http: httpx.AsyncClient, admin: dict[str, str], clock: FrozenClock | None
) -> Callable[..., Awaitable[Bot]]:
    async def add(
        name: str,
        *,
        labels: tuple[str, ...] = ("deploy", "incident"),
        environment: str = "prod",
        team: str = "platform",
    ) -> Bot:
        private = generate_private_jwk()
        public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
        attributes = {"team": team, "environment": environment, "owner": "alice", "labels": list(labels)}
        response = await http.post(
            "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}, headers=admin
        )
        assert response.status_code == 201, response.text
        agent_id = response.json()["id"]
        kwargs: dict[str, Any] = {} if clock is None else {"clock": lambda: clock.now().timestamp()}
        return Bot(AsyncAgent(BASE, agent_id, private, http=http, **kwargs), agent_id, name)

    return add


class MintingEngine:
    """A dynamic engine that mints a fresh credential per lease (nothing stored is handed out)."""

    name = "minting"
    reveals_value = False

    def __init__(self) -> None:
        self.issued: list[str] = []

    async def issue(self, request: Any) -> Any:
        from tether.engines import IssuedCredential

        self.issued.append(request.lease_id)
        return IssuedCredential(
            credential={"type": "minted", "password": f"pw-{request.lease_id}"},
            handle={"role": request.lease_id},
            expires_at=request.expires_at,
        )

    async def revoke(self, lease: Any) -> None:
        return None


async def _env(
    broker: Broker, http: httpx.AsyncClient, admin: dict[str, str], clock: FrozenClock | None
) -> Env:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(http, admin, values)
    # Restricted pagerduty credentials are minted per lease (the static engine would hand out the
    # stored value, which policy decides as a reveal).
    broker.engines.mount("prod/pagerduty/", MintingEngine())
    add = _agent_factory(http, admin, clock)
    bot = await add("deploy-bot")
    return Env(broker, http, admin, values, bot, add)


@pytest.fixture
async def env(broker: Broker, client: httpx.AsyncClient, admin: dict[str, str]) -> Env:
    return await _env(broker, client, admin, None)


@dataclass
class FrozenEnv(Env):
    clock: FrozenClock


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def frozen_env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[FrozenEnv]:
    """A node whose clock only moves when the test says so (and agents signing with that clock)."""
    schema = None
    if request.param == "postgresql":
        dsn = os.environ.get("TETHER_TEST_PG_DSN")
        if not dsn:
            pytest.skip("TETHER_TEST_PG_DSN is not set; PostgreSQL tests skipped")
        schema = "t_api_" + secrets.token_hex(6)
        settings = Settings(data_dir=tmp_path, database_url=dsn, pg_schema=schema)
    else:
        settings = Settings(data_dir=tmp_path)
    clock = FrozenClock(datetime.now(UTC))
    node = Broker.from_settings(settings, clock=clock)
    result = await node.init()
    admin = {"Authorization": f"Bearer {result.root_token}"}
    transport = httpx.ASGITransport(app=create_app(node))
    try:
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            base = await _env(node, http, admin, clock)
            yield FrozenEnv(**{**base.__dict__, "clock": clock})
    finally:
        if schema is not None:
            async with node.storage._engine.begin() as conn:  # type: ignore[attr-defined]
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await node.close()


def _denied(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == DENIED
    assert body["decision"]["allowed"] is False
    return body


# -- allow, deny, explain ------------------------------------------------------------------------
async def test_allowed_task_grant_and_reveal_returns_the_value_once_per_use(env: Env) -> None:
    task = await env.bot.open()
    assert task["status"] == "active"
    assert task["agent"] == env.bot.id
    assert task["depth"] == 0
    assert task["parent_id"] is None
    grant = await env.bot.grant(task["id"], max_uses=3)
    assert grant["task_id"] == task["id"]
    assert grant["mode"] == "reveal"
    assert grant["uses_left"] == 3
    assert grant["expires_at"] <= task["expires_at"]
    assert env.values[GITHUB] not in json.dumps(grant)

    used = await env.bot.activate(grant["id"])
    assert used.status_code == 200, used.text
    body = used.json()
    assert body["value"] == env.values[GITHUB]
    assert body["version"] == 1
    assert body["uses_left"] == 2


async def test_denial_explains_the_determining_policy(env: Env) -> None:
    task = await env.bot.open(secrets=[STRIPE], destinations=["stripe"], sensitivity="confidential")
    refused = await env.bot.issue(task["id"], {"secret": STRIPE, "destination": "stripe", "mode": "reveal"})
    body = _denied(refused)
    assert "no-reveal-confidential" in body["decision"]["policies"]
    assert body["decision"]["missing"] == []
    assert "approval_id" not in body
    assert env.values[STRIPE] not in refused.text
    # The same secret injected is within the intent: allowed.
    allowed = await env.bot.issue(task["id"], {"secret": STRIPE, "destination": "stripe", "mode": "inject"})
    assert allowed.status_code == 201, allowed.text


async def test_denial_names_a_forbid_on_the_agent(env: Env) -> None:
    dev = await env.add_agent("dev-bot", environment="dev")
    task = await dev.open()
    body = _denied(await dev.issue(task["id"]))
    assert body["decision"]["policies"] == ["no-dev-agents-on-prod"]


async def test_open_task_for_an_unlabelled_purpose_is_denied(env: Env) -> None:
    reporter = await env.add_agent("report-bot", labels=("report",))
    refused = await reporter.call("POST", "/v1/tasks", DEPLOY_TASK)
    body = _denied(refused)
    assert body["decision"]["policies"] == []  # default deny: nothing permits it
    listed = await env.http.get("/v1/tasks", params={"agent": reporter.id}, headers=env.admin)
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"] == []


async def test_secret_not_declared_by_the_task_is_refused(env: Env) -> None:
    task = await env.bot.open(secrets=[GITHUB])
    body = _denied(
        await env.bot.issue(task["id"], {"secret": DOCS, "destination": "github", "mode": "reveal"})
    )
    assert "not declared" in body["detail"]


BAD_TASKS: list[tuple[dict[str, Any], str]] = [
    ({"purpose": "world-domination"}, "purpose"),
    ({"secrets": ["prod/nope/missing"]}, "secrets"),
    ({"destinations": ["nowhere"]}, "destinations"),
    ({"sensitivity": "secret"}, "sensitivity"),
    ({"colour": "red"}, "colour"),
    ({"ttl_seconds": 0}, "ttl_seconds"),
    ({"objective": ""}, "objective"),
]


async def test_bad_task_requests_are_422_and_open_nothing(env: Env) -> None:
    for change, field in BAD_TASKS:
        response = await env.bot.call("POST", "/v1/tasks", {**DEPLOY_TASK, **change})
        assert response.status_code == 422, (change, response.text)
        assert response.json()["type"] == "urn:tether:problem:invalid-input"
        assert field in response.text, (change, response.text)
    listed = await env.http.get("/v1/tasks", headers=env.admin)
    assert listed.json()["items"] == []


async def test_unknown_fields_in_grant_and_patch_bodies_are_422(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.issue(task["id"], REVEAL_GITHUB, value="give-it-to-me")
    assert grant.status_code == 422, grant.text
    patch = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"ttl_seconds": 5})
    assert patch.status_code == 422, patch.text
    patch = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"agent": "spiffe://x/agent/y"})
    assert patch.status_code == 422, patch.text
    decision = await env.http.post(
        "/v1/revocations", json={"task": task["id"], "why": "x"}, headers=env.admin
    )
    assert decision.status_code == 422, decision.text


async def test_patch_to_unknown_purpose_or_missing_secret_is_422(env: Env) -> None:
    task = await env.bot.open()
    for change in ({"purpose": "fun"}, {"secrets": ["prod/nope/missing"]}):
        response = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", change)
        assert response.status_code == 422, response.text
    assert (await env.operator_task(task["id"]))["context_version"] == 1


# -- approvals -----------------------------------------------------------------------------------
async def _approve(env: Env, approver: dict[str, str], approval_id: str) -> dict[str, Any]:
    response = await env.http.post(
        f"/v1/approvals/{approval_id}/approve", json={"reason": "INC-7 is real"}, headers=approver
    )
    assert response.status_code == 200, response.text
    approval: dict[str, Any] = response.json()
    return approval


async def test_dynamic_on_an_engine_that_hands_out_the_stored_value_is_decided_as_reveal(env: Env) -> None:
    # The static engine's credential is the stored value: asking for "dynamic" must not side-step a
    # policy that never reveals confidential values.
    task = await env.bot.open(secrets=[STRIPE], destinations=["stripe"], sensitivity="confidential")
    refused = _denied(
        await env.bot.issue(task["id"], {"secret": STRIPE, "destination": "stripe", "mode": "dynamic"})
    )
    assert "no-reveal-confidential" in refused["decision"]["policies"]


async def test_restricted_secret_needs_approval_then_is_allowed(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    task = await env.bot.open(**INCIDENT_TASK)
    refused = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))
    assert refused["decision"]["missing"] == ["approval"]
    assert "restricted-incident-with-approval" in refused["decision"]["policies"]
    first = refused["approval_id"]

    # Asking again before anyone decided reuses the same pending approval.
    again = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))
    assert again["approval_id"] == first

    pending = await env.http.get("/v1/approvals", headers=approver)
    assert pending.status_code == 200, pending.text
    listed = {item["id"]: item for item in pending.json()["items"]}
    assert listed[first]["task_id"] == task["id"]
    assert listed[first]["action"] == "issue"
    assert listed[first]["resource"] == f"Secret::{PAGERDUTY}"
    assert listed[first]["context_hash"] == task["context_hash"]

    decided = await _approve(env, approver, first)
    assert decided["status"] == "approved"
    assert decided["decided_by"] == "carol"

    grant = await env.bot.grant(task["id"], DYNAMIC_PAGERDUTY)
    # Issuance and activation are separate decisions: using it needs its own approval.
    use = _denied(await env.bot.activate(grant["id"]))
    assert use["decision"]["missing"] == ["approval"]
    assert use["approval_id"] != first
    await _approve(env, approver, use["approval_id"])
    used = await env.bot.activate(grant["id"])
    assert used.status_code == 200, used.text
    assert used.json()["credential"]["type"] == "minted"
    assert env.values[PAGERDUTY] not in used.text  # a fresh credential, never the stored value


async def test_only_approvers_decide_and_twice_is_a_conflict(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    writer = await make_operator("wendy", "secret-writer")
    task = await env.bot.open(**INCIDENT_TASK)
    approval_id = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))["approval_id"]
    forbidden = await env.http.post(
        f"/v1/approvals/{approval_id}/approve", json={"reason": "me too"}, headers=writer
    )
    assert forbidden.status_code == 403, forbidden.text
    no_reason = await env.http.post(f"/v1/approvals/{approval_id}/approve", json={}, headers=approver)
    assert no_reason.status_code == 422, no_reason.text
    denied = await env.http.post(
        f"/v1/approvals/{approval_id}/deny", json={"reason": "not an incident"}, headers=approver
    )
    assert denied.status_code == 200, denied.text
    assert denied.json()["status"] == "denied"
    twice = await env.http.post(
        f"/v1/approvals/{approval_id}/approve", json={"reason": "changed my mind"}, headers=approver
    )
    assert twice.status_code == 409, twice.text
    # A denial stands: asking again in the same context gets the same answer, no new request
    # (approvers are not spammed); changing the task's context is what opens a new one.
    again = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))
    assert again["approval_id"] == approval_id
    assert "denied" in again["detail"]
    assert "not an incident" in again["detail"]
    pending = await env.http.get("/v1/approvals", headers=approver)
    assert pending.json()["items"] == []


async def test_patch_voids_an_approved_approval(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    task = await env.bot.open(**INCIDENT_TASK)
    first = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))["approval_id"]
    await _approve(env, approver, first)

    patched = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"objective": "page them twice"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["context_version"] == 2
    assert patched.json()["context_hash"] != task["context_hash"]

    shown = await env.http.get(f"/v1/approvals/{first}", headers=approver)
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "voided"
    refused = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))
    assert refused["decision"]["missing"] == ["approval"]
    assert refused["approval_id"] != first
    await _approve(env, approver, refused["approval_id"])
    assert (await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY)).status_code == 201


async def test_patch_revokes_a_grant_that_needed_the_voided_approval(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    task = await env.bot.open(**INCIDENT_TASK)
    await _approve(env, approver, _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))["approval_id"])
    grant = await env.bot.grant(task["id"], DYNAMIC_PAGERDUTY)
    patched = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"objective": "something else"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["grants_revoked"] == 1
    refused = _denied(await env.bot.activate(grant["id"]))
    assert env.values[PAGERDUTY] not in refused.__repr__()


OPEN_DEPLOY_WITH_APPROVAL = """
@id("open-deploy-with-approval")
permit(principal, action == Action::"open_task", resource)
when { context.task.purpose == "deploy" && context.approval };
"""


async def _pending_task(env: Env) -> tuple[Bot, dict[str, Any]]:
    """A task waiting for an approval to open: its agent is not labelled for deploys."""
    text_ = EXAMPLE_POLICIES.read_text(encoding="utf-8") + OPEN_DEPLOY_WITH_APPROVAL
    await deploy_policies(env.http, env.admin, text_)
    bot = await env.add_agent("ops-bot", labels=("incident",))
    response = await bot.call("POST", "/v1/tasks", {**DEPLOY_TASK, "secrets": [DOCS]})
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    assert task["status"] == "pending_approval"
    assert task["approval_id"]
    return bot, task


async def test_task_pending_approval_gets_no_grant_until_approved(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    bot, task = await _pending_task(env)
    refused = _denied(
        await bot.issue(task["id"], {"secret": DOCS, "destination": "github", "mode": "reveal"})
    )
    assert "pending_approval" in refused["detail"]
    shown = await env.http.get(f"/v1/approvals/{task['approval_id']}", headers=approver)
    assert shown.status_code == 200, shown.text
    assert shown.json()["action"] == "open_task"
    assert shown.json()["resource"] == f"Agent::{bot.id}"

    await _approve(env, approver, task["approval_id"])
    now = await bot.call("GET", f"/v1/tasks/{task['id']}")
    assert now.json()["status"] == "active"
    assert now.json()["approval_id"] is None
    assert (
        await bot.issue(task["id"], {"secret": DOCS, "destination": "github", "mode": "reveal"})
    ).status_code == 201


async def test_denied_open_task_approval_revokes_the_pending_task(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    bot, task = await _pending_task(env)
    denied = await env.http.post(
        f"/v1/approvals/{task['approval_id']}/deny", json={"reason": "no incident"}, headers=approver
    )
    assert denied.status_code == 200, denied.text
    now = (await bot.call("GET", f"/v1/tasks/{task['id']}")).json()
    assert (now["status"], now["end_reason"]) == ("revoked", "approval_denied")
    _denied(await bot.issue(task["id"], {"secret": DOCS, "destination": "github", "mode": "reveal"}))


async def test_patching_a_pending_task_leaves_it_decidable(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    bot, task = await _pending_task(env)
    patched = await bot.call("PATCH", f"/v1/tasks/{task['id']}", {"purpose": "incident"})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    # Policy allows the new context outright: the task is active, and the old approval is void.
    assert body["status"] == "active"
    assert body["approval_id"] is None
    shown = await env.http.get(f"/v1/approvals/{task['approval_id']}", headers=approver)
    assert shown.json()["status"] == "voided"


async def test_approval_expires(frozen_env: FrozenEnv) -> None:
    env = frozen_env
    approver_token = await env.http.post(
        "/v1/operators", json={"name": "carol", "role": "approver"}, headers=env.admin
    )
    assert approver_token.status_code == 201, approver_token.text
    approver = {"Authorization": f"Bearer {approver_token.json()['token']}"}
    task = await env.bot.open(**{**INCIDENT_TASK, "ttl_seconds": 7200})
    first = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))["approval_id"]
    approved = await _approve(env, approver, first)
    assert approved["expires_at"] > approved["decided_at"]
    env.clock.advance(env.broker.settings.approval_ttl_seconds + 1)
    refused = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))
    assert refused["approval_id"] != first
    shown = await env.http.get(f"/v1/approvals/{first}", headers=approver)
    assert shown.json()["status"] == "expired"


async def test_an_unanswered_approval_expires_and_cannot_be_approved(frozen_env: FrozenEnv) -> None:
    env = frozen_env
    task = await env.bot.open(**{**INCIDENT_TASK, "ttl_seconds": 7200})
    first = _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))["approval_id"]
    env.clock.advance(env.broker.settings.approval_ttl_seconds)
    late = await env.http.post(f"/v1/approvals/{first}/approve", json={"reason": "late"}, headers=env.admin)
    assert late.status_code == 409, late.text
    _denied(await env.bot.issue(task["id"], DYNAMIC_PAGERDUTY))


# -- context changes -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [{"secrets": [DOCS]}, {"purpose": "incident"}, {"destinations": []}],
    ids=["secret-removed", "purpose-changed", "destination-removed"],
)
async def test_context_change_revokes_a_live_grant(env: Env, change: dict[str, Any]) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    keep = await env.bot.grant(task["id"], {"secret": DOCS, "destination": "github", "mode": "reveal"})
    assert (await env.bot.activate(grant["id"])).status_code == 200

    patched = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", change)
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["status"] == "active"
    revoked_expected = 2 if change != {"secrets": [DOCS]} else 1
    assert body["grants_revoked"] == revoked_expected

    refused = _denied(await env.bot.activate(grant["id"]))
    assert "revoked" in refused["detail"]
    assert env.values[GITHUB] not in json.dumps(refused)
    statuses = {g["id"]: (g["status"], g["revoke_reason"]) for g in await env.operator_grants(task["id"])}
    assert statuses[grant["id"]] == ("revoked", "context_changed")
    if revoked_expected == 1:
        assert statuses[keep["id"]] == ("active", None)
        assert (await env.bot.activate(keep["id"])).status_code == 200


async def test_patch_that_keeps_the_grant_allowed_revokes_nothing(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    patched = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"objective": "ship release 1.3"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["grants_revoked"] == 0
    assert (await env.bot.activate(grant["id"])).status_code == 200


# -- ended tasks ---------------------------------------------------------------------------------
async def _end_by(env: Env, how: str, task_id: str) -> httpx.Response:
    """End (or cut off) the task's grant in one of the ways an agent or operator can."""
    bot, http, admin = env.bot, env.http, env.admin
    if how in {"complete", "fail", "revoke"}:
        return await bot.call("POST", f"/v1/tasks/{task_id}/{how}")
    if how == "operator-revoke":
        return await http.post(f"/v1/tasks/{task_id}/revoke", json={"reason": "suspicious"}, headers=admin)
    if how == "revocation-task":
        return await http.post("/v1/revocations", json={"task": task_id, "reason": "x"}, headers=admin)
    if how == "revocation-agent":
        return await http.post("/v1/revocations", json={"agent": bot.name, "reason": "x"}, headers=admin)
    if how == "revocation-secret":
        return await http.post("/v1/revocations", json={"secret": GITHUB, "reason": "x"}, headers=admin)
    if how == "agent-disabled":
        return await http.post(f"/v1/agents/{bot.name}/disable", headers=admin)
    if how == "secret-deleted":
        return await http.delete(f"/v1/secrets/{GITHUB}", headers=admin)
    raise AssertionError(how)


ENDINGS = [
    "complete",
    "fail",
    "revoke",
    "operator-revoke",
    "revocation-task",
    "revocation-agent",
    "revocation-secret",
    "agent-disabled",
    "secret-deleted",
]


@pytest.mark.parametrize("how", ENDINGS)
async def test_ended_or_revoked_task_grant_cannot_activate(env: Env, how: str) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    assert (await env.bot.activate(grant["id"])).status_code == 200

    ended = await _end_by(env, how, task["id"])
    assert ended.status_code in (200, 204), ended.text

    refused = await env.bot.activate(grant["id"])
    assert env.values[GITHUB] not in refused.text
    if how == "agent-disabled":
        assert refused.status_code == 401, refused.text  # its tokens stop working at once
    else:
        _denied(refused)
    (after,) = await env.operator_grants(task["id"])
    assert after["status"] == "revoked"
    expected_status = {
        "complete": "completed",
        "fail": "failed",
        "revocation-secret": "active",
        "secret-deleted": "active",
    }.get(how, "revoked")
    assert (await env.operator_task(task["id"]))["status"] == expected_status


async def test_ending_a_task_revokes_every_grant_of_it(env: Env) -> None:
    task = await env.bot.open()
    grants = [await env.bot.grant(task["id"]) for _ in range(3)]
    grants.append(
        await env.bot.grant(task["id"], {"secret": DOCS, "destination": "github", "mode": "reveal"})
    )
    other = await env.bot.open()
    bystander = await env.bot.grant(other["id"])

    revoked = await env.http.post(f"/v1/tasks/{task['id']}/revoke", json={"reason": "x"}, headers=env.admin)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json() == {"tasks_ended": [task["id"]], "grants_revoked": 4}
    for grant in grants:
        _denied(await env.bot.activate(grant["id"]))
    assert {g["status"] for g in await env.operator_grants(task["id"])} == {"revoked"}
    # Another task of the same agent is untouched.
    assert (await env.bot.activate(bystander["id"])).status_code == 200
    # An ended task issues nothing new and cannot end twice.
    _denied(await env.bot.issue(task["id"]))
    assert (await env.bot.call("POST", f"/v1/tasks/{task['id']}/complete")).status_code == 409


async def test_ended_task_cannot_be_patched(env: Env) -> None:
    task = await env.bot.open()
    assert (await env.bot.call("POST", f"/v1/tasks/{task['id']}/complete")).status_code == 200
    _denied(await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"objective": "resurrect"}))


# -- expiry --------------------------------------------------------------------------------------
async def test_expired_task_grant_cannot_activate_before_or_after_the_sweep(frozen_env: FrozenEnv) -> None:
    env = frozen_env
    task = await env.bot.open(ttl_seconds=60)
    grant = await env.bot.grant(task["id"])
    assert (await env.bot.activate(grant["id"])).status_code == 200

    env.clock.advance(61)
    refused = _denied(await env.bot.activate(grant["id"]))  # no sweep has run
    assert "expired" in refused["detail"]
    shown = await env.operator_task(task["id"])
    assert shown["status"] == "expired"
    _denied(await env.bot.issue(task["id"]))

    swept = await env.broker.tasks.sweep()
    assert task["id"] in swept.task_ids
    assert swept.grants_revoked == 1
    _denied(await env.bot.activate(grant["id"]))
    (after,) = await env.operator_grants(task["id"])
    assert after["status"] == "revoked"
    assert (await env.operator_task(task["id"]))["end_reason"] == "expired"


async def test_task_at_its_expiry_instant_is_expired(frozen_env: FrozenEnv) -> None:
    env = frozen_env
    task = await env.bot.open(ttl_seconds=30)
    grant = await env.bot.grant(task["id"])
    env.clock.advance(29)
    assert (await env.bot.activate(grant["id"])).status_code == 200
    env.clock.advance(1)
    _denied(await env.bot.activate(grant["id"]))


async def test_grant_expires_on_its_own_ttl_inside_a_live_task(frozen_env: FrozenEnv) -> None:
    env = frozen_env
    task = await env.bot.open(ttl_seconds=600)
    grant = await env.bot.grant(task["id"], ttl_seconds=10)
    env.clock.advance(11)
    refused = _denied(await env.bot.activate(grant["id"]))
    assert "grant expired" in refused["detail"]
    assert (await env.operator_task(task["id"]))["status"] == "active"


async def test_grant_ttl_is_capped_by_the_task(frozen_env: FrozenEnv) -> None:
    env = frozen_env
    task = await env.bot.open(ttl_seconds=60)
    grant = await env.bot.grant(task["id"], ttl_seconds=3600)
    assert grant["expires_at"] <= task["expires_at"]


# -- use budgets and concurrency -----------------------------------------------------------------
async def test_max_uses_one_under_concurrency_allows_exactly_one(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"], max_uses=1)
    await env.bot.sdk.token()  # one token for all, so the race is on the grant alone
    responses = await asyncio.gather(*(env.bot.activate(grant["id"]) for _ in range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [403] * 19, [r.text for r in responses if r.status_code not in (200, 403)]
    winners = [r for r in responses if r.status_code == 200]
    assert winners[0].json()["uses_left"] == 0
    for response in responses:
        if response.status_code == 403:
            assert env.values[GITHUB] not in response.text
    (after,) = await env.operator_grants(task["id"])
    assert (after["uses"], after["uses_left"], after["status"]) == (1, 0, "used_up")
    activations = await env.audit_events(kind="grant.activate", task=task["id"])
    assert len(activations) == 1


async def test_use_budget_counts_down_then_refuses(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"], max_uses=2)
    assert [(await env.bot.activate(grant["id"])).json()["uses_left"] for _ in range(2)] == [1, 0]
    refused = _denied(await env.bot.activate(grant["id"]))
    assert "no uses left" in refused["detail"]


# -- isolation and key binding -------------------------------------------------------------------
async def test_another_agent_cannot_see_or_use_a_task_or_grant(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    mallory = await env.add_agent("mallory")
    checks = [
        await mallory.call("GET", f"/v1/tasks/{task['id']}"),
        await mallory.call("GET", f"/v1/tasks/{task['id']}/grants"),
        await mallory.call("PATCH", f"/v1/tasks/{task['id']}", {"objective": "mine now"}),
        await mallory.issue(task["id"]),
        await mallory.activate(grant["id"]),
        await mallory.call("POST", f"/v1/tasks/{task['id']}/complete"),
        await mallory.call("POST", f"/v1/tasks/{task['id']}/revoke"),
    ]
    for response in checks:
        assert response.status_code == 404, response.text
        assert env.values[GITHUB] not in response.text
    # Nothing changed for the owner.
    assert (await env.bot.activate(grant["id"])).status_code == 200
    assert (await env.operator_task(task["id"]))["context_version"] == 1


async def test_unknown_ids_are_404_and_malformed_ids_422(env: Env) -> None:
    missing_task = "tsk_" + "A" * 22
    missing_grant = "grt_" + "A" * 22
    assert (await env.bot.call("GET", f"/v1/tasks/{missing_task}")).status_code == 404
    assert (await env.bot.activate(missing_grant)).status_code == 404
    assert (await env.bot.activate("not-a-grant")).status_code == 422


async def test_grant_is_bound_to_the_key_it_was_issued_to(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    second = generate_private_jwk()
    public = {k: v for k, v in second.items() if k in {"kty", "crv", "x"}}
    added = await env.http.post(
        f"/v1/agents/{env.bot.name}/keys", json={"public_key": public}, headers=env.admin
    )
    assert added.status_code == 201, added.text
    same_agent = AsyncAgent(BASE, env.bot.id, second, http=env.http)
    whoami = await same_agent.whoami()
    assert whoami["id"] == env.bot.id

    # The agent itself may read its task with either key, but the grant answers only to key 1.
    assert (await same_agent.request("GET", f"/v1/tasks/{task['id']}")).status_code == 200
    refused = await same_agent.request("POST", f"/v1/grants/{grant['id']}/activate")
    body = _denied(refused)
    assert "bound to another key" in body["detail"]
    assert env.values[GITHUB] not in refused.text
    assert (await env.bot.activate(grant["id"])).status_code == 200


# -- operators -----------------------------------------------------------------------------------
async def test_operator_task_read_needs_task_read(env: Env, make_operator: Any) -> None:
    task = await env.bot.open()
    auditor = await make_operator("audrey", "auditor")
    writer = await make_operator("wendy", "secret-writer")
    shown = await env.http.get(f"/v1/tasks/{task['id']}", headers=auditor)
    assert shown.status_code == 200, shown.text
    assert shown.json()["id"] == task["id"]
    assert shown.json()["agent"] == env.bot.id
    listed = await env.http.get("/v1/tasks", params={"status": "active"}, headers=auditor)
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()["items"]] == [task["id"]]
    for response in (
        await env.http.get(f"/v1/tasks/{task['id']}", headers=writer),
        await env.http.get("/v1/tasks", headers=writer),
        await env.http.get(f"/v1/tasks/{task['id']}/grants", headers=writer),
        await env.http.post(f"/v1/tasks/{task['id']}/revoke", json={}, headers=auditor),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["type"] == "urn:tether:problem:forbidden"
    assert (await env.operator_task(task["id"]))["status"] == "active"


# -- fail closed ---------------------------------------------------------------------------------
ERRORING_FORBID = """
@id("overflowing-forbid")
forbid(principal, action == Action::"activate", resource is Secret)
when { context.uses + 9223372036854775807 + 1 > 0 };
"""

ERRORING_PERMIT_ONLY = """
@id("open-task-labelled-purpose")
permit(principal, action == Action::"open_task", resource)
when { principal.labels.contains(context.task.purpose) };

@id("overflowing-permit")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { context.mode == "reveal" && (context.task.remaining_seconds * 9223372036854775807 > 0 || true) };
"""


async def test_a_forbid_that_errors_at_runtime_denies_what_a_permit_allows(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    text_ = EXAMPLE_POLICIES.read_text(encoding="utf-8") + ERRORING_FORBID
    await deploy_policies(env.http, env.admin, text_)
    refused = await env.bot.activate(grant["id"])
    body = _denied(refused)
    assert body["decision"]["errors"], body
    assert "overflowing-forbid" in json.dumps(body["decision"])
    assert env.values[GITHUB] not in refused.text
    (after,) = await env.operator_grants(task["id"])
    assert after["uses"] == 0


async def test_a_permit_that_errors_at_runtime_denies(env: Env) -> None:
    await deploy_policies(env.http, env.admin, ERRORING_PERMIT_ONLY)
    task = await env.bot.open()
    refused = await env.bot.issue(task["id"])
    body = _denied(refused)
    assert body["decision"]["errors"], body
    assert "overflowing-permit" in json.dumps(body["decision"])


async def test_store_down_activation_is_503_and_never_a_value(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    await env.bot.sdk.token()
    storage: Any = env.broker.storage
    original = storage._engine
    url = (
        "sqlite+aiosqlite:////nonexistent-dir/tether/none.db"
        if storage.backend == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:1/none"
    )
    broken = create_async_engine(url)
    storage._engine = broken
    # The hot paths run on their own driver (sqlite3, a raw asyncpg pool): break that one too.
    driver = getattr(storage, "_driver", None)
    pools, dsn = getattr(storage, "_pools", None), getattr(storage, "_dsn", None)
    if driver is not None:
        storage._driver = SQLiteDriver(
            Path("/nonexistent-dir/tether/none.db"), synchronous="FULL", busy_timeout_ms=100, hint=""
        )
    if pools is not None:
        storage._pools, storage._dsn = {}, "postgresql://postgres@127.0.0.1:1/none"
    try:
        refused = await env.bot.activate(grant["id"])
    finally:
        storage._engine = original
        if driver is not None:
            storage._driver.close()
            storage._driver = driver
        if pools is not None:
            storage._pools, storage._dsn = pools, dsn
        await broken.dispose()
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"].startswith("urn:tether:problem:storage")
    assert env.values[GITHUB] not in refused.text
    assert "value" not in refused.json()


async def test_broken_grants_table_activation_is_503_and_never_a_value(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    await env.bot.sdk.token()
    storage: Any = env.broker.storage
    async with storage._engine.begin() as conn:
        await conn.execute(text("ALTER TABLE grants RENAME TO grants_gone"))
    try:
        refused = await env.bot.activate(grant["id"])
    finally:
        async with storage._engine.begin() as conn:
            await conn.execute(text("ALTER TABLE grants_gone RENAME TO grants"))
    assert refused.status_code == 503, refused.text
    assert env.values[GITHUB] not in refused.text
    assert (await env.bot.activate(grant["id"])).status_code == 200


async def test_audit_write_failure_activation_fails_and_never_a_value(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    await env.bot.sdk.token()
    storage: Any = env.broker.storage
    async with storage._engine.begin() as conn:
        await conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
    try:
        refused = await env.bot.activate(grant["id"])
    finally:
        async with storage._engine.begin() as conn:
            await conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
    assert refused.status_code >= 500, refused.text
    assert env.values[GITHUB] not in refused.text


async def test_inject_grants_are_not_activated_here(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"], {"destination": "github", "mode": "inject"})
    assert grant["secret"] == GITHUB
    refused = await env.bot.activate(grant["id"])
    assert refused.status_code == 422, refused.text
    assert env.values[GITHUB] not in refused.text


async def test_reveal_serves_the_current_version_after_rotation(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"])
    rotated = new_canary("rotated")
    put = await env.http.post(f"/v1/secrets/{GITHUB}:rotate", json={"value": rotated}, headers=env.admin)
    assert put.status_code == 200, put.text
    used = (await env.bot.activate(grant["id"])).json()
    assert (used["value"], used["version"]) == (rotated, 2)


async def test_dynamic_credential_does_not_outlive_its_grant(env: Env) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(
        task["id"], {"secret": GITHUB, "destination": "github", "mode": "dynamic"}, ttl_seconds=60
    )
    used = await env.bot.activate(grant["id"])
    assert used.status_code == 200, used.text
    body = used.json()
    assert body["credential"]["value"] == env.values[GITHUB]
    assert datetime.fromisoformat(body["expires_at"]) <= datetime.fromisoformat(grant["expires_at"])


# -- audit ---------------------------------------------------------------------------------------
async def test_activations_and_denials_are_audited_without_values(env: Env, make_operator: Any) -> None:
    task = await env.bot.open()
    grant = await env.bot.grant(task["id"], max_uses=2)
    for _ in range(2):
        assert (await env.bot.activate(grant["id"])).status_code == 200
    _denied(await env.bot.activate(grant["id"]))
    stripe = await env.bot.open(secrets=[STRIPE], destinations=["stripe"], sensitivity="confidential")
    _denied(await env.bot.issue(stripe["id"], {"secret": STRIPE, "destination": "stripe", "mode": "reveal"}))
    incident = await env.bot.open(**INCIDENT_TASK)
    _denied(await env.bot.issue(incident["id"], DYNAMIC_PAGERDUTY))

    activations = await env.audit_events(kind="grant.activate", task=task["id"])
    assert len(activations) == 2
    for event in activations:
        assert event["actor"] == {"type": "agent", "id": env.bot.id}
        assert event["decision"]["allowed"] is True
        assert event["data"]["grant_id"] == grant["id"]
        assert event["data"]["mode"] == "reveal"
    # The use count commits in the same transaction as each event (the grant says how many).
    grants = (await env.bot.call("GET", f"/v1/tasks/{task['id']}/grants")).json()["items"]
    assert [g["uses"] for g in grants if g["id"] == grant["id"]] == [2]

    denials = await env.audit_events(kind="decision", allowed="false")
    assert len(denials) >= 3
    assert all(event["decision"]["allowed"] is False for event in denials)
    used_up = [e for e in denials if e.get("data", {}).get("grant_id") == grant["id"]]
    assert len(used_up) == 1
    assert any("no-reveal-confidential" in e["decision"].get("policies", []) for e in denials)
    assert any(e["decision"].get("missing") == ["approval"] for e in denials)
    assert await env.audit_events(kind="approval.request", task=incident["id"])

    everything = json.dumps(await env.audit_events())
    assert find_leaks(everything, list(env.values.values())) == []
    auditor = await make_operator("audrey", "auditor")
    verified = await env.http.get("/v1/audit/verify", headers=auditor)
    assert verified.status_code == 200, verified.text
    assert verified.json()["ok"] is True


async def test_an_approval_allows_only_the_request_it_was_given_for(env: Env, make_operator: Any) -> None:
    approver = await make_operator("carol", "approver")
    task = await env.bot.open(**INCIDENT_TASK)
    one_use = {**DYNAMIC_PAGERDUTY, "max_uses": 1}
    first = _denied(await env.bot.issue(task["id"], one_use))["approval_id"]
    shown = await env.http.get(f"/v1/approvals/{first}", headers=approver)
    assert shown.json()["request"]["max_uses"] == 1  # what the approver sees is what is approved
    await _approve(env, approver, first)
    # The approval was for a one-use grant: a thousand-use grant is another request, another approval.
    wider = _denied(await env.bot.issue(task["id"], {**DYNAMIC_PAGERDUTY, "max_uses": 1000}))
    assert wider["decision"]["missing"] == ["approval"]
    assert wider["approval_id"] != first
    assert (await env.bot.issue(task["id"], one_use)).status_code == 201


async def test_open_task_approval_for_an_older_context_does_not_open_the_task(
    env: Env, make_operator: Any
) -> None:
    # A policy under which opening an incident task needs an approval.
    text = EXAMPLE_POLICIES.read_text(encoding="utf-8").replace(
        'permit(principal, action == Action::"open_task", resource)\n'
        "when { principal.labels.contains(context.task.purpose) };",
        'permit(principal, action == Action::"open_task", resource)\n'
        "when { principal.labels.contains(context.task.purpose) && "
        '(context.task.purpose != "incident" || context.approval) };',
    )
    await deploy_policies(env.http, env.admin, text)
    approver = await make_operator("carol", "approver")
    pending = await env.bot.call("POST", "/v1/tasks", {**INCIDENT_TASK})
    assert pending.status_code == 201, pending.text
    task = pending.json()
    assert task["status"] == "pending_approval"
    first = task["approval_id"]
    patched = await env.bot.call("PATCH", f"/v1/tasks/{task['id']}", {"objective": "a wider plan"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["approval_id"] != first  # the new context waits for its own approval
    stale = await env.http.post(f"/v1/approvals/{first}/approve", json={"reason": "ok"}, headers=approver)
    assert stale.status_code == 409, stale.text  # voided by the PATCH
    assert (await env.bot.call("GET", f"/v1/tasks/{task['id']}")).json()["status"] == "pending_approval"
    await _approve(env, approver, patched.json()["approval_id"])
    assert (await env.bot.call("GET", f"/v1/tasks/{task['id']}")).json()["status"] == "active"
