"""The HTTP API against a real broker on SQLite: contract, roles, bad input, seal, keys."""

from __future__ import annotations

import asyncio
import base64
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.security.canaries import new_canary
from tether.broker import Broker
from tether.errors import DecryptionError

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:tether:problem:{slug}"
    assert body["status"] == status
    assert body["title"]
    return body


def canary() -> str:
    return new_canary("api")


async def put(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, value: str, **meta: Any
) -> httpx.Response:
    return await client.put(f"/v1/secrets/{path}", json={"value": value, **meta}, headers=headers)


# -- health and documents ---------------------------------------------------------------


async def test_health_is_public_and_reports_seal_state(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/sys/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["sealed"] is False
    assert body["storage"] in {"sqlite", "postgresql"}
    assert body["storage_ok"] is True


async def test_openapi_document_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/v1/secrets/{path}" in paths
    assert "/v1/sys/health" in paths


async def test_unknown_route_and_method_are_problems(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nope"), 404, "not-found")
    assert_problem(await client.patch("/v1/sys/health"), 405, "method-not-allowed")


# -- operator authentication ----------------------------------------------------------------


async def test_missing_token_is_401_with_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/secrets")
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-token",
        "Bearer tto_" + "A" * 43,  # well-formed, unknown
    ],
)
async def test_bad_or_unknown_token_is_401(client: httpx.AsyncClient, header: str) -> None:
    assert_problem(await client.get("/v1/secrets", headers={"Authorization": header}), 401, "unauthenticated")


