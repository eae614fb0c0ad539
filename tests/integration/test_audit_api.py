"""Every admin action leaves an event, before it happens; the chain verifies; the log never
holds a secret value, only its fingerprint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.security.canaries import find_leaks, new_canary
from tether.audit import load_checkpoint, verify_jsonl
from tether.broker import Broker

pytestmark = pytest.mark.asyncio


async def events(client: httpx.AsyncClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/v1/audit/events", params={"limit": 1000, **params}, headers=headers)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["events"]
    return found


async def test_admin_actions_are_recorded_in_order(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any
) -> None:
    value = new_canary("audited")
    await client.put("/v1/secrets/app/db", json={"value": value}, headers=admin)
    await client.post("/v1/secrets/app/db:rotate", json={"value": new_canary("rotated")}, headers=admin)
    await client.delete("/v1/secrets/app/db", headers=admin)
    writer = await make_operator("writer", "secret-writer")
    await client.post("/v1/operators", json={"name": "nope", "role": "admin"}, headers=writer)  # denied
    await client.get("/v1/secrets", headers={"Authorization": "Bearer tto_" + "B" * 43})  # unknown token
    await client.post("/v1/sys/seal", headers=admin)
    await client.post("/v1/sys/unseal", headers=admin)
    await client.post("/v1/sys/keys/rotate", headers=admin)

    kinds = [e["kind"] for e in await events(client, admin)]
    expected = [
        "sys.init",
        "operator.create",
        "secret.write",
        "secret.rotate",
        "secret.delete",
        "operator.create",
        "decision",
        "operator.auth_failed",
        "sys.seal",
        "sys.unseal",
        "sys.keys.rotate",
        "sys.keys.rotate",
    ]
    assert kinds == expected
    denied = (await events(client, admin, kind="decision"))[0]
    assert denied["actor"] == {"type": "operator", "id": "writer"}
    assert denied["decision"]["allowed"] is False
    assert denied["decision"]["missing"] == ["permission:operator.manage"]


async def test_values_appear_only_as_fingerprints(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    value = new_canary("fingerprinted")
    await client.put("/v1/secrets/app/token", json={"value": value, "purposes": ["ci"]}, headers=admin)
    written = await events(client, admin, kind="secret.write", secret="app/token")
    assert len(written) == 1
    fingerprint = (await client.post("/v1/audit/hash", json={"value": value}, headers=admin)).json()[
        "fingerprint"
    ]
    assert written[0]["data"]["value"] == fingerprint
    assert fingerprint.startswith("hmac-sha256:")
    export = await client.get("/v1/audit/export", headers=admin)
    assert find_leaks(export.text, [value]) == []


async def test_auditor_reads_and_writer_does_not(
    client: httpx.AsyncClient, make_operator: Any, admin: dict[str, str]
) -> None:
    auditor = await make_operator("auditor", "auditor")
    writer = await make_operator("writer", "secret-writer")
    assert (await client.get("/v1/audit/events", headers=auditor)).status_code == 200
    assert (await client.get("/v1/audit/verify", headers=auditor)).status_code == 200
    for method, path in (
        ("GET", "/v1/audit/events"),
        ("GET", "/v1/audit/verify"),
        ("GET", "/v1/audit/export"),
    ):
        response = await client.request(method, path, headers=writer)
        assert response.status_code == 403
    denied = await events(client, admin, kind="decision", actor="writer")
    assert len(denied) == 3


async def test_live_verify_export_and_checkpoint_verify_offline(
    client: httpx.AsyncClient, admin: dict[str, str], tmp_path: Path
) -> None:
    for n in range(5):
        await client.put(f"/v1/secrets/v/{n}", json={"value": new_canary("v")}, headers=admin)
    checkpoint = await client.post("/v1/audit/checkpoints", headers=admin)
    assert checkpoint.status_code == 201
    latest = await client.get("/v1/audit/checkpoints/latest", headers=admin)
    assert latest.json() == checkpoint.json()
    verdict = (await client.get("/v1/audit/verify", headers=admin)).json()
    assert verdict["ok"] is True
    assert verdict["checked"] >= 8

    export = tmp_path / "audit.jsonl"
    export.write_text((await client.get("/v1/audit/export", headers=admin)).text)
    cp_file = tmp_path / "checkpoint.json"
    cp_file.write_text(json.dumps(checkpoint.json()))
    assert verify_jsonl(export, load_checkpoint(cp_file))

    lines = export.read_text().splitlines()
    cut = tmp_path / "truncated.jsonl"
    cut.write_text("\n".join(lines[:3]) + "\n")
    result = verify_jsonl(cut, load_checkpoint(cp_file))
    assert not result
    assert result.problem == "truncated"


async def test_tampering_with_the_live_store_is_found(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    for n in range(4):
        await client.put(f"/v1/secrets/t/{n}", json={"value": new_canary("t")}, headers=admin)
    async with broker.storage._engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(text("UPDATE audit_events SET kind = 'secret.delete' WHERE seq = 4"))
    verdict = (await client.get("/v1/audit/verify", headers=admin)).json()
    assert verdict["ok"] is False
    assert verdict["first_bad_seq"] == 4
    assert verdict["problem"] == "modified"


async def test_an_action_whose_event_cannot_be_written_does_not_happen(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    async with broker.storage._engine.begin() as conn:  # type: ignore[attr-defined]
        await conn.execute(text("DROP TABLE audit_events"))
    response = await client.put("/v1/secrets/never/written", json={"value": new_canary("x")}, headers=admin)
    assert response.status_code == 503
    assert await broker.storage.get_secret("never/written", include_deleted=True) is None


async def test_bad_audit_queries_are_422(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for params in (
        {"kind": "no.such.kind"},
        {"limit": 0},
        {"after": -1},
        {"since": "yesterday"},
        {"allowed": "x"},
    ):
        response = await client.get("/v1/audit/events", params=params, headers=admin)
        assert response.status_code == 422, params
        assert response.headers["content-type"].startswith("application/problem+json")
    both = await client.get("/v1/audit/events", params={"secret": "a", "resource": "b"}, headers=admin)
    assert both.status_code == 422


async def test_a_failed_action_leaves_its_request_and_its_failure(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any
) -> None:
    await client.post("/v1/operators", json={"name": "dup", "role": "auditor"}, headers=admin)
    again = await client.post("/v1/operators", json={"name": "dup", "role": "auditor"}, headers=admin)
    assert again.status_code == 409
    created = await events(client, admin, kind="operator.create", resource="operator:dup")
    assert [e.get("reason", "") for e in created] == ["", "", "failed: ConflictError"]
    writer = await make_operator("metrics-writer", "secret-writer")
    assert (await client.get("/metrics", headers=writer)).status_code == 403
    denied = await events(client, admin, kind="decision", resource="sys:metrics")
    assert len(denied) == 1


async def test_out_of_range_cursors_and_times_are_422_not_500(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    for path, params in (
        ("/v1/audit/events", {"after": 2**63}),
        ("/v1/audit/export", {"after": 2**63}),
        ("/v1/audit/events", {"since": "0001-01-01T00:00:00+01:00"}),
        ("/v1/audit/events", {"until": "9999-12-31T23:59:59-01:00"}),
        ("/v1/policies/versions", {"after": 2**63}),
    ):
        response = await client.get(path, params=params, headers=admin)
        assert response.status_code == 422, (path, params, response.text)
    assert (await client.get(f"/v1/policies/{2**63}", headers=admin)).status_code == 422
    rollback = await client.post("/v1/policies/rollback", json={"version": 2**63}, headers=admin)
    assert rollback.status_code == 422
