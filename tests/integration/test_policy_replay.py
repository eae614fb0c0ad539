"""``POST /v1/policies/replay``: decisions recorded by the real broker (SQLite and PostgreSQL, real
Cedar) are made again. With the versions that made them every one is reproduced (the self-check);
a candidate that drops a permit reports exactly its allowed → denied, by policy and by agent. Bad
candidates are 422s with line and column; a window too large says how to narrow it; events without
inputs are counted as not replayable; no secret value is in any event or snapshot; nothing changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.integration.governed import EXAMPLE_POLICIES, SECRETS, register_agent, seed
from tests.security.canaries import new_canary
from tether.broker import Broker
from tether.domain.events import Actor, DecisionSummary
from tether.sdk import AsyncAgent

pytestmark = pytest.mark.asyncio

EXAMPLE = EXAMPLE_POLICIES.read_text(encoding="utf-8")


def without(policy_id: str) -> str:
    """The example set without the policy ``policy_id``."""
    start = EXAMPLE.index(f'@id("{policy_id}")')
    end = EXAMPLE.index("};", start) + 2
    return EXAMPLE[:start] + EXAMPLE[end:]


async def _task(bot: AsyncAgent, secrets: list[str], purpose: str = "deploy") -> str:
    opened = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": purpose,
            "objective": "replay",
            "sensitivity": "internal",
            "secrets": secrets,
            "destinations": ["github", "stripe"],
            "ttl_seconds": 600,
        },
    )
    assert opened.status_code == 201, opened.text
    return str(opened.json()["id"])


async def _grant(bot: AsyncAgent, task: str, body: dict[str, Any]) -> httpx.Response:
    return await bot.request("POST", f"/v1/tasks/{task}/grants", json=body)


async def _traffic(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    """Allowed and denied decisions of every recorded kind: open_task, issue, activate."""
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    dev = await register_agent(client, admin, "dev-bot", environment="dev")
    task = await _task(bot, ["prod/github/token", "prod/stripe/key"])
    reveal = await _grant(
        bot, task, {"secret": "prod/github/token", "destination": "github", "mode": "reveal"}
    )
    assert reveal.status_code == 201, reveal.text
    for _ in range(3):
        used = await bot.request("POST", f"/v1/grants/{reveal.json()['id']}/activate")
        assert used.status_code == 200, used.text
    inject = await _grant(bot, task, {"destination": "stripe", "mode": "inject"})
    assert inject.status_code == 201, inject.text
    denied = await _grant(bot, task, {"secret": "prod/stripe/key", "destination": "stripe", "mode": "reveal"})
    assert denied.status_code == 403, denied.text  # no-reveal-confidential
    dev_task = await _task(dev, ["prod/github/token"])
    refused = await _grant(
        dev, dev_task, {"secret": "prod/github/token", "destination": "github", "mode": "reveal"}
    )
    assert refused.status_code == 403, refused.text  # no-dev-agents-on-prod
    return values


async def _state(broker: Broker) -> dict[str, Any]:
    """What replay must not change: the chain head, the active policy, every table's row count."""
    counts = {}
    async with broker.storage._engine.connect() as conn:  # type: ignore[attr-defined]
        for table in (
            "audit_events",
            "decision_snapshots",
            "policy_sets",
            "policy_active",
            "grants",
            "tasks",
        ):
            counts[table] = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
    return {
        "head": await broker.storage.audit_head(),
        "active": await broker.storage.active_policy_version(),
        "counts": counts,
    }


