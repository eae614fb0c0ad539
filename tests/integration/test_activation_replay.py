"""The activation path records a DPoP proof's single use in the same transaction as the use it
authorises: replaying the exact request is refused and counts nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.governed import BASE, SECRETS, register_agent, seed
from tests.security.canaries import new_canary
from tether.sdk import AsyncAgent

pytestmark = pytest.mark.asyncio


async def _reveal_grant(
    client: httpx.AsyncClient, admin: dict[str, str], **extra: object
) -> tuple[AsyncAgent, str, str, dict[str, str]]:
    """A seeded deployment, an agent, a task and a reveal grant: (agent, task id, grant id, values)."""
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    task = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "ship",
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
        },
    )
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task.json()['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "reveal", **extra},
    )
    return bot, task.json()["id"], grant.json()["id"], values


async def test_replayed_activation_request_is_refused_and_counts_no_use(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    bot, task_id, grant_id, values = await _reveal_grant(client, admin, max_uses=5)
    path = f"/v1/grants/{grant_id}/activate"
    session = bot._session  # the exact headers of one request, sent twice
    headers = session.signed_headers("POST", BASE + path, await bot.token())
    first = await client.post(path, headers=headers)
    assert first.status_code == 200, first.text
    replayed = await client.post(path, headers=headers)
    assert replayed.status_code == 401, replayed.text
    assert "DPoP" in replayed.headers["www-authenticate"]
    assert values["prod/github/token"] not in replayed.text
    listed = await bot.request("GET", f"/v1/tasks/{task_id}/grants")
    assert [g["uses"] for g in listed.json()["items"]] == [1]
    refusals = await client.get("/v1/audit/events", params={"kind": "auth.failed"}, headers=admin)
    assert any("replayed" in event["reason"] for event in refusals.json()["events"])


async def test_replayed_denied_activation_is_still_refused(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    task = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "ship",
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
        },
    )
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task.json()['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "reveal"},
    )
    assert (await bot.request("POST", f"/v1/tasks/{task.json()['id']}/complete")).status_code == 200
    path = f"/v1/grants/{grant.json()['id']}/activate"
    headers = bot._session.signed_headers("POST", BASE + path, await bot.token())
    assert (await client.post(path, headers=headers)).status_code == 403
    assert (await client.post(path, headers=headers)).status_code == 401  # the denial used the proof
