"""A trusted issuer whose keys Tether fetches from its JWKS URL (a real server on loopback)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey

from tether.api import create_app
from tether.broker import Broker
from tether.crypto.jose import sign_jws
from tether.sdk import AsyncAgent, TetherAPIError

pytestmark = pytest.mark.asyncio

BASE = "http://tether.test"
ISSUER = "https://ci.issuer.test"


class JwksServer:
    """Serves one JWKS (or an error) on 127.0.0.1, counting requests."""

    def __init__(self, body: dict[str, Any], status: int = 200) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                data = json.dumps(server.body).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.body, self.status, self.requests = body, status, 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def issuer_key() -> ECKey:
    return ECKey.generate_key("P-256")


@pytest.fixture
def jwks_server(issuer_key: ECKey) -> Iterator[JwksServer]:
    public = {**issuer_key.as_dict(private=False), "kid": "ci-1", "use": "sig", "alg": "ES256"}
    with JwksServer({"keys": [public]}) as server:
        yield server


@pytest.fixture
async def http(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(broker)), base_url=BASE
    ) as client:
        yield client


def ci_token(key: ECKey, sub: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "tether", "sub": sub, "iat": now, "exp": now + 300}
    return sign_jws({"alg": "ES256", "kid": "ci-1", "typ": "JWT"}, claims, key)


async def add_issuer(http: httpx.AsyncClient, admin: dict[str, str], url: str) -> None:
    body = {
        "name": "ci",
        "issuer": ISSUER,
        "audience": "tether",
        "jwks_url": url,
        "subject_pattern": r"repo:acme/(?P<agent>[a-z0-9-]+):ref:refs/heads/main",
    }
    response = await http.post("/v1/auth/issuers", json=body, headers=admin)
    assert response.status_code == 201, response.text
    assert (await http.post("/v1/agents", json={"name": "deployer"}, headers=admin)).status_code == 201


async def test_keys_fetched_from_the_jwks_url_verify_the_exchange(
    http: httpx.AsyncClient, admin: dict[str, str], issuer_key: ECKey, jwks_server: JwksServer
) -> None:
    await add_issuer(http, admin, jwks_server.url)
    token = ci_token(issuer_key, "repo:acme/deployer:ref:refs/heads/main")
    agent = AsyncAgent.federated(BASE, subject_token=lambda: token, http=http)
    assert (await agent.whoami())["name"] == "deployer"
    second = AsyncAgent.federated(BASE, subject_token=lambda: token, http=http)
    await second.whoami()
    assert jwks_server.requests == 1  # cached


async def test_an_unreachable_or_failing_jwks_url_refuses_the_exchange(
    http: httpx.AsyncClient, admin: dict[str, str], issuer_key: ECKey
) -> None:
    with JwksServer({"error": "boom"}, status=500) as failing:
        await add_issuer(http, admin, failing.url)
        token = ci_token(issuer_key, "repo:acme/deployer:ref:refs/heads/main")
        agent = AsyncAgent.federated(BASE, subject_token=lambda: token, http=http)
        with pytest.raises(TetherAPIError) as refused:
            await agent.whoami()
        again = AsyncAgent.federated(BASE, subject_token=lambda: token, http=http)
        with pytest.raises(TetherAPIError):
            await again.whoami()
        assert failing.requests == 1  # the failure is remembered: forged tokens cannot amplify
    assert refused.value.body["error"] == "invalid_grant"
