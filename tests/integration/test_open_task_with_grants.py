"""One round trip to start work (issue 13): ``POST /v1/tasks`` with ``grants`` opens the task and
decides each grant on its own; the task, the grants, their events and the request's proof are one
write."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from tests.integration.governed import BASE, EXAMPLE_POLICIES, SECRETS, deploy_policies, register_agent, seed
from tests.security.canaries import new_canary
from tether.broker import Broker
from tether.domain.commands import MAX_GRANTS_PER_TASK
from tether.sdk import AsyncAgent, GrantRequest

pytestmark = pytest.mark.asyncio

GITHUB = "prod/github/token"
DOCS = "prod/docs/token"
STRIPE = "prod/stripe/key"
PAGERDUTY = "prod/pagerduty/key"
DEPLOY: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "ship release 1.2",
    "secrets": [GITHUB, DOCS],
    "destinations": ["github"],
    "ttl_seconds": 600,
}
REVEAL_GITHUB = {"secret": GITHUB, "destination": "github", "mode": "reveal"}
INJECT_GITHUB = {"destination": "github", "mode": "inject", "max_uses": 5}


class WriteCounter:
    """Counts the store's audit write transactions (each carries its batch's effects)."""

    def __init__(self, broker: Broker) -> None:
        self.count = 0
        # The audit log hands each batch to the store in one call: a sealing writer when the store
        # offers one, else append_audit_events.
        sealing: Any = getattr(broker.audit, "_sealing", None)
        target: Any = sealing if sealing is not None else broker.storage
        name = "append_sealed" if sealing is not None else "append_audit_events"
        original = getattr(target, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await original(*args, **kwargs)

        setattr(target, name, counted)


@pytest.fixture
async def bot(client: httpx.AsyncClient, admin: dict[str, str]) -> AsyncAgent:
    await seed(client, admin, {path: new_canary(path) for path in SECRETS})
    agent = await register_agent(client, admin, "deploy-bot")
    await agent.token()  # the token's own writes are not the request's
    return agent


async def _events(client: httpx.AsyncClient, admin: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit/events", params={"limit": 1000, **params}, headers=admin)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def _grants(client: httpx.AsyncClient, admin: dict[str, str], task_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/tasks/{task_id}/grants", headers=admin)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_task_and_two_grants_are_issued_in_one_request_and_one_write(
    broker: Broker, client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    writes = WriteCounter(broker)
    response = await bot.request(
        "POST", "/v1/tasks", json={**DEPLOY, "grants": [REVEAL_GITHUB, INJECT_GITHUB]}
    )
    assert response.status_code == 201, response.text
    assert writes.count == 1
    task = response.json()
    assert task["status"] == "active"
    assert [g["mode"] for g in task["grants"]] == ["reveal", "inject"]
    assert task["grant_indexes"] == [0, 1]
    assert task["grants_denied"] == []
    assert task["grants_pending_approval"] == []
    inject = task["grants"][1]
    assert inject["secret"] == GITHUB  # what the destination injects
    assert inject["uses_left"] == 5
    assert all(g["task_id"] == task["id"] and g["expires_at"] <= task["expires_at"] for g in task["grants"])
    stored = await _grants(client, admin, task["id"])
    assert sorted(g["id"] for g in stored) == sorted(g["id"] for g in task["grants"])
    events = [e for e in await _events(client, admin, task=task["id"]) if e["kind"] != "auth.token"]
    assert [e["kind"] for e in events] == ["task.open", "grant.issue", "grant.issue"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 3))  # consecutive: one batch
    assert events[0]["data"]["grants_asked"] == 2
    # The grants work like any other.
    used = await bot.request("POST", f"/v1/grants/{task['grants'][0]['id']}/activate")
    assert used.status_code == 200, used.text


async def test_a_grant_denied_by_policy_does_not_stop_the_other(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    body = {
        "purpose": "deploy",
        "objective": "charge",
        "sensitivity": "confidential",
        "secrets": [STRIPE],
        "destinations": ["stripe"],
        "grants": [
            {"secret": STRIPE, "destination": "stripe", "mode": "reveal"},
            {"destination": "stripe", "mode": "inject"},
        ],
    }
    response = await bot.request("POST", "/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["grant_indexes"] == [1]
    assert task["grants"][0]["mode"] == "inject"
    [denied] = task["grants_denied"]
    assert denied["index"] == 0
    assert denied["mode"] == "reveal"
    assert denied["decision"]["allowed"] is False
    assert "no-reveal-confidential" in denied["decision"]["policies"]
    assert denied["decision"]["missing"] == []
    assert denied["approval_id"] is None
    assert len(await _grants(client, admin, task["id"])) == 1
    kinds = [e["kind"] for e in await _events(client, admin, task=task["id"])]
    assert sorted(kinds) == ["decision", "grant.issue", "task.open"]


async def test_a_grant_needing_approval_names_it_and_is_issued_once_approved(
    client: httpx.AsyncClient,
    admin: dict[str, str],
    bot: AsyncAgent,
    make_operator: Callable[[str, str], Awaitable[dict[str, str]]],
) -> None:
    dynamic = {"destination": "pagerduty", "mode": "inject"}
    body = {
        "purpose": "incident",
        "objective": "page the on-call",
        "sensitivity": "restricted",
        "secrets": [PAGERDUTY],
        "destinations": ["pagerduty"],
        "grants": [dynamic],
    }
    response = await bot.request("POST", "/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["grants"] == []
    [pending] = task["grants_pending_approval"]
    assert pending["decision"]["missing"] == ["approval"]
    assert "restricted-incident-with-approval" in pending["decision"]["policies"]
    approver = await make_operator("carol", "approver")
    shown = await client.get(f"/v1/approvals/{pending['approval_id']}", headers=approver)
    assert shown.status_code == 200, shown.text
    assert shown.json()["status"] == "pending"
    assert shown.json()["action"] == "issue"
    # Asking again the usual way gets the same approval; once approved, the grant is issued.
    again = await bot.request("POST", f"/v1/tasks/{task['id']}/grants", json=dynamic)
    assert again.status_code == 403, again.text
    assert again.json()["approval_id"] == pending["approval_id"]
    decided = await client.post(
        f"/v1/approvals/{pending['approval_id']}/approve", json={"reason": "INC-7"}, headers=approver
    )
    assert decided.status_code == 200, decided.text
    issued = await bot.request("POST", f"/v1/tasks/{task['id']}/grants", json=dynamic)
    assert issued.status_code == 201, issued.text


async def test_a_refused_task_issues_no_grant(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    ops = await register_agent(client, admin, "ops-bot", labels=("incident",))  # not for deploys
    response = await ops.request("POST", "/v1/tasks", json={**DEPLOY, "grants": [REVEAL_GITHUB]})
    assert response.status_code == 403, response.text
    assert "no grant was issued" in response.json()["detail"]
    kinds = [e["kind"] for e in await _events(client, admin, agent=ops._session.agent_id)]
    assert "grant.issue" not in kinds
    assert "task.open" not in kinds


async def test_a_task_pending_approval_issues_no_grant(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    policy = (
        EXAMPLE_POLICIES.read_text(encoding="utf-8")
        + '@id("open-deploy-with-approval")\npermit(principal, action == Action::"open_task", resource)\n'
        + 'when { context.task.purpose == "deploy" && context.approval };\n'
    )
    await deploy_policies(client, admin, policy)
    ops = await register_agent(client, admin, "ops-bot", labels=("incident",))
    response = await ops.request("POST", "/v1/tasks", json={**DEPLOY, "grants": [REVEAL_GITHUB]})
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "pending_approval"
    assert task["grants"] == []
    [denied] = task["grants_denied"]
    assert task["approval_id"] in denied["detail"]
    assert await _grants(client, admin, task["id"]) == []
    pending = await client.get("/v1/approvals", headers=admin)
    assert task["approval_id"] in [a["id"] for a in pending.json()["items"]]


@pytest.mark.parametrize(
    ("grant", "field"),
    [
        ({"secret": GITHUB, "mode": "bogus"}, "grants.0.mode"),
        ({"secret": GITHUB, "nope": 1}, "grants.0.nope"),
        ({"secret": GITHUB, "max_uses": 0}, "grants.0.max_uses"),
        ({"mode": "inject", "secret": GITHUB}, "grants.0.destination"),  # inject names a destination
        ({"mode": "reveal"}, "grants.0.secret"),
    ],
)
async def test_an_invalid_grant_item_is_422_naming_it_and_writes_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent, grant: dict[str, Any], field: str
) -> None:
    before = len(await _events(client, admin, kind="task.open"))
    response = await bot.request("POST", "/v1/tasks", json={**DEPLOY, "grants": [grant]})
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]
    assert len(await _events(client, admin, kind="task.open")) == before


async def test_more_grants_than_the_limit_are_refused(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    grants = [REVEAL_GITHUB] * (MAX_GRANTS_PER_TASK + 1)
    response = await bot.request("POST", "/v1/tasks", json={**DEPLOY, "grants": grants})
    assert response.status_code == 422, response.text
    [error] = response.json()["errors"]
    assert error["field"] == "grants"
    assert str(MAX_GRANTS_PER_TASK) in error["message"]
    at_limit = await bot.request("POST", "/v1/tasks", json={**DEPLOY, "grants": grants[:-1]})
    assert at_limit.status_code == 201, at_limit.text
    assert len(at_limit.json()["grants"]) == MAX_GRANTS_PER_TASK


async def test_a_replayed_open_task_request_is_refused_and_opens_nothing(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    headers = bot._session.signed_headers("POST", BASE + "/v1/tasks", await bot.token())
    body = {**DEPLOY, "grants": [REVEAL_GITHUB]}
    first = await client.post("/v1/tasks", headers=headers, json=body)
    assert first.status_code == 201, first.text
    replayed = await client.post("/v1/tasks", headers=headers, json=body)
    assert replayed.status_code == 401, replayed.text
    assert len(await _events(client, admin, kind="task.open")) == 1
    assert len(await _events(client, admin, kind="grant.issue")) == 1


async def test_a_request_refused_before_writing_still_uses_up_its_proof(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    headers = bot._session.signed_headers("POST", BASE + "/v1/tasks", await bot.token())
    refused = await client.post("/v1/tasks", headers=headers, json={**DEPLOY, "secrets": ["prod/nope/none"]})
    assert refused.status_code == 422, refused.text
    # The same proof on a request that would succeed: it was used up by the refused one.
    replayed = await client.post("/v1/tasks", headers=headers, json=DEPLOY)
    assert replayed.status_code == 401, replayed.text
    assert await _events(client, admin, kind="task.open") == []


async def test_a_replayed_grant_request_is_refused(
    client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    task = (await bot.request("POST", "/v1/tasks", json=DEPLOY)).json()
    path = f"/v1/tasks/{task['id']}/grants"
    headers = bot._session.signed_headers("POST", BASE + path, await bot.token())
    assert (await client.post(path, headers=headers, json=REVEAL_GITHUB)).status_code == 201
    assert (await client.post(path, headers=headers, json=REVEAL_GITHUB)).status_code == 401
    assert len(await _grants(client, admin, task["id"])) == 1


async def test_the_sdk_opens_a_task_with_its_grants_in_one_request(
    broker: Broker, client: httpx.AsyncClient, admin: dict[str, str], bot: AsyncAgent
) -> None:
    sent: list[str] = []

    async def seen(request: httpx.Request) -> None:
        sent.append(f"{request.method} {request.url.path}")

    client.event_hooks["request"].append(seen)
    writes = WriteCounter(broker)
    wanted = [GrantRequest(secret=GITHUB, destination="github", mode="reveal"), INJECT_GITHUB]
    async with bot.task(
        purpose="deploy", objective="ship", secrets=[GITHUB], destinations=["github"], grants=wanted
    ) as task:
        assert sent == ["POST /v1/tasks"]
        assert writes.count == 1
        assert [g.mode for g in task.issued_grants] == ["reveal", "inject"]
        assert task.refused_grants == []
        # The grants issued with the task are handed out without asking again.
        inject = await task.grant(destination="github", mode="inject", max_uses=5)
        assert inject.id == task.issued_grants[1].id
        value = await task.reveal(GITHUB, destination="github")
        assert value
        assert sent == ["POST /v1/tasks", f"POST /v1/grants/{task.issued_grants[0].id}/activate"]
        # Another grant of the same request is asked for as usual.
        again = await task.grant(destination="github", mode="inject", max_uses=5)
        assert again.id != inject.id
    assert "grants" not in task.info
