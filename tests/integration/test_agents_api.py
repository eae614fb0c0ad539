"""The agent registry and trusted-issuer API against a real broker: lifecycle, bad input, roles, audit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from joserfc.jwk import OctKey, RSAKey

from tether.broker import Broker
from tether.crypto.jose import generate_private_jwk
from tether.domain.agents import MAX_ACTIVE_KEYS
from tether.errors import AuthenticationError

pytestmark = pytest.mark.asyncio

PROBLEM = "application/problem+json"
Headers = dict[str, str]


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:tether:problem:{slug}"
    return body


def public_jwk(kind: str = "Ed25519") -> dict[str, str]:
    return {k: v for k, v in generate_private_jwk(kind).items() if k not in {"d", "kid"}}


async def register(client: httpx.AsyncClient, headers: Headers, name: str, **body: Any) -> httpx.Response:
    body.setdefault("public_key", public_jwk())
    return await client.post("/v1/agents", json={"name": name, **body}, headers=headers)


def issuer_body(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "ci",
        "issuer": "https://token.ci.example",
        "audience": "tether",
        "jwks": {"keys": [{**public_jwk("P-256"), "kid": "ci-1", "alg": "ES256"}]},
        "subject_pattern": r"repo:acme/(?P<agent>[a-z0-9-]+):.*",
    }
    body.update(kw)
    return body


async def kinds(broker: Broker, prefix: str) -> list[tuple[str, str | None, str]]:
    events = await broker.storage.read_audit_events(limit=1000, kind=prefix)
    return [(e.kind, e.resource, e.reason) for e in events]


# -- lifecycle -----------------------------------------------------------------------------------


async def test_agent_lifecycle_register_show_list_rotate_disable(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    jwk = public_jwk()
    created = await register(
        client,
        admin,
        "deploy-bot",
        public_key=jwk,
        attributes={"team": "platform", "environment": "prod", "owner": "alice", "labels": ["ci", "deploy"]},
    )
    assert created.status_code == 201, created.text
    agent = created.json()
    td = broker.settings.trust_domain
    assert agent["id"] == f"spiffe://{td}/agent/deploy-bot"
    assert agent["trust_domain"] == td
    assert agent["attributes"] == {
        "team": "platform",
        "environment": "prod",
        "owner": "alice",
        "labels": ["ci", "deploy"],
    }
    assert agent["created_by"] == "root"
    assert agent["disabled_at"] is None
    [key] = agent["keys"]
    assert key["jwk"] == jwk
    assert key["removed_at"] is None
    old_kid = key["kid"]

    shown = await client.get("/v1/agents/deploy-bot", headers=admin)
    assert shown.status_code == 200
    assert shown.json() == agent

    rotated = await client.post(
        "/v1/agents/deploy-bot/keys", json={"public_key": public_jwk("P-256")}, headers=admin
    )
    assert rotated.status_code == 201, rotated.text
    assert len(rotated.json()["keys"]) == 2
    new_kid = rotated.json()["keys"][1]["kid"]

    removed = await client.delete(f"/v1/agents/deploy-bot/keys/{old_kid}", headers=admin)
    assert removed.status_code == 204
    keys = (await client.get("/v1/agents/deploy-bot", headers=admin)).json()["keys"]
    assert [(k["kid"], k["removed_at"] is None) for k in keys] == [(old_kid, False), (new_kid, True)]

    assert (await broker.agents.active_agent(agent["id"])).name == "deploy-bot"
    disabled = await client.post("/v1/agents/deploy-bot/disable", headers=admin)
    assert disabled.status_code == 200
    assert disabled.json()["disabled_at"] is not None
    with pytest.raises(AuthenticationError) as exc:
        await broker.agents.active_agent(agent["id"])
    assert exc.value.code == "invalid_client"
    assert_problem(await client.post("/v1/agents/deploy-bot/disable", headers=admin), 409, "conflict")

    listed = (await client.get("/v1/agents", headers=admin)).json()
    assert [a["name"] for a in listed["agents"]] == ["deploy-bot"]
    assert listed["next_after"] is None


async def test_agent_without_key_is_federated_only(client: httpx.AsyncClient, admin: Headers) -> None:
    response = await client.post("/v1/agents", json={"name": "fed"}, headers=admin)
    assert response.status_code == 201, response.text
    assert response.json()["keys"] == []
    assert response.json()["attributes"] == {"team": "", "environment": "", "owner": "", "labels": []}


async def test_agent_list_pages(client: httpx.AsyncClient, admin: Headers) -> None:
    for name in ["c", "a", "b"]:
        assert (await register(client, admin, name)).status_code == 201
    first = (await client.get("/v1/agents", params={"limit": 2}, headers=admin)).json()
    assert [a["name"] for a in first["agents"]] == ["a", "b"]
    assert first["next_after"] == "b"
    rest = (await client.get("/v1/agents", params={"after": "b"}, headers=admin)).json()
    assert [a["name"] for a in rest["agents"]] == ["c"]
    assert rest["next_after"] is None


async def test_unknown_agent_is_404(client: httpx.AsyncClient, admin: Headers, broker: Broker) -> None:
    assert_problem(await client.get("/v1/agents/ghost", headers=admin), 404, "not-found")
    assert_problem(await client.post("/v1/agents/ghost/disable", headers=admin), 404, "not-found")
    assert_problem(
        await client.post("/v1/agents/ghost/keys", json={"public_key": public_jwk()}, headers=admin),
        404,
        "not-found",
    )
    with pytest.raises(AuthenticationError):
        await broker.agents.active_agent("spiffe://other.test/agent/ghost")


async def test_service_accepts_the_agent_id_in_place_of_the_name(
    client: httpx.AsyncClient, admin: Headers, broker: Broker
) -> None:
    agent = (await register(client, admin, "bot")).json()
    root = await broker.operators.authenticate(admin["Authorization"].split(" ", 1)[1])
    assert (await broker.agents.show(root, agent["id"])).name == "bot"


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Bot", "-bot", "a" * 64, "bot bot", "bøt", ""])
async def test_bad_agent_names_are_refused(client: httpx.AsyncClient, admin: Headers, name: str) -> None:
    assert_problem(await register(client, admin, name), 422, "invalid-input")


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (generate_private_jwk(), "private"),
        (RSAKey.generate_key(2048).as_dict(private=False), "unsupported"),
        (OctKey.generate_key(256).as_dict(private=True), "private"),
        ({"kty": "oct", "alg": "HS256"}, "unsupported"),
        ({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}, "unsupported"),
        ({"kty": "OKP", "crv": "Ed25519", "x": "not-a-key"}, "malformed"),
    ],
)
async def test_bad_public_keys_are_refused(
    client: httpx.AsyncClient, admin: Headers, key: dict[str, Any], why: str
) -> None:
    body = assert_problem(await register(client, admin, "bot", public_key=key), 422, "invalid-input")
    assert why in body["detail"]
    assert_problem(await client.get("/v1/agents/bot", headers=admin), 404, "not-found")


async def test_unknown_fields_are_refused(client: httpx.AsyncClient, admin: Headers) -> None:
    assert_problem(await register(client, admin, "bot", extra=1), 422, "invalid-input")
    assert_problem(await register(client, admin, "bot", attributes={"tier": "x"}), 422, "invalid-input")
    assert_problem(
        await client.post("/v1/auth/issuers", json=issuer_body(extra=1), headers=admin), 422, "invalid-input"
    )


async def test_bad_attributes_are_refused(client: httpx.AsyncClient, admin: Headers) -> None:
    assert_problem(
        await register(client, admin, "bot", attributes={"labels": ["Not Lower"]}), 422, "invalid-input"
    )
    assert_problem(await register(client, admin, "bot", attributes={"team": "x" * 129}), 422, "invalid-input")


async def test_duplicate_agent_name_is_409(client: httpx.AsyncClient, admin: Headers) -> None:
    assert (await register(client, admin, "bot")).status_code == 201
    assert_problem(await register(client, admin, "bot"), 409, "conflict")


async def test_too_many_keys_and_duplicate_key_are_409(client: httpx.AsyncClient, admin: Headers) -> None:
    jwk = public_jwk()
    assert (await register(client, admin, "bot", public_key=jwk)).status_code == 201
    assert_problem(
        await client.post("/v1/agents/bot/keys", json={"public_key": jwk}, headers=admin), 409, "conflict"
    )
    for _ in range(MAX_ACTIVE_KEYS - 1):
        response = await client.post("/v1/agents/bot/keys", json={"public_key": public_jwk()}, headers=admin)
        assert response.status_code == 201
    assert_problem(
        await client.post("/v1/agents/bot/keys", json={"public_key": public_jwk()}, headers=admin),
        409,
        "conflict",
    )


async def test_removing_the_last_key_is_409_and_unknown_kid_404(
    client: httpx.AsyncClient, admin: Headers
) -> None:
    kid = (await register(client, admin, "bot")).json()["keys"][0]["kid"]
    assert_problem(await client.delete(f"/v1/agents/bot/keys/{kid}", headers=admin), 409, "conflict")
    assert_problem(await client.delete("/v1/agents/bot/keys/nope", headers=admin), 404, "not-found")
    assert len((await client.get("/v1/agents/bot", headers=admin)).json()["keys"]) == 1


# -- trusted issuers -----------------------------------------------------------------------------


async def test_issuer_lifecycle(client: httpx.AsyncClient, admin: Headers, broker: Broker) -> None:
    body = issuer_body()
    created = await client.post("/v1/auth/issuers", json=body, headers=admin)
    assert created.status_code == 201, created.text
    out = created.json()
    assert out["jwks"] == body["jwks"]
    assert out["subject_claim"] == "sub"
    assert out["created_by"] == "root"
    by_url = issuer_body(
        name="k8s", issuer="https://k8s.example", jwks=None, jwks_url="https://k8s.example/openid/v1/jwks"
    )
    assert (await client.post("/v1/auth/issuers", json=by_url, headers=admin)).status_code == 201

    listed = (await client.get("/v1/auth/issuers", headers=admin)).json()["issuers"]
    assert [i["name"] for i in listed] == ["ci", "k8s"]
    trusted = await broker.issuers.trusted("https://token.ci.example")
    assert trusted is not None
    assert trusted.agent_name_for({"sub": "repo:acme/deploy-bot:ref"}) == "deploy-bot"

    assert (await client.delete("/v1/auth/issuers/ci", headers=admin)).status_code == 204
    assert_problem(await client.delete("/v1/auth/issuers/ci", headers=admin), 404, "not-found")
    assert await broker.issuers.trusted("https://token.ci.example") is None


@pytest.mark.parametrize(
    "changes",
    [
        {"subject_pattern": "repo:(?P<name>.*)"},
        {"subject_pattern": "(?P<agent>"},
        {"jwks_url": "https://keys.example/jwks"},
        {"jwks": None},
        {"issuer": "http://token.ci.example"},
        {"jwks": {"keys": [generate_private_jwk()]}},
        {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]}},
        {"jwks": None, "jwks_url": "http://keys.example/jwks"},
        {"name": "Bad Name"},
    ],
)
async def test_bad_issuers_are_refused(
    client: httpx.AsyncClient, admin: Headers, changes: dict[str, Any]
) -> None:
    assert_problem(
        await client.post("/v1/auth/issuers", json=issuer_body(**changes), headers=admin),
        422,
        "invalid-input",
    )
    assert (await client.get("/v1/auth/issuers", headers=admin)).json()["issuers"] == []


async def test_duplicate_issuer_is_409(client: httpx.AsyncClient, admin: Headers) -> None:
    assert (await client.post("/v1/auth/issuers", json=issuer_body(), headers=admin)).status_code == 201
    assert_problem(
        await client.post("/v1/auth/issuers", json=issuer_body(name="ci2"), headers=admin), 409, "conflict"
    )


# -- roles ---------------------------------------------------------------------------------------


async def test_secret_writer_can_neither_read_nor_write_agents(
    client: httpx.AsyncClient, admin: Headers, make_operator: Any
) -> None:
    writer = await make_operator("sw", "secret-writer")
    assert (await register(client, admin, "bot")).status_code == 201
    assert_problem(await register(client, writer, "bot2"), 403, "forbidden")
    assert_problem(await client.get("/v1/agents", headers=writer), 403, "forbidden")
    assert_problem(await client.get("/v1/agents/bot", headers=writer), 403, "forbidden")
    assert_problem(await client.post("/v1/agents/bot/disable", headers=writer), 403, "forbidden")
    assert_problem(
        await client.post("/v1/auth/issuers", json=issuer_body(), headers=writer), 403, "forbidden"
    )
    assert_problem(await client.get("/v1/auth/issuers", headers=writer), 403, "forbidden")


async def test_auditor_can_list_and_show_but_not_write(
    client: httpx.AsyncClient, admin: Headers, make_operator: Any
) -> None:
    auditor = await make_operator("aud", "auditor")
    kid = (await register(client, admin, "bot")).json()["keys"][0]["kid"]
    assert (await client.post("/v1/auth/issuers", json=issuer_body(), headers=admin)).status_code == 201

    assert (await client.get("/v1/agents", headers=auditor)).status_code == 200
    assert (await client.get("/v1/agents/bot", headers=auditor)).status_code == 200
    assert (await client.get("/v1/auth/issuers", headers=auditor)).status_code == 200
    assert_problem(await register(client, auditor, "bot2"), 403, "forbidden")
    assert_problem(await client.post("/v1/agents/bot/disable", headers=auditor), 403, "forbidden")
    assert_problem(
        await client.post("/v1/agents/bot/keys", json={"public_key": public_jwk()}, headers=auditor),
        403,
        "forbidden",
    )
    assert_problem(await client.delete(f"/v1/agents/bot/keys/{kid}", headers=auditor), 403, "forbidden")
    assert_problem(
        await client.post(
            "/v1/auth/issuers", json=issuer_body(name="x", issuer="https://x.example"), headers=auditor
        ),
        403,
        "forbidden",
    )
    assert_problem(await client.delete("/v1/auth/issuers/ci", headers=auditor), 403, "forbidden")
    assert (await client.get("/v1/agents/bot", headers=admin)).json()["disabled_at"] is None


async def test_unauthenticated_requests_are_401(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/agents"), 401, "unauthenticated")
    assert_problem(await client.post("/v1/agents", json={"name": "bot"}), 401, "unauthenticated")
    assert_problem(await client.get("/v1/auth/issuers"), 401, "unauthenticated")


# -- audit ---------------------------------------------------------------------------------------


async def test_every_change_is_audited_and_failures_leave_a_failure_event(
    client: httpx.AsyncClient, admin: Headers, broker: Broker, make_operator: Any
) -> None:
    agent = (await register(client, admin, "bot")).json()
    resource = f"agent:{agent['id']}"
    kid = (await client.post("/v1/agents/bot/keys", json={"public_key": public_jwk()}, headers=admin)).json()[
        "keys"
    ][1]["kid"]
    await client.delete(f"/v1/agents/bot/keys/{kid}", headers=admin)
    await client.post("/v1/agents/bot/disable", headers=admin)
    await register(client, admin, "bot")  # duplicate: requested, then failed
    await client.post("/v1/auth/issuers", json=issuer_body(), headers=admin)
    await client.delete("/v1/auth/issuers/ci", headers=admin)
    auditor = await make_operator("aud", "auditor")
    await register(client, auditor, "denied")

    assert await kinds(broker, "agent.*") == [
        ("agent.register", resource, ""),
        ("agent.key_add", resource, ""),
        ("agent.key_remove", resource, ""),
        ("agent.disable", resource, ""),
        ("agent.register", resource, ""),
        ("agent.register", resource, "failed: ConflictError"),
    ]
    assert await kinds(broker, "issuer.*") == [
        ("issuer.add", "issuer:ci", ""),
        ("issuer.remove", "issuer:ci", ""),
    ]
    denials = await broker.storage.read_audit_events(limit=100, kind="decision", allowed=False)
    assert [e.resource for e in denials] == [f"agent:spiffe://{broker.settings.trust_domain}/agent/denied"]
    [registered] = await broker.storage.read_audit_events(limit=1, kind="agent.register")
    assert list(registered.data["kids"]) == [agent["keys"][0]["kid"]]
    assert registered.actor.id == "root"
