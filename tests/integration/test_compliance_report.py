"""``GET /v1/compliance/report``: controls mapped to OWASP ASI / NHI and NIST AI RMF, with evidence
computed from the node's own data (a real node on SQLite, and PostgreSQL where configured)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.integration.governed import SECRETS, register_agent, seed
from tests.security.canaries import find_leaks, new_canary
from tether.evidence.compliance import load_mapping

pytestmark = pytest.mark.asyncio


def _metric(body: dict[str, Any], metric: str) -> dict[str, Any]:
    result: dict[str, Any] = body["metrics"][metric]
    return result


def _items(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for fw in body["frameworks"] for item in fw["items"]}


async def _use_a_secret(client, admin, values: dict[str, str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
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
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "reveal", "max_uses": 2},
    )
    assert grant.status_code == 201, grant.text
    used = await bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert used.status_code == 200, used.text
    done = await bot.request("POST", f"/v1/tasks/{task['id']}/complete")
    assert done.status_code == 200, done.text
    refused = await bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")
    assert refused.status_code == 403, refused.text
    return task


async def test_an_empty_deployment_says_which_controls_have_no_evidence(client, admin) -> None:  # type: ignore[no-untyped-def]
    body = (await client.get("/v1/compliance/report", headers=admin)).json()
    assert body["mapping_version"] == load_mapping().version
    assert body["window"]["since"] == "30d"
    use = _metric(body, "use_time_decisions")
    assert use["evidence"] is False
    assert use["statements"] == ["No evidence in this window: no secret was used."]
    controls = {c["id"]: c for c in body["controls"]}
    assert controls["TC-01"]["evidence"] is False
    items = _items(body)
    assert items["ASI05"]["status"] == "not-addressed"
    assert items["ASI09"]["status"] == "no-evidence"  # approvals only, and none was requested
    # The chain holds the init and operator events: verified, and no checkpoint yet.
    audit = _metric(body, "audit_chain")
    assert audit["evidence"] is True
    assert audit["values"]["verified"] is True
    assert "No signed checkpoint has been taken yet." in audit["statements"]


async def test_evidence_is_computed_from_the_deployments_own_data(client, admin, broker) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    await _use_a_secret(client, admin, values)
    scanned = await client.post(
        "/v1/scan", json={"text": f"token={values['prod/github/token']}\n"}, headers=admin
    )
    assert scanned.status_code == 200, scanned.text
    checkpoint = await broker.audit.checkpoint()

    response = await client.get("/v1/compliance/report?since=7d", headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["window"]["since"] == "7d"

    use = _metric(body, "use_time_decisions")["values"]
    # The reveal, decided at the moment of use (the refusal after completion is a state check).
    assert use["activations"] == 1
    assert use["decided_at_use"] == 1
    assert use["allowed"] == 1
    assert use["share_decided_at_use"] == 1.0

    lifetimes = _metric(body, "task_lifetimes")["values"]
    assert lifetimes["tasks"] == 1
    assert lifetimes["max_lifetime_seconds"] == 600

    revocation = _metric(body, "revocation_at_end")["values"]
    assert revocation["tasks_ended_by_status"] == {"completed": 1}
    assert revocation["grants_revoked"] >= 1

    standing = _metric(body, "standing_grants")["values"]
    assert standing["grants_outliving_their_task"] == 0
    assert standing["ended_tasks_checked"] == 1
    assert standing["live_grants"] == 0

    reveal = _metric(body, "reveal_exposure")["values"]
    assert reveal["reveal_activations"] == 1
    assert "prod/github/token" in reveal["revealable"]  # the example set reveals low sensitivity
    assert "prod/pagerduty/key" not in reveal["revealable"]
    assert reveal["injection_only"] == len(SECRETS) - len(reveal["revealable"])

    scans = _metric(body, "sprawl_scans")["values"]
    assert scans["scans"] == 1
    assert scans["governed_findings"] == 1

    audit = _metric(body, "audit_chain")["values"]
    assert audit["verified"] is True
    assert audit["verified_to_seq"] >= checkpoint.seq
    assert audit["checkpoint"]["seq"] == checkpoint.seq
    assert audit["checkpoint"]["key_id"] == checkpoint.key_id

    inventory = _metric(body, "secret_inventory")["values"]
    assert inventory["secrets"] == len(SECRETS)
    assert inventory["by_sensitivity"]["restricted"] == 1

    findings = _metric(body, "reach_findings")
    assert findings["evidence"] is True
    assert findings["values"]["findings"].get("revealable-injected", 0) >= 1

    assert _metric(body, "policy_versions")["values"]["active_version"] == 1
    assert _metric(body, "operator_separation")["values"]["by_role"] == {"admin": 1}
    controls = {c["id"]: c for c in body["controls"]}
    assert controls["TC-01"]["evidence"] is True
    assert controls["TC-03"]["evidence"] is True
    assert _items(body)["NHI2"]["status"] == "evidence"
    assert body["summary"].startswith("Over the last 7d (mapping ")
    assert "100.0% of 1 secret uses were decided by policy at the moment of use" in body["summary"]
    assert not find_leaks(response.text, list(values.values()))
    for value in values.values():
        assert value not in response.text


async def test_dpop_replays_refused_are_counted(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    first = await bot.request("GET", "/v1/auth/whoami")
    assert first.status_code == 200, first.text
    replayed = await client.get("/v1/auth/whoami", headers=dict(first.request.headers))
    assert replayed.status_code == 401, replayed.text
    body = (await client.get("/v1/compliance/report", headers=admin)).json()
    replays = _metric(body, "dpop_replays")
    assert replays["values"]["replays_refused"] == 1
    assert replays["statements"] == ["1 replayed DPoP proofs or client assertions refused."]


async def test_markdown_and_html_render_on_their_own(client, admin) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    md = await client.get("/v1/compliance/report?format=md", headers=admin)
    assert md.status_code == 200, md.text
    assert md.headers["content-type"].startswith("text/markdown")
    assert f"Mapping version {load_mapping().version}" in md.text
    assert "| ASI05 | Unexpected Code Execution (RCE)" in md.text
    html = await client.get("/v1/compliance/report?format=html&since=12h", headers=admin)
    assert html.status_code == 200, html.text
    assert html.headers["content-type"].startswith("text/html")
    page = html.text
    assert page.startswith("<!doctype html>")
    # Self-contained: no script, no external stylesheet, image or font.
    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page
    assert "GOVERN 1.4" in page
    for value in values.values():
        assert value not in md.text
        assert value not in page


async def test_bad_windows_and_other_roles_get_problems(client, admin, make_operator) -> None:  # type: ignore[no-untyped-def]
    for query in ("since=forever", "since=400d", "format=pdf"):
        bad = await client.get(f"/v1/compliance/report?{query}", headers=admin)
        assert bad.status_code in (400, 422), bad.text
        assert bad.headers["content-type"].startswith("application/problem+json")
    writer = await make_operator("sam", "secret-writer")
    refused = await client.get("/v1/compliance/report", headers=writer)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    auditor = await make_operator("ada", "auditor")
    assert (await client.get("/v1/compliance/report", headers=auditor)).status_code == 200


async def test_revocations_pushed_to_receivers_are_evidence(client, admin, broker) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_signals import Receiver

    receiver = Receiver()
    try:
        created = await client.post(
            "/v1/ssf/streams",
            json={"delivery": {"endpoint_url": receiver.url}, "events_requested": ["session-revoked"]},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        values = {path: new_canary(path) for path in SECRETS}
        await seed(client, admin, values)
        await _use_a_secret(client, admin, values)
        assert await broker.signals.run_once() == 1
    finally:
        receiver.close()
    body = (await client.get("/v1/compliance/report", headers=admin)).json()
    signals = _metric(body, "revocation_signals")
    assert signals["values"] == {"streams": 1, "delivered": 1, "pending": 0, "failed": 0}
    assert signals["evidence"] is True
