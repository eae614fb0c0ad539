"""Delegation: a narrower sub-task for another agent, decided at every hop, revoked with its parent."""

from __future__ import annotations

import pytest

from tests.integration.governed import SECRETS, register_agent, seed
from tests.security.canaries import new_canary

pytestmark = pytest.mark.asyncio


async def test_delegate_uses_sub_task_until_parent_ends(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    planner = await register_agent(client, admin, "planner")
    worker = await register_agent(client, admin, "worker")
    worker_id = (await worker.whoami())["id"]
    parent = await planner.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "release",
            "secrets": ["prod/github/token", "prod/stripe/key"],
            "destinations": ["github", "stripe"],
        },
    )
    assert parent.status_code == 201, parent.text
    pid = parent.json()["id"]
    wider = await planner.request(
        "POST",
        f"/v1/tasks/{pid}/delegate",
        json={"agent": worker_id, "objective": "x", "secrets": ["prod/pagerduty/key"]},
    )
    assert wider.status_code == 403, wider.text
    assert "only narrow" in wider.json()["detail"]
    child = await planner.request(
        "POST",
        f"/v1/tasks/{pid}/delegate",
        json={
            "agent": "worker",
            "objective": "fetch the token",
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
        },
    )
    assert child.status_code == 201, child.text
    body = child.json()
    assert body["depth"] == 1
    assert body["chain"] == [pid]
    assert body["parent_id"] == pid
    assert body["agent"] == worker_id
    cid = body["id"]
    grant = await worker.request(
        "POST",
        f"/v1/tasks/{cid}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "reveal"},
    )
    assert grant.status_code == 201, grant.text
    used = await worker.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert used.status_code == 200, used.text
    tree = await client.get(f"/v1/tasks/{cid}/tree", headers=admin)
    assert [t["id"] for t in tree.json()["items"]] == [pid, cid]
    assert (await planner.request("POST", f"/v1/tasks/{pid}/complete")).status_code == 200
    refused = await worker.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert refused.status_code == 403, refused.text
    assert "revoked" in refused.json()["detail"]


async def test_a_delegate_cannot_widen_its_sub_task_or_change_its_purpose(client, admin) -> None:  # type: ignore[no-untyped-def]
    await seed(client, admin, {path: new_canary(path) for path in SECRETS})
    planner = await register_agent(client, admin, "planner")
    helper = await register_agent(client, admin, "helper")
    parent = await planner.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "release",
            "secrets": ["prod/github/token", "prod/docs/token"],
            "destinations": ["github"],
        },
    )
    child = await planner.request(
        "POST",
        f"/v1/tasks/{parent.json()['id']}/delegate",
        json={
            "agent": "helper",
            "objective": "docs only",
            "secrets": ["prod/docs/token"],
            "sensitivity": "public",
        },
    )
    assert child.status_code == 201, child.text
    cid = child.json()["id"]
    for change in (
        {"secrets": ["prod/docs/token", "prod/github/token"]},  # within the parent, beyond the hand-over
        {"sensitivity": "internal"},
        {"destinations": ["github"]},
        {"purpose": "incident"},
    ):
        widened = await helper.request("PATCH", f"/v1/tasks/{cid}", json=change)
        assert widened.status_code == 403, (change, widened.text)
    narrowed = await helper.request("PATCH", f"/v1/tasks/{cid}", json={"objective": "docs, carefully"})
    assert narrowed.status_code == 200, narrowed.text
