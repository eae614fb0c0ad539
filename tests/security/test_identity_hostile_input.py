"""Hostile shapes of otherwise plausible credentials: each is a clean, audited refusal — never a
500, never a 422 from the wrong layer — and the server URL agents sign comes from configuration."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tether.api import create_app
from tether.api.server import with_public_url
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk, private_key_from_jwk, sign_jws
from tether.errors import ConfigError
from tether.sdk import AsyncAgent
from tether.sdk._signer import ASSERTION_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE, Signer

BASE = "http://tether.test"
TOKEN_URL = BASE + "/v1/auth/token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def deeply_nested(levels: int = 3000) -> str:
    return b64(b'{"x":' + b"[" * levels + b"]" * levels + b"}")


@pytest.fixture
async def http(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(broker)), base_url=BASE
    ) as client:
        yield client


async def register(http: httpx.AsyncClient, admin: dict[str, str], name: str) -> tuple[str, dict[str, str]]:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    response = await http.post("/v1/agents", json={"name": name, "public_key": public}, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()["id"], private


async def refusals(http: httpx.AsyncClient, admin: dict[str, str], kind: str) -> int:
    events = (await http.get("/v1/audit/events", params={"kind": kind}, headers=admin)).json()["events"]
    return sum(1 for e in events if e.get("reason", "").startswith("refused"))


@pytest.mark.parametrize("where", ["proof header", "assertion claims", "token header"])
async def test_deeply_nested_json_is_refused_not_a_server_error(
    http: httpx.AsyncClient, admin: dict[str, str], where: str
) -> None:
    hostile = f"{deeply_nested()}.{b64(b'{}')}.{b64(b'sig')}"
    if where == "proof header":
        response = await http.post(
            "/v1/auth/token", data={"grant_type": "client_credentials"}, headers={"DPoP": hostile}
        )
        kind = "auth.token"
    elif where == "assertion claims":
        signer = Signer(generate_private_jwk())
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": f"{b64(b'{}')}.{deeply_nested()}.{b64(b'sig')}",
        }
        response = await http.post(
            "/v1/auth/token", data=form, headers={"DPoP": signer.proof("POST", TOKEN_URL, int(time.time()))}
        )
        kind = "auth.token"
    else:
        response = await http.get(
            "/v1/auth/whoami", headers={"Authorization": f"DPoP {hostile}", "DPoP": hostile}
        )
        kind = "auth.failed"
    assert response.status_code in (400, 401), response.text
    assert await refusals(http, admin, kind) == 1


@pytest.mark.parametrize("iss", ["a\u0000b", "\ud800", "https://issuer.test/\u00e9", " spaced "])
async def test_unprintable_federated_issuer_is_an_invalid_grant(
    http: httpx.AsyncClient, admin: dict[str, str], iss: str
) -> None:
    key, _ = private_key_from_jwk(generate_private_jwk())
    claims = json.dumps({"iss": iss, "sub": "x", "aud": "tether", "exp": int(time.time()) + 60}).encode(
        "utf-8", "surrogatepass"
    )
    token = f"{b64(json.dumps({'alg': 'Ed25519'}).encode())}.{b64(claims)}.{b64(b'sig')}"
    signer = Signer(generate_private_jwk())
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": JWT_TOKEN_TYPE}
    response = await http.post(
        "/v1/auth/token", data=form, headers={"DPoP": signer.proof("POST", TOKEN_URL, int(time.time()))}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"
    del key


async def test_an_assertion_inside_the_clock_leeway_is_accepted_once(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    agent_id, private = await register(http, admin, "leeway")
    key, public = private_key_from_jwk(private)
    signer = Signer(private)
    now = int(time.time())
    assertion = sign_jws(
        {"alg": "Ed25519", "kid": public.kid},
        {
            "iss": agent_id,
            "sub": agent_id,
            "aud": TOKEN_URL,
            "iat": now - 30,
            "exp": now - 2,
            "jti": "late-1",
        },
        key,
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    first = await http.post(
        "/v1/auth/token", data=form, headers={"DPoP": signer.proof("POST", TOKEN_URL, now)}
    )
    assert first.status_code == 200, first.text
    again = await http.post(
        "/v1/auth/token", data=form, headers={"DPoP": signer.proof("POST", TOKEN_URL, now)}
    )
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"


async def test_percent_encoded_paths_are_signed_as_sent(
    http: httpx.AsyncClient, admin: dict[str, str]
) -> None:
    agent_id, private = await register(http, admin, "encoded")
    agent = AsyncAgent(BASE, agent_id, private, http=http)
    response = await agent.request("GET", "/v1/auth/%77hoami")
    assert response.status_code == 200, response.text
    assert (response.json()["id"], response.json()["name"]) == (agent_id, "encoded")


def test_the_signed_server_url_comes_from_configuration(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert with_public_url(settings, "127.0.0.1", 8420).public_url == "http://127.0.0.1:8420"
    assert with_public_url(settings, "::1", 8420).public_url == "http://[::1]:8420"
    with pytest.raises(ConfigError, match="public_url"):
        with_public_url(settings, "0.0.0.0", 8420)
    configured = settings.with_overrides(public_url="https://tether.example.com")
    assert with_public_url(configured, "0.0.0.0", 8420).public_url == "https://tether.example.com"