async def test_replay_reproduces_every_decision_and_reports_what_a_candidate_changes(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await _traffic(client, admin)
    before = await _state(broker)

    checked = await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    assert checked.status_code == 200, checked.text
    body = checked.json()
    verify = body["verify"]
    assert verify["reproduced"] is True, verify
    assert verify["changed"] == 0
    # 2 task opens, 4 issue decisions (2 allowed, 2 denied), 3 activations.
    assert verify["decisions"] == body["events"] == 9
    assert body["not_replayable"] == {"count": 0, "reasons": {}}
    assert verify["policy_versions"] == [1]
    assert body["candidate"] is None

    candidate = without("reveal-low-sensitivity")
    answer = await client.post(
        "/v1/policies/replay", json={"since": "1d", "policies": candidate}, headers=admin
    )
    assert answer.status_code == 200, answer.text
    report = answer.json()["candidate"]
    # The reveal grant's issue and its three activations would have been denied.
    assert report["counts"] == {"allowed->denied": 4, "denied->allowed": 0, "policies-changed": 0}
    assert set(report["by_policy"]) == {"reveal-low-sensitivity"}
    group = report["by_policy"]["reveal-low-sensitivity"]
    assert group["counts"]["allowed->denied"] == 4
    assert len(group["examples"]) == 3
    assert {e["resource"] for e in group["examples"]} == {"Secret::prod/github/token"}
    agents = report["by_agent"]
    assert list(agents) == ["spiffe://tether.local/agent/deploy-bot"]
    assert agents["spiffe://tether.local/agent/deploy-bot"]["counts"]["allowed->denied"] == 4

    # Filters: one agent, one secret.
    only_dev = await client.post(
        "/v1/policies/replay", json={"since": "1d", "verify": True, "agent": "dev-bot"}, headers=admin
    )
    assert only_dev.json()["verify"]["decisions"] == 2  # its task, its refused grant
    only_stripe = await client.post(
        "/v1/policies/replay",
        json={"since": "1d", "verify": True, "secret": "prod/stripe/key"},
        headers=admin,
    )
    assert only_stripe.json()["verify"]["decisions"] == 2

    assert await _state(broker) == before  # replay changed nothing, not even the audit log


async def test_replay_refuses_a_bad_candidate_with_line_and_column(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    broken = EXAMPLE + '\n@id("half") permit(principal, action, resource'
    answer = await client.post("/v1/policies/replay", json={"since": "1d", "policies": broken}, headers=admin)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    [error] = answer.json()["errors"]
    assert error["line"] == broken.count("\n") + 1
    assert isinstance(error["column"], int)
    mistyped = '@id("a") permit(principal, action == Action::"issue", resource) when { context.mode == 1 };'
    invalid = await client.post("/v1/policies/replay", json={"policies": mistyped}, headers=admin)
    assert invalid.status_code == 422, invalid.text
    assert invalid.json()["errors"][0]["line"] == 1
    neither = await client.post("/v1/policies/replay", json={"since": "1d"}, headers=admin)
    assert neither.status_code == 422
    window = await client.post(
        "/v1/policies/replay", json={"since": "forever", "verify": True}, headers=admin
    )
    assert window.status_code == 422


async def test_a_window_too_large_says_how_many_and_how_to_narrow(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await _traffic(client, admin)
    broker.settings = broker.settings.model_copy(update={"replay_max_decisions": 5})  # type: ignore[misc]
    answer = await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert "9 decision events" in detail
    assert "replay_max_decisions" in detail
    assert "--since" in detail
    assert "--agent" in detail
    narrowed = await client.post(
        "/v1/policies/replay", json={"since": "1d", "verify": True, "agent": "dev-bot"}, headers=admin
    )
    assert narrowed.status_code == 200, narrowed.text


async def test_events_without_inputs_are_counted_not_replayable(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await _traffic(client, admin)
    # As an older Tether recorded an activation: the decision, no inputs.
    await broker.audit.record(
        "grant.activate",
        Actor.agent("spiffe://tether.local/agent/deploy-bot"),
        resource="secret:prod/github/token",
        decision=DecisionSummary(allowed=True, policies=("reveal-low-sensitivity",)),
        data={"grant_id": "grt_old", "mode": "reveal"},
    )
    body = (
        await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    ).json()
    assert body["events"] == 10
    assert body["verify"]["decisions"] == 9
    assert body["verify"]["reproduced"] is True
    assert body["not_replayable"]["count"] == 1
    [reason] = body["not_replayable"]["reasons"]
    assert "without inputs" in reason


async def test_no_secret_value_in_decision_events_or_snapshots(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    values = await _traffic(client, admin)
    async with broker.storage._engine.connect() as conn:  # type: ignore[attr-defined]
        bodies = (await conn.execute(text("SELECT body FROM audit_events"))).scalars().all()
        snapshots = (await conn.execute(text("SELECT body FROM decision_snapshots"))).scalars().all()
    assert snapshots
    with_inputs = [b for b in bodies if '"inputs":' in b]
    assert len(with_inputs) == 9
    for value in values.values():
        assert all(value not in b for b in bodies)
        assert all(value not in s for s in snapshots)
    # Small: the event names its snapshots by hash; the inputs add a few hundred bytes.
    assert max(len(b) for b in with_inputs) < 2000


async def test_replay_is_for_operators_who_read_policies(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any
) -> None:
    for role, status in (("auditor", 200), ("policy-author", 200), ("secret-writer", 403)):
        headers = await make_operator(f"op-{role}", role)
        answer = await client.post(
            "/v1/policies/replay", json={"since": "1d", "verify": True}, headers=headers
        )
        assert answer.status_code == status, (role, answer.text)


async def test_approved_and_delegated_decisions_are_reproduced(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    approver = await make_operator("carol", "approver")
    bot = await register_agent(client, admin, "deploy-bot")
    await register_agent(client, admin, "helper-bot")
    opened = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "incident",
            "objective": "page",
            "sensitivity": "restricted",
            "secrets": ["prod/pagerduty/key"],
            "destinations": ["pagerduty"],
            "ttl_seconds": 600,
        },
    )
    assert opened.status_code == 201, opened.text
    task = opened.json()["id"]
    ask = {"destination": "pagerduty", "mode": "inject"}
    refused = await _grant(bot, task, ask)
    assert refused.status_code == 403, refused.text
    approval = refused.json()["approval_id"]
    decided = await client.post(
        f"/v1/approvals/{approval}/approve", json={"reason": "INC-7"}, headers=approver
    )
    assert decided.status_code == 200, decided.text
    issued = await _grant(bot, task, ask)  # allowed by the approval found
    assert issued.status_code == 201, issued.text
    delegated = await bot.request(
        "POST",
        f"/v1/tasks/{task}/delegate",
        json={"agent": "helper-bot", "objective": "a part of it", "secrets": [], "destinations": []},
    )
    assert delegated.status_code == 201, delegated.text

    body = (
        await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    ).json()
    verify = body["verify"]
    # task opens (the root, the sub-task), the refused issue, the approved issue, the delegation
    assert verify["decisions"] == 5, body
    assert verify["reproduced"] is True, verify
    assert body["not_replayable"]["count"] == 0

    candidate = without("restricted-incident-with-approval")
    report = (
        await client.post("/v1/policies/replay", json={"since": "1d", "policies": candidate}, headers=admin)
    ).json()["candidate"]
    # The approved issue is denied now; the refusal that lacked an approval is a plain deny now.
    assert report["counts"] == {"allowed->denied": 1, "denied->allowed": 0, "policies-changed": 1}
    assert set(report["by_policy"]) == {"restricted-incident-with-approval"}


async def test_a_changed_task_context_is_replayed_too(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    task = await _task(bot, ["prod/github/token"])
    changed = await bot.request("PATCH", f"/v1/tasks/{task}", json={"objective": "ship it faster"})
    assert changed.status_code == 200, changed.text
    body = (
        await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    ).json()
    assert body["verify"]["decisions"] == 2  # task.open, task.update
    assert body["verify"]["reproduced"] is True
    report = (
        await client.post(
            "/v1/policies/replay",
            json={"since": "1d", "policies": without("open-task-labelled-purpose")},
            headers=admin,
        )
    ).json()["candidate"]
    assert report["counts"]["allowed->denied"] == 2
    assert set(report["by_policy"]) == {"open-task-labelled-purpose"}


async def test_decisions_made_before_any_policy_was_deployed_are_reproduced(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    bot = await register_agent(client, admin, "deploy-bot")
    refused = await bot.request(
        "POST",
        "/v1/tasks",
        json={"purpose": "deploy", "objective": "x", "sensitivity": "internal", "ttl_seconds": 60},
    )
    assert refused.status_code == 403, refused.text  # nothing deployed: default deny
    body = (
        await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    ).json()
    assert body["verify"]["decisions"] == 1
    assert body["verify"]["policy_versions"] == [None]
    assert body["verify"]["reproduced"] is True
    report = (
        await client.post("/v1/policies/replay", json={"since": "1d", "policies": EXAMPLE}, headers=admin)
    ).json()["candidate"]
    assert report["counts"]["denied->allowed"] == 1
    assert set(report["by_policy"]) == {"open-task-labelled-purpose"}


async def test_a_missing_snapshot_makes_its_decisions_not_replayable(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await _traffic(client, admin)
    async with broker.storage._engine.begin() as conn:  # type: ignore[attr-defined]
        # The dev agent's snapshot goes missing (or unreadable): its 2 decisions cannot be made again.
        bodies = (await conn.execute(text("SELECT hash, body FROM decision_snapshots"))).all()
        [dev] = [h for h, b in bodies if "agent/dev-bot" in b]
        await conn.execute(
            text("UPDATE decision_snapshots SET body = 'not json' WHERE hash = :h"), {"h": dev}
        )
    body = (
        await client.post("/v1/policies/replay", json={"since": "1d", "verify": True}, headers=admin)
    ).json()
    assert body["verify"]["decisions"] == 7
    assert body["verify"]["reproduced"] is True
    assert body["not_replayable"] == {"count": 2, "reasons": {"a snapshot it names is missing": 2}}
