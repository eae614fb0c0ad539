"""The destinations API against a real broker: lifecycle, validation (problem+json), conflicts,
who may administer destinations, and the audit trail."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.security.canaries import new_canary
from tether.broker import Broker

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"
Headers = dict[str, str]


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:tether:problem:{slug}"
    return body


def body(**kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": "github",
        "base_url": "https://api.github.com",
        "secret": "prod/github/token",
        "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
    }
    result.update(kw)
    return result


async def write_secret(client: httpx.AsyncClient, headers: Headers, path: str = "prod/github/token") -> str:
    value = new_canary("destination-secret")
    response = await client.put(f"/v1/secrets/{path}", json={"value": value}, headers=headers)
    assert response.status_code in {200, 201}, response.text
    return value


async def add(client: httpx.AsyncClient, headers: Headers, **kw: Any) -> httpx.Response:
    return await client.post("/v1/destinations", json=body(**kw), headers=headers)


# -- lifecycle -----------------------------------------------------------------------------------


async def test_destination_lifecycle_add_show_list_remove(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    await write_secret(client, admin)
    created = await add(
        client,
        admin,
        base_url="https://API.github.com:443/v3",
        methods=["POST", "GET"],
        path_prefixes=["/repos", "/user/"],
        timeout_seconds=10,
        max_body_bytes=4096,
        max_response_bytes=65536,
    )
    assert created.status_code == 201, created.text
    destination = created.json()
    assert destination == {
        "name": "github",
        "base_url": "https://api.github.com/v3/",
        "host": "api.github.com",
        "secret": "prod/github/token",
        "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
        "methods": ["GET", "POST"],
        "path_prefixes": ["/repos", "/user/"],
        "timeout_seconds": 10,
        "max_body_bytes": 4096,
        "max_response_bytes": 65536,
        "created_at": destination["created_at"],
        "created_by": "root",
    }

    shown = await client.get("/v1/destinations/github", headers=admin)
    assert shown.status_code == 200
    assert shown.json() == destination
    listed = await client.get("/v1/destinations", headers=admin)
    assert listed.json() == {"destinations": [destination]}

    removed = await client.delete("/v1/destinations/github", headers=admin)
    assert removed.status_code == 204
    assert removed.content == b""
    assert_problem(await client.get("/v1/destinations/github", headers=admin), 404, "not-found")
    assert (await client.get("/v1/destinations", headers=admin)).json() == {"destinations": []}
    assert await broker.storage.get_destination("github") is None


async def test_defaults_apply_when_only_required_fields_are_given(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    await write_secret(client, admin)
    created = await add(client, admin, inject={"type": "header", "name": "X-Api-Key"})
    assert created.status_code == 201, created.text
    result = created.json()
    assert result["inject"] == {"type": "header", "name": "X-Api-Key", "template": "{secret}"}
    assert result["methods"] == ["GET"]
    assert result["path_prefixes"] == ["/"]
    assert (result["timeout_seconds"], result["max_body_bytes"], result["max_response_bytes"]) == (
        30,
        1024 * 1024,
        8 * 1024 * 1024,
    )


async def test_basic_and_query_injections_are_accepted(client: httpx.AsyncClient, admin: Headers) -> None:
    await write_secret(client, admin)
    basic = await add(client, admin, name="jira", inject={"type": "basic", "name": "bot@acme.test"})
    assert basic.status_code == 201, basic.text
    assert basic.json()["inject"] == {"type": "basic", "name": "bot@acme.test", "template": None}
    query = await add(
        client, admin, name="maps", inject={"type": "query", "name": "key", "template": "{secret}"}
    )
    assert query.status_code == 201, query.text
    names = [d["name"] for d in (await client.get("/v1/destinations", headers=admin)).json()["destinations"]]
    assert names == ["jira", "maps"]


async def test_loopback_http_destination_is_accepted(client: httpx.AsyncClient, admin: Headers) -> None:
    await write_secret(client, admin)
    created = await add(client, admin, name="mock", base_url="http://127.0.0.1:8080/api")
    assert created.status_code == 201, created.text
    assert created.json()["base_url"] == "http://127.0.0.1:8080/api/"
    assert created.json()["host"] == "127.0.0.1"


# -- refusals --------------------------------------------------------------------------------------


async def test_unknown_secret_is_404_and_nothing_is_stored(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    problem = assert_problem(await add(client, admin, secret="prod/nope"), 404, "not-found")
    assert "prod/nope" in problem["detail"]
    assert await broker.storage.list_destinations() == []


async def test_deleted_secret_cannot_be_wired_to_a_destination(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    await write_secret(client, admin)
    assert (await client.delete("/v1/secrets/prod/github/token", headers=admin)).status_code in {200, 204}
    assert_problem(await add(client, admin), 404, "not-found")


async def test_taken_name_is_409_and_the_first_destination_stays(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    await write_secret(client, admin)
    assert (await add(client, admin)).status_code == 201
    assert_problem(await add(client, admin, base_url="https://elsewhere.example"), 409, "conflict")
    shown = (await client.get("/v1/destinations/github", headers=admin)).json()
    assert shown["base_url"] == "https://api.github.com/"


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"base_url": "http://api.github.com"}, "https"),
        ({"base_url": "https://user:pw@api.github.com"}, "credentials"),
        ({"base_url": "https://api.github.com/?x=1"}, "query"),
        ({"base_url": "https://api.github.com/#f"}, "fragment"),
        ({"inject": {"type": "header", "name": "Authorization", "template": "Bearer token"}}, "{secret}"),
        ({"inject": {"type": "header", "name": "Host", "template": "{secret}"}}, "Host"),
        ({"inject": {"type": "header", "name": "Content-Length", "template": "{secret}"}}, "Content-Length"),
        ({"inject": {"type": "header", "name": "Transfer-Encoding", "template": "{secret}"}}, "Transfer"),
        ({"inject": {"type": "header", "name": "Connection", "template": "{secret}"}}, "hop-by-hop"),
        ({"inject": {"type": "header", "name": "X Key", "template": "{secret}"}}, "header name"),
        ({"inject": {"type": "basic", "name": "bot", "template": "x {secret}"}}, "no template"),
        ({"inject": {"type": "query", "name": "a&b", "template": "{secret}"}}, "query parameter"),
        ({"methods": ["CONNECT"]}, "CONNECT"),
        ({"methods": ["get"]}, "get"),
        ({"path_prefixes": ["repos"]}, "start with '/'"),
        ({"path_prefixes": ["/a/../b"]}, "'..'"),
        ({"name": "GitHub"}, "destination name"),
        ({"secret": "../etc/passwd"}, "secret path"),
    ],
)
async def test_invalid_destination_is_422_problem_json(
    client: httpx.AsyncClient, admin: Headers, broker: Broker, overrides: dict[str, Any], fragment: str
) -> None:
    await write_secret(client, admin)
    problem = assert_problem(await add(client, admin, **overrides), 422, "invalid-input")
    assert fragment in problem["detail"], problem
    assert await broker.storage.list_destinations() == []


@pytest.mark.parametrize(
    "payload",
    [
        body(extra="field"),
        body(inject={"type": "header", "name": "X-Key", "template": "{secret}", "extra": 1}),
        body(inject={"type": "cookie", "name": "sid"}),
        body(timeout_seconds=0),
        body(timeout_seconds=301),
        body(max_body_bytes=64 * 1024 * 1024 + 1),
        body(max_response_bytes=0),
        body(methods=[]),
        body(path_prefixes=[]),
        {k: v for k, v in body().items() if k != "inject"},
        {k: v for k, v in body().items() if k != "secret"},
        body(timeout_seconds="30"),
    ],
)
async def test_malformed_body_is_422_and_unknown_fields_are_refused(
    client: httpx.AsyncClient, admin: Headers, payload: dict[str, Any]
) -> None:
    await write_secret(client, admin)
    response = await client.post("/v1/destinations", json=payload, headers=admin)
    assert_problem(response, 422, "invalid-input")


async def test_unknown_destination_is_404_for_show_and_remove(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    assert_problem(await client.get("/v1/destinations/nope", headers=admin), 404, "not-found")
    assert_problem(await client.delete("/v1/destinations/nope", headers=admin), 404, "not-found")


async def test_invalid_name_in_path_is_422(client: httpx.AsyncClient, admin: Headers) -> None:
    assert_problem(await client.get("/v1/destinations/Not-Valid", headers=admin), 422, "invalid-input")
    assert_problem(await client.delete("/v1/destinations/a%20b", headers=admin), 422, "invalid-input")


# -- who may -----------------------------------------------------------------------------------------


async def test_secret_writer_adds_and_removes_auditor_only_reads(
    client: httpx.AsyncClient, admin: Headers, make_operator: Any
) -> None:
    writer = await make_operator("writer", "secret-writer")
    auditor = await make_operator("aud", "auditor")
    await write_secret(client, writer)
    created = await add(client, writer)
    assert created.status_code == 201, created.text
    assert created.json()["created_by"] == "writer"
    assert (await client.get("/v1/destinations/github", headers=auditor)).status_code == 200
    assert len((await client.get("/v1/destinations", headers=auditor)).json()["destinations"]) == 1
    assert_problem(await add(client, auditor, name="other"), 403, "forbidden")
    assert_problem(await client.delete("/v1/destinations/github", headers=auditor), 403, "forbidden")
    assert (await client.delete("/v1/destinations/github", headers=writer)).status_code == 204


@pytest.mark.parametrize("role", ["approver", "policy-author"])
async def test_roles_without_destination_permissions_get_403(
    client: httpx.AsyncClient, admin: Headers, make_operator: Any, broker: Broker, role: str
) -> None:
    await write_secret(client, admin)
    assert (await add(client, admin)).status_code == 201
    other = await make_operator("someone", role)
    assert_problem(await add(client, other, name="other"), 403, "forbidden")
    assert_problem(await client.get("/v1/destinations", headers=other), 403, "forbidden")
    assert_problem(await client.get("/v1/destinations/github", headers=other), 403, "forbidden")
    assert_problem(await client.delete("/v1/destinations/github", headers=other), 403, "forbidden")
    assert [d.name for d in await broker.storage.list_destinations()] == ["github"]


async def test_refused_caller_learns_nothing_about_secrets(
    client: httpx.AsyncClient, admin: Headers, make_operator: Any
) -> None:
    """An approver is refused the same way whether or not the secret exists."""
    approver = await make_operator("appr", "approver")
    await write_secret(client, admin)
    exists = assert_problem(await add(client, approver), 403, "forbidden")
    missing = assert_problem(
        await add(client, approver, name="other", secret="prod/missing"), 403, "forbidden"
    )
    assert exists["title"] == missing["title"]


async def test_unauthenticated_requests_are_401(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/destinations"), 401, "unauthenticated")
    assert_problem(await client.post("/v1/destinations", json=body()), 401, "unauthenticated")
    assert_problem(await client.get("/v1/destinations/github"), 401, "unauthenticated")
    assert_problem(await client.delete("/v1/destinations/github"), 401, "unauthenticated")


# -- audit -------------------------------------------------------------------------------------------


async def test_changes_and_refusals_are_audited_without_the_secret_value(
    client: httpx.AsyncClient, admin: Headers, broker: Broker, make_operator: Any
) -> None:
    value = await write_secret(client, admin)
    await add(client, admin)
    await add(client, admin)  # taken: refused before anything is requested
    await client.delete("/v1/destinations/github", headers=admin)
    approver = await make_operator("appr", "approver")
    await add(client, approver, name="denied")

    events = await broker.storage.read_audit_events(limit=100, kind="destination.*")
    assert [(e.kind, e.resource, e.actor.id, e.reason) for e in events] == [
        ("destination.add", "destination:github", "root", ""),
        ("destination.remove", "destination:github", "root", ""),
    ]
    added = events[0].data
    assert added["base_url"] == "https://api.github.com/"
    assert added["host"] == "api.github.com"
    assert added["secret"] == "prod/github/token"
    assert added["inject"] == {"type": "header", "name": "Authorization", "template": "Bearer {secret}"}
    assert list(added["methods"]) == ["GET"]
    assert dict(events[1].data) == {"base_url": "https://api.github.com/", "secret": "prod/github/token"}

    denials = await broker.storage.read_audit_events(limit=100, kind="decision", allowed=False)
    assert [(e.actor.id, e.resource) for e in denials] == [("appr", "destination:denied")]
    assert list(denials[0].decision.missing) == ["permission:destination.write"]  # type: ignore[union-attr]

    everything = await broker.storage.read_audit_events(limit=1000)
    assert not any(value in repr(e) for e in everything)
