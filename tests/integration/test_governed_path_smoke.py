"""The governed path end to end: task → grant → activation → completion → refusal."""

from __future__ import annotations

import pytest

from tests.integration.governed import SECRETS, register_agent, seed
from tests.security.canaries import new_canary

pytestmark = pytest.mark.asyncio


async def test_reveal_within_task_then_refused_after_completion(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    opened = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "ship release 1.2",
            "sensitivity": "internal",
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
            "ttl_seconds": 600,
        },
    )
    assert opened.status_code == 201, opened.text
    task = opened.json()
    assert task["status"] == "active"
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "reveal", "max_uses": 2},
    )
    assert grant.status_code == 201, grant.text
    assert values["prod/github/token"] not in grant.text
    used = await bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert used.status_code == 200, used.text
    assert used.json()["value"] == values["prod/github/token"]
    assert used.headers["cache-control"] == "no-store"
    done = await bot.request("POST", f"/v1/tasks/{task['id']}/complete")
    assert done.status_code == 200, done.text
    assert done.json()["grants_revoked"] == 1
    refused = await bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert refused.status_code == 403, refused.text
    assert refused.json()["type"] == "urn:tether:problem:denied"
    assert "completed" in refused.json()["detail"]
