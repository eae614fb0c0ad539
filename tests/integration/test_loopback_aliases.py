"""A Tether whose public URL is a loopback address answers agents that name it by another
loopback name (``localhost`` for ``127.0.0.1`` and back, ``[::1]``) with the same scheme, port and
path; any other URL is refused, and the refusal says which URL this Tether serves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tether.api import create_app
from tether.api.routes_auth import _loopback_alias, _loopback_public_url
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent, TetherAPIError


async def _node(tmp_path: Path, public_url: str) -> tuple[Broker, str]:
    tmp_path.mkdir()
    broker = Broker.from_settings(Settings(data_dir=tmp_path, public_url=public_url))
    return broker, (await broker.init()).root_token


@pytest.fixture
async def agent_for(tmp_path: Path) -> AsyncIterator[object]:
    """``agent_for(public_url, agent_base_url)``: an agent registered on a node with that public
    URL, talking to it in process under the base URL it was given."""
    brokers: list[Broker] = []
    clients: list[httpx.AsyncClient] = []

    async def make(public_url: str, base_url: str) -> AsyncAgent:
        broker, root = await _node(tmp_path / str(len(brokers)), public_url)
        brokers.append(broker)
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(broker)), base_url=base_url)
        clients.append(http)
        private = generate_private_jwk()
        public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
        attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": []}
        response = await http.post(
            "/v1/agents",
            json={"name": "ci", "public_key": public, "attributes": attributes},
            headers={"Authorization": f"Bearer {root}"},
        )
        assert response.status_code == 201, response.text
        return AsyncAgent(base_url, response.json()["id"], private, http=http)

    yield make
    for http in clients:
        await http.aclose()
    for broker in brokers:
        await broker.close()


@pytest.mark.parametrize(
    ("public_url", "base_url"),
    [
        ("http://127.0.0.1:8420", "http://localhost:8420"),
        ("http://127.0.0.1:8420", "http://[::1]:8420"),
        ("http://localhost:8420", "http://127.0.0.1:8420"),
        ("http://[::1]:8420/", "http://LOCALHOST:8420"),
        ("http://127.0.0.1:8420", "http://127.0.0.1:8420"),
        ("https://tether.acme.test", "https://TETHER.acme.test:443"),
    ],
)
async def test_agent_naming_a_loopback_alias_of_the_public_url_authenticates(
    agent_for, public_url: str, base_url: str
) -> None:
    agent = await agent_for(public_url, base_url)
    assert (await agent.whoami())["name"] == "ci"


@pytest.mark.parametrize(
    ("public_url", "base_url"),
    [
        ("http://127.0.0.1:8420", "http://localhost:8421"),  # another port
        ("http://127.0.0.1:8420", "https://localhost:8420"),  # another scheme
        ("http://127.0.0.1:8420", "http://tether.test:8420"),  # not a loopback name
        ("https://tether.acme.test", "https://localhost"),  # the public URL is not loopback: exact
        ("https://tether.acme.test", "https://10.0.0.5"),
    ],
)
async def test_any_other_url_is_refused_and_the_refusal_says_which_url_to_use(
    agent_for, public_url: str, base_url: str
) -> None:
    agent = await agent_for(public_url, base_url)
    with pytest.raises(TetherAPIError) as refused:
        await agent.whoami()
    assert refused.value.status == 400
    assert refused.value.body["error"] == "invalid_dpop_proof"
    served = public_url.rstrip("/")
    assert str(refused.value) == (
        f"HTTP 400: DPoP proof was made for another URL: this Tether serves {served}; give agents "
        "that URL (or set TETHER_PUBLIC_URL / public_url to the URL agents use)"
    )


async def test_a_resource_request_signed_for_another_url_is_refused_with_the_hint(agent_for) -> None:
    agent = await agent_for("http://127.0.0.1:8420", "http://localhost:8420")
    await agent.token()
    url = "http://localhost:8420/v1/auth/whoami"
    headers = agent._session.signed_headers(
        "GET", "http://localhost:8421/v1/auth/whoami", await agent.token()
    )
    response = await agent._http.get(url, headers=headers)
    assert response.status_code == 401
    assert response.json()["detail"].startswith(
        "invalid_dpop_proof: DPoP proof was made for another URL: this Tether serves http://127.0.0.1:8420"
    )


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "localhost:8420@evil.test",
        "localhost:abc",
        "localhost:8420/x",
        "localhost.evil.test:8420",
        "127.0.0.2:8420",
        "localhost:8421",
        "localhost",  # port 80, not 8420
    ],
)
def test_only_a_loopback_name_with_the_same_port_is_an_alias(host: str | None) -> None:
    public = _loopback_public_url("http://127.0.0.1:8420")
    assert public is not None
    assert _loopback_alias(public, host) is None


def test_loopback_alias_spells_the_public_url_with_the_requests_name() -> None:
    public = _loopback_public_url("http://127.0.0.1:8420/tether/")
    assert public is not None
    assert _loopback_alias(public, "localhost:8420") == "http://localhost:8420/tether"
    assert _loopback_alias(public, "[::1]:8420") == "http://[::1]:8420/tether"
    assert _loopback_public_url("https://tether.acme.test") is None
    assert _loopback_public_url("http://127.0.0.1.nip.io:8420") is None
