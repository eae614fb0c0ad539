"""An agent proves what it is with its key and calls Tether with DPoP-bound tokens (the SDK
against the real app)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tether.api import create_app
from tether.broker import Broker
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent, TetherAPIError
from tether.store import open_storage

pytestmark = pytest.mark.asyncio

BASE = "http://tether.test"


@pytest.fixture
async def http(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(broker))
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


async def register(http: httpx.AsyncClient, admin: dict[str, str], name: str) -> tuple[str, dict[str, str]]:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    response = await http.post(
        "/v1/agents",
        json={"name": name, "public_key": public, "attributes": {"team": "ci", "labels": ["build"]}},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], private


async def test_agent_authenticates_with_its_key_and_dpop(
    http: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    agent_id, key = await register(http, admin, "builder")
    agent = AsyncAgent(BASE, agent_id, key, http=http)
    me = await agent.whoami()
    assert me["id"] == agent_id == f"spiffe://{broker.settings.trust_domain}/agent/builder"
    assert me["attributes"]["team"] == "ci"
    assert me["attributes"]["labels"] == ["build"]
    assert (await agent.whoami())["id"] == agent_id  # the cached token, a new proof
    issued = (await http.get("/v1/audit/events", params={"kind": "auth.token"}, headers=admin)).json()[
        "events"
    ]
    assert [e["actor"]["id"] for e in issued] == [agent_id]
    assert (await agent.token()) not in str(issued)


async def test_disabled_agent_is_refused_on_its_next_request(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    agent_id, key = await register(http, admin, "short-lived")
    agent = AsyncAgent(BASE, agent_id, key, http=http)
    await agent.whoami()
    assert (await http.post("/v1/agents/short-lived/disable", headers=admin)).status_code == 200
    with pytest.raises(TetherAPIError) as refused:
        await agent.whoami()
    assert refused.value.status == 401


async def test_jwks_is_public_and_verifies_nothing_private(http: httpx.AsyncClient) -> None:
    body = (await http.get("/v1/auth/jwks")).json()
    assert body["keys"]
    for key in body["keys"]:
        assert key["alg"] == "Ed25519"
        assert "d" not in key


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "invalid_client"),
    ],
)
async def test_token_endpoint_answers_oauth_errors(
    http: httpx.AsyncClient, admin: dict[str, str], form: dict[str, str], code: str
) -> None:
    agent_id, key = await register(http, admin, "form-tester")
    agent = AsyncAgent(BASE, agent_id, key, http=http)
    _, headers = agent._session.token_request()  # a valid DPoP proof, wrong grant
    response = await http.post("/v1/auth/token", data=form, headers=headers)
    body: dict[str, Any] = response.json()
    assert body["error"] == code
    assert response.status_code in (400, 401)
    assert response.headers["cache-control"] == "no-store"


async def test_token_request_without_dpop_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/auth/token", data={"grant_type": "client_credentials"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_dpop_proof"


async def test_token_key_rotation_reaches_other_nodes_and_keeps_old_tokens(
    http: httpx.AsyncClient, admin: dict[str, str], broker: Broker
) -> None:
    agent_id, key = await register(http, admin, "rotating")
    old_agent = AsyncAgent(BASE, agent_id, key, http=http)
    await old_agent.whoami()
    other = Broker(
        broker.settings, open_storage(broker.settings.database_url, pg_schema=broker.settings.pg_schema)
    )
    await other.start(migrate=False)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(other)), base_url=BASE
        ) as node_b:
            rotated = await http.post("/v1/sys/token-keys/rotate", headers=admin)
            assert rotated.status_code == 200
            new_agent = AsyncAgent(BASE, agent_id, key, http=http)
            await new_agent.token()
            on_b = AsyncAgent(BASE, agent_id, key, http=node_b)
            on_b._session.token = new_agent._session.token  # a token node A signed with the new key
            assert (await on_b.whoami())["id"] == agent_id
            assert (await old_agent.whoami())["id"] == agent_id  # the previous key still verifies
            jwks = (await http.get("/v1/auth/jwks")).json()["keys"]
            assert rotated.json()["kid"] in {k["kid"] for k in jwks}
            assert len(jwks) == 2
    finally:
        await other.close()


async def test_removing_a_key_stops_the_tokens_it_obtained(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    agent_id, old_key = await register(http, admin, "rekeyed")
    old = AsyncAgent(BASE, agent_id, old_key, http=http)
    await old.whoami()
    new_key = generate_private_jwk()
    public = {k: v for k, v in new_key.items() if k in {"kty", "crv", "x"}}
    assert (
        await http.post("/v1/agents/rekeyed/keys", json={"public_key": public}, headers=admin)
    ).status_code == 201
    new = AsyncAgent(BASE, agent_id, new_key, http=http)
    assert (await new.whoami())["id"] == agent_id  # overlap: both keys work
    assert (await old.whoami())["id"] == agent_id
    removed = await http.delete(f"/v1/agents/rekeyed/keys/{old_key['kid']}", headers=admin)
    assert removed.status_code == 204
    with pytest.raises(TetherAPIError) as refused:
        await old.whoami()  # its cached token is bound to the removed key
    assert refused.value.status == 401
    assert (await new.whoami())["id"] == agent_id


async def test_a_refusal_never_names_an_unverified_agent_as_actor(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    victim_id, _ = await register(http, admin, "victim")
    attacker_key = generate_private_jwk()
    forged = AsyncAgent(BASE, victim_id, attacker_key, http=http)  # claims to be the victim
    with pytest.raises(TetherAPIError):
        await forged.whoami()
    refusals = (await http.get("/v1/audit/events", params={"kind": "auth.token"}, headers=admin)).json()[
        "events"
    ]
    assert refusals
    assert all(e["actor"]["type"] == "system" for e in refusals)
    assert refusals[-1]["data"]["claimed_agent"] == victim_id