async def test_revoked_operator_token_stops_working_at_once(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any
) -> None:
    writer = await make_operator("writer", "secret-writer")
    assert (await client.get("/v1/secrets", headers=writer)).status_code == 200
    revoked = await client.post("/v1/operators/writer/revoke", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert_problem(await client.get("/v1/secrets", headers=writer), 401, "unauthenticated")


async def test_last_admin_cannot_be_revoked(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    assert_problem(await client.post("/v1/operators/root/revoke", headers=admin), 409, "conflict")


async def test_operator_token_is_shown_once_and_never_listed(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    created = await client.post("/v1/operators", json={"name": "alice", "role": "auditor"}, headers=admin)
    assert created.status_code == 201
    token = created.json()["token"]
    listed = await client.get("/v1/operators", headers=admin)
    assert listed.status_code == 200
    assert token not in listed.text
    assert {op["name"] for op in listed.json()["operators"]} == {"root", "alice"}
    me = await client.get("/v1/operators/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["role"] == "auditor"
    assert token not in me.text


async def test_duplicate_operator_name_is_409(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    body = {"name": "bob", "role": "approver"}
    assert (await client.post("/v1/operators", json=body, headers=admin)).status_code == 201
    assert_problem(await client.post("/v1/operators", json=body, headers=admin), 409, "conflict")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Bad Name", "role": "admin"},
        {"name": "ok", "role": "superuser"},
        {"name": "ok"},
        {"name": "ok", "role": "admin", "extra": True},
    ],
)
async def test_bad_operator_requests_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]
) -> None:
    assert_problem(await client.post("/v1/operators", json=body, headers=admin), 422, "invalid-input")


# -- separation of duties -------------------------------------------------------------------


async def test_roles_are_separated(
    client: httpx.AsyncClient, admin: dict[str, str], make_operator: Any
) -> None:
    writer = await make_operator("writer", "secret-writer")
    auditor = await make_operator("auditor", "auditor")
    approver = await make_operator("approver", "approver")
    author = await make_operator("author", "policy-author")
    value = canary()
    assert (await put(client, writer, "team/db/password", value)).status_code == 201
    # Writers read metadata but never manage operators, seal, rotate keys or read metrics.
    assert (await client.get("/v1/secrets/team/db/password", headers=writer)).status_code == 200
    assert_problem(
        await client.post("/v1/operators", json={"name": "x", "role": "admin"}, headers=writer),
        403,
        "forbidden",
    )
    assert_problem(await client.post("/v1/sys/seal", headers=writer), 403, "forbidden")
    assert_problem(await client.post("/v1/sys/keys/rotate", headers=writer), 403, "forbidden")
    assert_problem(await client.get("/metrics", headers=writer), 403, "forbidden")
    # Auditors read metadata and metrics, never write.
    assert (await client.get("/v1/secrets/team/db/password", headers=auditor)).status_code == 200
    assert (await client.get("/metrics", headers=auditor)).status_code == 200
    assert_problem(await put(client, auditor, "team/db/password", canary()), 403, "forbidden")
    assert_problem(await client.delete("/v1/secrets/team/db/password", headers=auditor), 403, "forbidden")
    # Approvers and policy authors see no secrets at all.
    for other in (approver, author):
        assert_problem(await client.get("/v1/secrets/team/db/password", headers=other), 403, "forbidden")
        assert_problem(await client.get("/v1/secrets", headers=other), 403, "forbidden")
        assert_problem(await put(client, other, "team/db/password", canary()), 403, "forbidden")


# -- secrets ---------------------------------------------------------------------------------


async def test_secret_value_is_write_only(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    value = canary()
    created = await put(
        client,
        admin,
        "prod/github/token",
        value,
        sensitivity="restricted",
        purposes=["ci"],
        destinations=["github"],
    )
    assert created.status_code == 201
    shown = await client.get("/v1/secrets/prod/github/token", headers=admin)
    listed = await client.get("/v1/secrets", headers=admin)
    for response in (created, shown, listed):
        assert value not in response.text
        assert "value" not in response.text
    body = shown.json()
    assert body["sensitivity"] == "restricted"
    assert body["purposes"] == ["ci"]
    assert body["destinations"] == ["github"]
    assert [v["version"] for v in body["versions"]] == [1]


async def test_put_adds_versions_and_replaces_metadata(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    assert (await put(client, admin, "a/b", canary(), purposes=["ci"])).status_code == 201
    second = await put(client, admin, "a/b", canary(), sensitivity="internal")
    assert second.status_code == 200
    assert second.json()["current_version"] == 2
    assert second.json()["purposes"] == []
    assert second.json()["sensitivity"] == "internal"


async def test_rotate_keeps_metadata_and_adds_a_version(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await put(client, admin, "svc/key", canary(), purposes=["deploy"], owner="team-a")
    new_value = canary()
    rotated = await client.post("/v1/secrets/svc/key:rotate", json={"value": new_value}, headers=admin)
    assert rotated.status_code == 200
    assert rotated.json()["current_version"] == 2
    assert rotated.json()["purposes"] == ["deploy"]
    assert rotated.json()["owner"] == "team-a"
    assert new_value not in rotated.text
    version, plaintext = await broker.secrets.read_value("svc/key")
    assert (version, plaintext) == (2, new_value.encode())


async def test_rotate_of_missing_secret_is_404_and_bare_post_is_405(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    assert_problem(
        await client.post("/v1/secrets/no/such:rotate", json={"value": "x"}, headers=admin), 404, "not-found"
    )
    assert_problem(
        await client.post("/v1/secrets/no/such", json={"value": "x"}, headers=admin),
        405,
        "method-not-allowed",
    )


async def test_check_and_set(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    assert (await put(client, admin, "cas/s", canary(), cas=0)).status_code == 201
    assert_problem(await put(client, admin, "cas/s", canary(), cas=0), 409, "conflict")
    assert_problem(await put(client, admin, "cas/s", canary(), cas=5), 409, "conflict")
    assert (await put(client, admin, "cas/s", canary(), cas=1)).json()["current_version"] == 2


async def test_concurrent_writes_are_all_kept_as_versions(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    values = [canary() for _ in range(16)]
    responses = await asyncio.gather(*(put(client, admin, "race/s", v) for v in values))
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses]
    shown = (await client.get("/v1/secrets/race/s", headers=admin)).json()
    assert [v["version"] for v in shown["versions"]] == list(range(1, 17))
    stored = {(await broker.secrets.read_value("race/s", n))[1].decode() for n in range(1, 17)}
    assert stored == set(values)


async def test_concurrent_cas_writes_have_one_winner(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await put(client, admin, "race/cas", canary())
    responses = await asyncio.gather(*(put(client, admin, "race/cas", canary(), cas=1) for _ in range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1
    assert statuses.count(409) == 7


async def test_delete_is_soft_and_a_new_write_revives(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await put(client, admin, "old/key", canary())
    assert (await client.delete("/v1/secrets/old/key", headers=admin)).status_code == 204
    assert_problem(await client.get("/v1/secrets/old/key", headers=admin), 404, "not-found")
    assert_problem(await client.delete("/v1/secrets/old/key", headers=admin), 404, "not-found")
    assert (await client.get("/v1/secrets", headers=admin)).json()["secrets"] == []
    revived = await put(client, admin, "old/key", canary())
    assert revived.json()["current_version"] == 2
    assert await broker.storage.get_secret("old/key") is not None


async def test_list_by_prefix_with_pages(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    for name in ("p/a", "p/b", "p/c", "q/a", "p_x/a"):
        await put(client, admin, name, canary())
    first = (await client.get("/v1/secrets", params={"prefix": "p/", "limit": 2}, headers=admin)).json()
    assert [s["path"] for s in first["secrets"]] == ["p/a", "p/b"]
    assert first["next_after"] == "p/b"
    second = (
        await client.get("/v1/secrets", params={"prefix": "p/", "limit": 2, "after": "p/b"}, headers=admin)
    ).json()
    assert [s["path"] for s in second["secrets"]] == ["p/c"]
    assert second["next_after"] is None


@pytest.mark.parametrize(
    "path",
    [
        "a/%2e%2e/b",
        "a/%2e/b",
        "a%2F%2Fb",
        "a/.hidden",
        "a/-rf",
        "a/b%20c",
        "a/%C3%A9",
        "x" * 257,
        "/".join("a" * 17),
    ],
)
async def test_malformed_paths_are_422(client: httpx.AsyncClient, admin: dict[str, str], path: str) -> None:
    response = await client.put(f"/v1/secrets/{path}", json={"value": "v"}, headers=admin)
    assert_problem(response, 422, "invalid-input")
    assert_problem(await client.get(f"/v1/secrets/{path}", headers=admin), 422, "invalid-input")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"value": ""},
        {"value": 12},
        {"value": "v", "sensitivity": "top-secret"},
        {"value": "v", "purposes": ["Not A Name"]},
        {"value": "v", "destinations": ["ok", "../x"]},
        {"value": "v", "rotation_period_seconds": 1},
        {"value": "v", "cas": -1},
        {"value": "v", "unknown": 1},
    ],
)
async def test_bad_secret_bodies_are_422(
    client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, Any]
) -> None:
    assert_problem(await client.put("/v1/secrets/ok/path", json=body, headers=admin), 422, "invalid-input")


async def test_validation_errors_never_echo_the_value(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    value = canary()
    response = await client.put(
        "/v1/secrets/ok/path", json={"value": value, "sensitivity": "nope", "bogus": value}, headers=admin
    )
    assert_problem(response, 422, "invalid-input")
    assert value not in response.text


async def test_oversized_value_is_422_and_oversized_body_is_413(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    too_big = "x" * (64 * 1024 + 1)
    body = assert_problem(await put(client, admin, "big/one", too_big), 422, "invalid-input")
    assert "65536" in body["detail"]
    huge = "x" * (1024 * 1024 + 10)
    assert_problem(await put(client, admin, "big/two", huge), 413, "payload-too-large")
    assert_problem(await client.get("/v1/secrets/big/one", headers=admin), 404, "not-found")


async def test_malformed_json_is_422(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.put(
        "/v1/secrets/ok/path", content=b"{not json", headers={**admin, "content-type": "application/json"}
    )
    assert_problem(response, 422, "invalid-input")


# -- seal, unseal, keys ------------------------------------------------------------------------


async def test_sealed_node_answers_503_for_every_secret_operation(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await put(client, admin, "s/one", canary())
    assert (await client.post("/v1/sys/seal", headers=admin)).json() == {"sealed": True}
    health = (await client.get("/v1/sys/health")).json()
    assert health["sealed"] is True
    assert health["status"] == "sealed"
    requests = [
        client.put("/v1/secrets/s/one", json={"value": "v"}, headers=admin),
        client.post("/v1/secrets/s/one:rotate", json={"value": "v"}, headers=admin),
        client.get("/v1/secrets/s/one", headers=admin),
        client.get("/v1/secrets", headers=admin),
        client.delete("/v1/secrets/s/one", headers=admin),
        client.post("/v1/sys/keys/rotate", headers=admin),
    ]
    for response in await asyncio.gather(*requests):
        assert_problem(response, 503, "sealed")
    assert (await client.post("/v1/sys/unseal", headers=admin)).json() == {"sealed": False}
    assert (await client.get("/v1/secrets/s/one", headers=admin)).status_code == 200


async def test_unseal_with_a_wrong_key_fails_clearly_and_stays_sealed(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await client.post("/v1/sys/seal", headers=admin)
    wrong = base64.b64encode(secrets.token_bytes(32)).decode()
    assert_problem(
        await client.post("/v1/sys/unseal", json={"root_key": wrong}, headers=admin), 400, "unseal-failed"
    )
    assert_problem(
        await client.post("/v1/sys/unseal", json={"root_key": "not base64!"}, headers=admin),
        422,
        "invalid-input",
    )
    assert_problem(
        await client.post(
            "/v1/sys/unseal", json={"root_key": base64.b64encode(b"short").decode()}, headers=admin
        ),
        422,
        "invalid-input",
    )
    assert broker.keys.sealed
    right = (broker.settings.data_dir / "dev-root.key").read_text().strip()
    assert (await client.post("/v1/sys/unseal", json={"root_key": right}, headers=admin)).status_code == 200


async def test_key_rotation_rewraps_without_changing_values(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    values = {f"k/{n}": canary() for n in range(5)}
    for path, value in values.items():
        await put(client, admin, path, value)
    rotated = await client.post("/v1/sys/keys/rotate", headers=admin)
    assert rotated.status_code == 200
    assert rotated.json() == {"kek_version": 2, "rewrapped": 5}
    status = (await client.get("/v1/sys/keys", headers=admin)).json()
    assert status["active"] == 2
    assert [v["version"] for v in status["versions"]] == [1, 2]
    shown = (await client.get("/v1/secrets/k/0", headers=admin)).json()
    assert shown["versions"][0]["kek_version"] == 2
    for path, value in values.items():
        assert (await broker.secrets.read_value(path))[1] == value.encode()
    assert await broker.storage.values_wrapped_below(2, limit=10) == []


async def test_corrupted_ciphertext_is_a_clear_error_never_garbage(
    client: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    await put(client, admin, "c/one", canary())
    engine = broker.storage._engine  # type: ignore[attr-defined]  # white-box: corrupt the row
    async with engine.begin() as conn:
        row = (await conn.execute(text("SELECT ciphertext FROM secret_versions WHERE path='c/one'"))).one()
        corrupted = bytearray(row[0])
        corrupted[-1] ^= 0x01
        await conn.execute(
            text("UPDATE secret_versions SET ciphertext=:c WHERE path='c/one'"), {"c": bytes(corrupted)}
        )
    with pytest.raises(DecryptionError):
        await broker.secrets.read_value("c/one")


async def test_metrics_count_requests_by_route_template(
    client: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    await put(client, admin, "m/secret-path-name", canary())
    response = await client.get("/metrics", headers=admin)
    assert response.status_code == 200
    assert 'route="/v1/secrets/{path:path}"' in response.text
    assert "secret-path-name" not in response.text
    assert "tether_secret_writes_total" in response.text


async def test_malformed_json_names_the_body(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.put(
        "/v1/secrets/ok/path", content=b'{"value": ', headers={**admin, "content-type": "application/json"}
    )
    body = assert_problem(response, 422, "invalid-input")
    assert body["errors"][0]["field"] == "body"


async def test_non_numeric_content_length_is_400(client: httpx.AsyncClient, admin: dict[str, str]) -> None:
    response = await client.put(
        "/v1/secrets/ok/path",
        content=b'{"value": "v"}',
        headers={**admin, "content-type": "application/json", "content-length": "abc"},
    )
    assert_problem(response, 400, "bad-request")
