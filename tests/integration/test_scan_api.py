"""``POST /v1/scan`` on both stores: scanners find governed values in every form they send, by
path and fingerprint, never by value; other roles are refused; a value the caller did not send is
never confirmed; the scan is audited without values; bad input and too many scans are problems."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.security.canaries import find_leaks, new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.broker.scan import ScanLimiter, ScanLimits

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"


async def _put(client: httpx.AsyncClient, admin: dict[str, str], path: str, value: str) -> None:
    response = await client.put(f"/v1/secrets/{path}", json={"value": value}, headers=admin)
    assert response.status_code in (200, 201), response.text


async def _seed(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, str]:
    values = {
        "prod/db/password": new_canary("scan-db") + "/x+y",
        "prod/github/token": new_canary("scan-gh"),
        "prod/unsent/key": new_canary("scan-unsent"),
    }
    for path, value in values.items():
        await _put(client, admin, path, value)
    return values


def _found(body: dict[str, Any]) -> list[tuple[str, int, str, str | None]]:
    return [
        (doc["name"], f["line"], f["kind"], f.get("secret") or f.get("type"))
        for doc in body["documents"]
        for f in doc["findings"]
    ]


async def test_a_scanner_finds_governed_values_in_every_form_by_path_and_fingerprint(  # type: ignore[no-untyped-def]
    client, admin, make_operator, broker: Broker
) -> None:
    values = await _seed(client, admin)
    scanner = await make_operator("scan-bot", "scanner")
    db, gh = values["prod/db/password"], values["prod/github/token"]
    prompt = (
        "Here is the config:\n"
        f"DB_PASSWORD={db}\n"
        f"Authorization: Basic {base64.b64encode(('user:' + gh).encode()).decode()}\n"
        f"dsn=postgres://app:{quote(db, safe='')}@db/app\n"
        f"blob={gh.encode().hex()}\n"
    )
    response = await client.post("/v1/scan", json={"text": prompt}, headers=scanner)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["found"] is True
    assert body["governed"] == 4
    assert body["secrets_scanned"] == 3
    findings = body["documents"][0]["findings"]
    assert [(f["line"], f["secret"], f["encoding"]) for f in findings if f["kind"] == "governed"] == [
        (2, "prod/db/password", "plain"),
        (3, "prod/github/token", "base64"),
        (4, "prod/db/password", "url"),
        (5, "prod/github/token", "hex"),
    ]
    fingerprints = {f["secret"]: f["fingerprint"] for f in findings if f["kind"] == "governed"}
    assert fingerprints["prod/db/password"] == broker.audit.fingerprint(db)
    assert find_leaks(response.text, list(values.values())) == []

    # The scan is audited: counts, paths and fingerprints; never a value.
    events = await client.get("/v1/audit/events", params={"kind": "scan.run"}, headers=admin)
    assert events.status_code == 200, events.text
    (event,) = events.json()["events"]
    assert event["actor"]["id"].endswith("scan-bot")
    data = event["data"]
    assert data["governed_findings"] == 4
    assert data["secrets_found"] == [
        {"secret": "prod/db/password", "fingerprint": fingerprints["prod/db/password"]},
        {"secret": "prod/github/token", "fingerprint": fingerprints["prod/github/token"]},
    ]
    assert find_leaks(events.text, list(values.values())) == []


async def test_a_value_the_caller_did_not_send_is_never_confirmed(client, admin, make_operator) -> None:  # type: ignore[no-untyped-def]
    values = await _seed(client, admin)
    scanner = await make_operator("scan-bot", "scanner")
    unsent = values["prod/unsent/key"]
    near_misses = f"{unsent[:-1]}\n{unsent[1:]}\n{unsent[:10]}\nprod/unsent/key\n"
    response = await client.post("/v1/scan", json={"text": near_misses, "ungoverned": False}, headers=scanner)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["found"] is False
    assert "prod/unsent/key" not in response.text
    assert "fingerprint" not in response.text


async def test_documents_keep_their_names_and_line_offsets_and_ungoverned_secrets_are_named(  # type: ignore[no-untyped-def]
    client, admin, make_operator
) -> None:
    values = await _seed(client, admin)
    scanner = await make_operator("scan-bot", "scanner")
    documents = [
        {"name": "app/.env", "text": "A=1\nAWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n"},
        {"name": "logs/ci.log", "text": f"step\n{values['prod/github/token']}\n", "first_line": 1000},
        {"name": "clean.txt", "text": "nothing to see\n"},
    ]
    response = await client.post("/v1/scan", json={"documents": documents}, headers=scanner)
    assert response.status_code == 200, response.text
    body = response.json()
    assert _found(body) == [
        ("app/.env", 2, "ungoverned", "AWS Access Key"),
        ("logs/ci.log", 1001, "governed", "prod/github/token"),
    ]
    ungoverned = body["documents"][0]["findings"][0]
    assert "put it in Tether" in ungoverned["suggestion"]
    assert "AKIA" not in response.text


@pytest.mark.parametrize("role", ["auditor", "secret-writer", "policy-author", "approver"])
async def test_only_scanners_and_admins_may_scan(client, admin, make_operator, role: str) -> None:  # type: ignore[no-untyped-def]
    values = await _seed(client, admin)
    other = await make_operator(f"op-{role}", role)
    refused = await client.post("/v1/scan", json={"text": values["prod/db/password"]}, headers=other)
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith(PROBLEM)
    assert find_leaks(refused.text, list(values.values())) == []
    allowed = await client.post("/v1/scan", json={"text": values["prod/db/password"]}, headers=admin)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["governed"] == 1
    anonymous = await client.post("/v1/scan", json={"text": "x"})
    assert anonymous.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"text": "a", "documents": [{"name": "x", "text": "b"}]},
        {"documents": []},
        {"documents": [{"name": "", "text": "b"}]},
        {"documents": [{"name": "bad\nname", "text": "b"}]},
        {"documents": [{"name": "x", "text": "b", "first_line": 0}]},
        {"text": "a", "surprise": True},
        {"text": 5},
    ],
)
async def test_bad_scan_requests_are_problems(client, admin, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    response = await client.post("/v1/scan", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_scans_past_the_limit_are_refused_with_retry_after(
    broker: Broker, admin, make_operator
) -> None:  # type: ignore[no-untyped-def]
    app = create_app(broker)
    app.state.scan_limiter = ScanLimiter(ScanLimits(window_seconds=3600, per_operator=2))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://tether.test"
    ) as http:
        created = await http.post(
            "/v1/operators", json={"name": "scan-bot", "role": "scanner"}, headers=admin
        )
        scanner = {"Authorization": f"Bearer {created.json()['token']}"}
        for _ in range(2):
            ok = await http.post("/v1/scan", json={"text": "hello"}, headers=scanner)
            assert ok.status_code == 200, ok.text
        limited = await http.post("/v1/scan", json={"text": "hello"}, headers=scanner)
        assert limited.status_code == 429, limited.text
        assert limited.headers["content-type"].startswith(PROBLEM)
        assert int(limited.headers["retry-after"]) >= 1
        assert "too many scans" in limited.json()["detail"]
        other = await http.post("/v1/scan", json={"text": "hello"}, headers=admin)
        assert other.status_code == 200  # the limit is per operator


async def test_too_much_text_is_refused(client, admin) -> None:  # type: ignore[no-untyped-def]
    documents = [{"name": f"d{i}", "text": "x" * 300_000} for i in range(4)]
    response = await client.post("/v1/scan", json={"documents": documents}, headers=admin)
    assert response.status_code in (413, 422), response.text
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_a_sealed_node_does_not_scan(client, admin) -> None:  # type: ignore[no-untyped-def]
    sealed = await client.post("/v1/sys/seal", headers=admin)
    assert sealed.status_code in (200, 204), sealed.text
    response = await client.post("/v1/scan", json={"text": "hello"}, headers=admin)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)


async def test_findings_are_capped_per_document_and_per_scan(client, admin) -> None:  # type: ignore[no-untyped-def]
    value = new_canary("scan-many")
    await _put(client, admin, "prod/many", value)
    many = "\n".join([value] * 1500)
    documents = [{"name": f"d{i}", "text": many} for i in range(12)]
    response = await client.post(
        "/v1/scan", json={"documents": documents, "ungoverned": False}, headers=admin
    )
    assert response.status_code == 200, response.text
    body = response.json()
    counts = [len(doc["findings"]) for doc in body["documents"]]
    assert counts == [1000] * 10 + [0, 0]
    assert all(doc["truncated"] for doc in body["documents"])
    assert find_leaks(response.text, [value]) == []


async def test_text_with_lone_surrogates_is_a_problem_not_a_server_error(client, admin) -> None:  # type: ignore[no-untyped-def]
    body = b'{"text": "\\ud800 text \\udfff"}'
    headers = {**admin, "content-type": "application/json"}
    response = await client.post("/v1/scan", content=body, headers=headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
