"""``GET /v1/reach/findings``: standing privilege, each finding naming the policies behind it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.governed import EXAMPLE_POLICIES, SECRETS, deploy_policies, register_agent, seed
from tests.security.canaries import new_canary

pytestmark = pytest.mark.asyncio

# The example set, plus a careless permit: restricted secrets for incidents, no approval needed.
CARELESS = (
    EXAMPLE_POLICIES.read_text(encoding="utf-8")
    + '\n@id("incident-shortcut") permit(principal, action in [Action::"issue", Action::"activate"], '
    'resource is Secret) when { context.task.purpose == "incident" && '
    "context.task.secrets.contains(resource.path) && resource.destinations.contains(context.destination) "
    '&& context.mode == "inject" };\n'
)


def _kinds(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in body["findings"] if f["kind"] == kind]


async def test_findings_name_the_policies_that_cause_them(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    opened = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "ship",
            "sensitivity": "internal",
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
            "ttl_seconds": 600,
        },
    )
    assert opened.status_code == 201, opened.text
    task = opened.json()
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "inject"},
    )
    assert grant.status_code == 201, grant.text

    body = (await client.get("/v1/reach/findings", headers=admin)).json()
    assert _kinds(body, "restricted-without-approval") == []  # the example set asks for one
    never = _kinds(body, "grant-never-activated")
    assert [f["subject"] for f in never] == [f"grant:{grant.json()['id']}"]
    assert never[0]["policies"]
    unused = {f["subject"] for f in _kinds(body, "reach-never-used")}
    assert "secret:prod/github/token" in unused
    # prod/github/token (internal) is revealable and injected by github.
    revealable = _kinds(body, "revealable-injected")
    assert [f["subject"] for f in revealable] == ["destination:github"]
    assert revealable[0]["policies"] == ["reveal-low-sensitivity"]
    for value in values.values():
        assert value not in str(body)

    await deploy_policies(client, admin, CARELESS)
    careless = (await client.get("/v1/reach/findings?since=7d", headers=admin)).json()
    restricted = _kinds(careless, "restricted-without-approval")
    assert [f["subject"] for f in restricted] == ["secret:prod/pagerduty/key"]
    assert restricted[0]["policies"] == ["incident-shortcut"]
    assert restricted[0]["agents"] == ["deploy-bot"]


async def test_findings_refuse_a_bad_window_and_other_roles(client, admin, make_operator) -> None:  # type: ignore[no-untyped-def]
    bad = await client.get("/v1/reach/findings?since=forever", headers=admin)
    assert bad.status_code in (400, 422), bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    too_long = await client.get("/v1/reach/findings?since=400d", headers=admin)
    assert too_long.status_code in (400, 422), too_long.text
    writer = await make_operator("sam", "secret-writer")
    assert (await client.get("/v1/reach/findings", headers=writer)).status_code == 403
