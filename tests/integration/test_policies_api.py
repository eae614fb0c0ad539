"""The policy API against a real broker: deploy, validation errors, versions, rollback, roles, audit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tether.broker import Broker

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"
Headers = dict[str, str]

ALLOW_OPEN = '@id("open-anything")\npermit(principal, action == Action::"open_task", resource);\n'
DENY_PROD = (
    '@id("no-prod")\nforbid(principal, action == Action::"issue", resource)\n'
    'when { principal.environment == "prod" };\n'
)
INVALID = '@id("bad")\npermit(principal, action == Action::"no_such_action", resource);\n'


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:tether:problem:{slug}"
    return body


async def deploy(client: httpx.AsyncClient, headers: Headers, text: str, **kw: Any) -> httpx.Response:
    return await client.put("/v1/policies", json={"policies": text, **kw}, headers=headers)


async def policy_events(broker: Broker) -> list[tuple[str, str, dict[str, Any]]]:
    events = await broker.storage.read_audit_events(limit=1000, kind="policy.*")
    return [(e.kind, e.reason, dict(e.data)) for e in events]


async def test_deploy_show_versions_rollback(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    missing = await client.get("/v1/policies", headers=admin)
    assert_problem(missing, 404, "not-found")

    first = await deploy(client, admin, ALLOW_OPEN, comment="first")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["version"] == 1
    assert body["policy_ids"] == ["open-anything"]
    assert len(body["sha256"]) == 64
    assert body["created_by"] == "root"
    assert body["comment"] == "first"
    assert body["active"] is True

    second = await deploy(client, admin, ALLOW_OPEN + DENY_PROD)
    assert second.status_code == 201, second.text
    assert second.json()["version"] == 2
    assert second.json()["policy_ids"] == ["open-anything", "no-prod"]

    active = (await client.get("/v1/policies", headers=admin)).json()
    assert active["version"] == 2
    assert active["policies"] == ALLOW_OPEN + DENY_PROD

    one = await client.get("/v1/policies/1", headers=admin)
    assert one.status_code == 200
    assert one.json()["policies"] == ALLOW_OPEN
    assert one.json()["active"] is False
    assert_problem(await client.get("/v1/policies/9", headers=admin), 404, "not-found")

    versions = (await client.get("/v1/policies/versions", headers=admin)).json()
    assert versions["active_version"] == 2
    assert [v["version"] for v in versions["versions"]] == [2, 1]
    assert [v["active"] for v in versions["versions"]] == [True, False]
    page = (await client.get("/v1/policies/versions?limit=1", headers=admin)).json()
    assert [v["version"] for v in page["versions"]] == [2]
    assert page["next_after"] == 2
    rest = (await client.get("/v1/policies/versions?limit=1&after=2", headers=admin)).json()
    assert [v["version"] for v in rest["versions"]] == [1]
    assert rest["next_after"] is None

    rolled = await client.post("/v1/policies/rollback", json={"version": 1}, headers=admin)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["version"] == 1
    assert (await client.get("/v1/policies", headers=admin)).json()["version"] == 1
    compiled = await broker.policies.active()
    assert compiled is not None
    assert list(compiled.policy_ids) == ["open-anything"]
    assert_problem(
        await client.post("/v1/policies/rollback", json={"version": 5}, headers=admin), 404, "not-found"
    )

    third = await deploy(client, admin, DENY_PROD)
    assert third.json()["version"] == 3

    events = await policy_events(broker)
    deploys = [e for e in events if e[0] == "policy.deploy"]
    assert [e[1] for e in deploys] == ["first", "", "rollback to 1", ""]
    assert list(deploys[0][2]["policy_ids"]) == ["open-anything"]
    assert deploys[0][2]["sha256"] == body["sha256"]
    assert deploys[2][2]["version"] == 1


async def test_invalid_set_is_422_with_the_validators_messages(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    response = await deploy(client, admin, INVALID)
    problem = assert_problem(response, 422, "invalid-input")
    assert problem["errors"]
    assert all(isinstance(e["message"], str) and e["message"] for e in problem["errors"])
    assert "no_such_action" in " ".join(e["message"] for e in problem["errors"])
    # Nothing stored, nothing audited as deployed.
    assert await broker.storage.active_policy_set() is None
    assert await broker.storage.list_policy_sets() == []
    assert await policy_events(broker) == []

    syntax = await deploy(client, admin, "permit(principal, action, resource")
    assert assert_problem(syntax, 422, "invalid-input")["errors"]


async def test_validate_endpoint(client: httpx.AsyncClient, admin: Headers, broker: Broker) -> None:
    good = await client.post("/v1/policies/validate", json={"policies": ALLOW_OPEN}, headers=admin)
    assert good.status_code == 200, good.text
    assert good.json()["valid"] is True
    assert good.json()["policy_ids"] == ["open-anything"]
    bad = await client.post("/v1/policies/validate", json={"policies": INVALID}, headers=admin)
    assert assert_problem(bad, 422, "invalid-input")["errors"]
    assert await broker.storage.list_policy_sets() == []


async def test_bad_requests(client: httpx.AsyncClient, admin: Headers) -> None:
    assert_problem(
        await client.put("/v1/policies", json={"policies": ALLOW_OPEN, "extra": 1}, headers=admin),
        422,
        "invalid-input",
    )
    assert_problem(await client.put("/v1/policies", json={}, headers=admin), 422, "invalid-input")
    assert_problem(
        await client.post("/v1/policies/rollback", json={"version": 0}, headers=admin), 422, "invalid-input"
    )
    assert_problem(await client.get("/v1/policies"), 401, "unauthenticated")


async def test_roles(client: httpx.AsyncClient, admin: Headers, broker: Broker, make_operator: Any) -> None:
    author = await make_operator("pa", "policy-author")
    writer = await make_operator("sw", "secret-writer")
    auditor = await make_operator("aud", "auditor")

    assert (await deploy(client, author, ALLOW_OPEN)).status_code == 201
    assert_problem(await deploy(client, writer, ALLOW_OPEN), 403, "forbidden")
    assert_problem(await deploy(client, auditor, ALLOW_OPEN), 403, "forbidden")
    assert_problem(await client.get("/v1/policies", headers=writer), 403, "forbidden")
    assert_problem(
        await client.post("/v1/policies/rollback", json={"version": 1}, headers=auditor), 403, "forbidden"
    )

    assert (await client.get("/v1/policies", headers=auditor)).status_code == 200
    assert (await client.get("/v1/policies/versions", headers=auditor)).status_code == 200
    assert (await client.get("/v1/policies/1", headers=auditor)).status_code == 200
    checked = await client.post("/v1/policies/validate", json={"policies": ALLOW_OPEN}, headers=auditor)
    assert checked.status_code == 200

    denials = await broker.storage.read_audit_events(limit=1000, kind="decision", allowed=False)
    assert {(e.actor.id, e.resource) for e in denials} >= {("sw", "policy:set"), ("aud", "policy:set")}
    # Only the author's deploy happened.
    assert [v.created_by for v in await broker.storage.list_policy_sets()] == ["pa"]


async def test_a_large_set_deploys_and_its_audit_event_stays_small(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    text = "".join(
        f'@id("open-policy-number-{i:04d}")\n'
        f'permit(principal, action == Action::"open_task", resource == Agent::"a{i}");\n'
        for i in range(1000)
    )
    response = await deploy(client, admin, text)
    assert response.status_code == 201, response.text
    assert len(response.json()["policy_ids"]) == 1000
    (event,) = await policy_events(broker)
    assert event[2]["policy_count"] == 1000
    assert event[2]["policy_ids_truncated"] is True
    assert 0 < len(event[2]["policy_ids"]) < 1000
    assert event[2]["sha256"] == response.json()["sha256"]
