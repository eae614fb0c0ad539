"""Refused token requests are limited per claimed client id and per source address (429 with
Retry-After), with one summary audit event per limit and window instead of one per refusal; an
accepted request is never limited by refusals made in its name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.canaries import SCAN
from tether.api import create_app
from tether.broker import Broker
from tether.clock import FrozenClock
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent

BASE = "http://tether.test"
ATTACKER = ("203.0.113.7", 40000)


@pytest.fixture
async def limited(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    settings = Settings(
        data_dir=tmp_path,
        auth_refusal_window_seconds=600,
        auth_refusals_per_client=3,
        auth_refusals_per_address=4,
    )
    # Frozen at the real time (DPoP proofs carry it): the window cannot end during the test.
    node = Broker.from_settings(settings, clock=FrozenClock(datetime.now(UTC)))
    node.root_token = (await node.init()).root_token  # type: ignore[attr-defined]
    yield node
    await SCAN.check_store(node, request.node.nodeid)
    await node.close()


def _client(broker: Broker, address: tuple[str, int]) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(broker), client=address)
    return httpx.AsyncClient(transport=transport, base_url=BASE)


async def _agent(http: httpx.AsyncClient, broker: Broker, name: str) -> tuple[str, dict[str, str]]:
    key = generate_private_jwk()
    public = {k: v for k, v in key.items() if k in {"kty", "crv", "x"}}
    admin = {"Authorization": f"Bearer {broker.root_token}"}  # type: ignore[attr-defined]
    response = await http.post("/v1/agents", json={"name": name, "public_key": public}, headers=admin)
    assert response.status_code == 201, response.text
    return response.json()["id"], key


async def _token(http: httpx.AsyncClient, agent_id: str, key: dict[str, str]) -> httpx.Response:
    form, headers = AsyncAgent(BASE, agent_id, key, http=http)._session.token_request()
    return await http.post("/v1/auth/token", data=form, headers=headers)


async def _token_events(http: httpx.AsyncClient, broker: Broker) -> list[dict[str, Any]]:
    admin = {"Authorization": f"Bearer {broker.root_token}"}  # type: ignore[attr-defined]
    response = await http.get("/v1/audit/events", params={"kind": "auth.token"}, headers=admin)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def _assert_429(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 600
    body = response.json()
    assert body["type"].endswith("rate-limited")
    assert body["status"] == 429
    assert body["error"] == "slow_down"


async def test_refusals_in_a_clients_name_are_limited_but_the_client_is_not_locked_out(
    limited: Broker,
) -> None:
    async with _client(limited, ("198.51.100.20", 1)) as owner, _client(limited, ATTACKER) as attacker:
        agent_id, key = await _agent(owner, limited, "victim")
        wrong_key = generate_private_jwk()
        # Different addresses each time, so only the client limit (3) applies.
        for i in range(3):
            async with _client(limited, (f"198.51.100.{100 + i}", 1)) as other:
                refused = await _token(other, agent_id, wrong_key)
                assert refused.status_code == 401, refused.text
        _assert_429(await _token(attacker, agent_id, wrong_key))
        _assert_429(await _token(attacker, agent_id, wrong_key))
        accepted = await _token(owner, agent_id, key)  # the real agent still gets its token
        assert accepted.status_code == 200, accepted.text
        events = await _token_events(owner, limited)
    refusals = [e for e in events if e["reason"].startswith("refused")]
    summaries = [e for e in events if e["reason"].startswith("rate limited")]
    assert len(refusals) == 3  # the 429s were not audited one by one
    assert len(summaries) == 1
    assert summaries[0]["data"]["limit"] == "client"
    assert summaries[0]["data"]["key"] == agent_id
    assert summaries[0]["data"]["refusals"] == 3
    assert summaries[0]["data"]["window_seconds"] == 600
    assert [e["actor"]["id"] for e in events if not e["reason"].startswith(("refused", "rate"))] == [agent_id]


async def test_an_address_over_its_limit_is_answered_429_before_any_work(limited: Broker) -> None:
    async with _client(limited, ATTACKER) as attacker, _client(limited, ("198.51.100.20", 1)) as owner:
        agent_id, key = await _agent(owner, limited, "builder")
        for i in range(4):  # malformed bodies and unknown clients: counted per address
            if i % 2:
                refused = await attacker.post("/v1/auth/token", content=b"{}")
            else:
                refused = await _token(
                    attacker, f"spiffe://tether.local/agent/nobody-{i}", generate_private_jwk()
                )
            assert refused.status_code in (400, 401), refused.text
        _assert_429(await _token(attacker, agent_id, key))  # even a good request, from this address
        _assert_429(await attacker.post("/v1/auth/token", content=b"{}"))
        assert (await _token(owner, agent_id, key)).status_code == 200  # other addresses are not affected
        events = await _token_events(owner, limited)
    summaries = [e for e in events if e["reason"].startswith("rate limited")]
    assert [(s["data"]["limit"], s["data"]["key"]) for s in summaries] == [("address", ATTACKER[0])]
    assert len([e for e in events if e["reason"].startswith("refused")]) == 4


async def test_loopback_callers_are_not_limited_per_address(limited: Broker) -> None:
    async with _client(limited, ("127.0.0.1", 1)) as local:
        agent_id, key = await _agent(local, limited, "local")
        for _ in range(6):
            assert (await local.post("/v1/auth/token", content=b"{}")).status_code == 400
        assert (await _token(local, agent_id, key)).status_code == 200
