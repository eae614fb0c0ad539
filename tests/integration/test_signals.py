"""Shared Signals (SSF / CAEP): a real receiver on loopback gets SETs pushed over HTTP (RFC 8935) and
verifies each with Tether's published JWKS; a receiver that is down gets retries with backoff and the
delivery log says so; stream registration refuses what it must; no SET carries a secret value."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import KeySet

from tests.integration.governed import SECRETS, register_agent, seed
from tests.security.canaries import find_leaks, new_canary
from tether.broker.signals import Transmitter
from tether.clock import FrozenClock
from tether.evidence.signals import (
    CREDENTIAL_CHANGE,
    MAX_ATTEMPTS,
    SESSION_REVOKED,
    TASK_CONTEXT_CHANGE,
    VERIFICATION,
)

pytestmark = pytest.mark.asyncio


class Receiver:
    """An RFC 8935 push receiver on 127.0.0.1: keeps what it was sent, answers ``status``."""

    def __init__(self, port: int = 0, status: int = 202, body: bytes = b"") -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received
        answer = (status, body)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                received.append((dict(self.headers.items()), self.rfile.read(length)))
                self.send_response(answer[0])
                if answer[1]:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer[1])))
                self.end_headers()
                self.wfile.write(answer[1])

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/caep"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tokens(self) -> list[str]:
        return [body.decode("ascii") for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _verified(client, tokens: list[str]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Each SET verified as a receiver would: with the JWKS Tether publishes, typ secevent+jwt."""
    keys = KeySet.import_key_set((await client.get("/v1/auth/jwks")).json())
    claims = []
    for token in tokens:
        verified = jws.deserialize_compact(token, keys, algorithms=["Ed25519"])
        assert verified.protected["typ"] == "secevent+jwt"
        assert verified.protected["kid"] in {
            k["kid"] for k in (await client.get("/v1/auth/jwks")).json()["keys"]
        }
        claims.append(json.loads(verified.payload))
    return claims


async def _stream(client, admin, url: str, events: list[str]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = await client.post(
        "/v1/ssf/streams",
        json={"delivery": {"method": "urn:ietf:rfc:8935", "endpoint_url": url}, "events_requested": events},
        headers=admin,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _task(bot, secret: str = "prod/github/token") -> dict[str, Any]:  # type: ignore[no-untyped-def]
    opened = await bot.request(
        "POST",
        "/v1/tasks",
        json={
            "purpose": "deploy",
            "objective": "ship release 1.2",
            "sensitivity": "internal",
            "secrets": [secret],
            "destinations": ["github"],
            "ttl_seconds": 600,
        },
    )
    assert opened.status_code == 201, opened.text
    task: dict[str, Any] = opened.json()
    return task


async def test_discovery_names_the_jwks_and_push_delivery(client) -> None:  # type: ignore[no-untyped-def]
    response = await client.get("/.well-known/ssf-configuration")
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["spec_version"] == "1_0"
    assert config["delivery_methods_supported"] == ["urn:ietf:rfc:8935"]
    assert config["jwks_uri"].endswith("/v1/auth/jwks")
    assert config["configuration_endpoint"].endswith("/v1/ssf/streams")
    assert SESSION_REVOKED in config["events_supported"]


async def test_a_receiver_gets_signed_caep_events_when_tasks_end_and_change(  # type: ignore[no-untyped-def]
    client, admin, broker, receiver: Receiver
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    before = await _task(bot)  # ended before the stream exists: not told
    assert (await bot.request("POST", f"/v1/tasks/{before['id']}/complete")).status_code == 200
    stream = await _stream(
        client, admin, receiver.url, ["session-revoked", "credential-change", "task-context-change"]
    )
    assert stream["aud"] == receiver.url.removesuffix("/caep")

    task = await _task(bot)
    grant = await bot.request(
        "POST",
        f"/v1/tasks/{task['id']}/grants",
        json={"secret": "prod/github/token", "destination": "github", "mode": "reveal"},
    )
    assert grant.status_code == 201, grant.text
    assert (await bot.request("POST", f"/v1/grants/{grant.json()['id']}/activate")).status_code == 200
    changed = await bot.request("PATCH", f"/v1/tasks/{task['id']}", json={"objective": "ship release 1.3"})
    assert changed.status_code == 200, changed.text
    revoked = await client.post(f"/v1/tasks/{task['id']}/revoke", json={"reason": "runaway"}, headers=admin)
    assert revoked.status_code == 200, revoked.text
    rotated = await client.post(
        "/v1/secrets/prod/stripe/key:rotate", json={"value": new_canary("rotated")}, headers=admin
    )
    assert rotated.status_code in (200, 201), rotated.text

    assert await broker.signals.run_once() == 3
    sets = await _verified(client, receiver.tokens())
    by_type = {next(iter(c["events"])): c for c in sets}
    assert set(by_type) == {SESSION_REVOKED, TASK_CONTEXT_CHANGE, CREDENTIAL_CHANGE}
    agent = f"spiffe://{broker.settings.trust_domain}/agent/deploy-bot"
    ended = by_type[SESSION_REVOKED]
    assert ended["sub_id"] == {
        "format": "complex",
        "session": {"format": "opaque", "id": task["id"]},
        "user": {"format": "uri", "uri": agent},
    }
    assert ended["aud"] == stream["aud"]
    assert ended["iss"].startswith(("http", "spiffe://"))
    assert ended["events"][SESSION_REVOKED]["initiating_entity"] == "admin"
    assert ended["events"][SESSION_REVOKED]["reason_admin"] == {"en": "runaway"}
    context = by_type[TASK_CONTEXT_CHANGE]
    assert context["sub_id"]["session"]["id"] == task["id"]
    assert context["events"][TASK_CONTEXT_CHANGE]["initiating_entity"] == "user"
    change = by_type[CREDENTIAL_CHANGE]
    assert change["sub_id"] == {"format": "opaque", "id": "secret:prod/stripe/key"}
    assert change["events"][CREDENTIAL_CHANGE]["change_type"] == "update"
    assert all(headers["Content-Type"] == "application/secevent+jwt" for headers, _ in receiver.received)
    assert len({c["jti"] for c in sets}) == 3

    # Told once: another pass (or another node reading the same events) sends nothing again.
    assert await broker.signals.run_once() == 0
    log = await client.get(f"/v1/ssf/streams/{stream['stream_id']}/deliveries", headers=admin)
    assert log.status_code == 200, log.text
    assert {d["status"] for d in log.json()["items"]} == {"delivered"}
    assert all(d["attempts"] == 1 for d in log.json()["items"])
    canaries = [*values.values()]
    for blob in (*receiver.tokens(), json.dumps(sets), log.text):
        assert not find_leaks(blob, canaries)


async def test_a_receiver_that_is_down_gets_retries_with_backoff_and_the_log_says_so(  # type: ignore[no-untyped-def]
    client, admin, broker
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/caep"
    stream = await _stream(client, admin, url, ["session-revoked"])
    bot = await register_agent(client, admin, "deploy-bot")
    task = await _task(bot)
    done = await bot.request("POST", f"/v1/tasks/{task['id']}/complete")
    assert done.status_code == 200, done.text  # the ending never waits for a receiver

    clock = FrozenClock(datetime.now(UTC))
    transmitter = Transmitter(broker.storage, broker.audit, clock, broker.settings, broker.auth)
    assert await transmitter.run_once() == 0
    log_url = f"/v1/ssf/streams/{stream['stream_id']}/deliveries"
    first = (await client.get(log_url, headers=admin)).json()["items"]
    assert len(first) == 1
    assert first[0]["status"] == "pending"
    assert first[0]["attempts"] == 1
    assert first[0]["last_error"].startswith("ConnectError")
    assert first[0]["subject"]["session"]["id"] == task["id"]
    # Not due yet: the next attempt waits its backoff.
    assert await transmitter.run_once() == 0
    assert (await client.get(log_url, headers=admin)).json()["items"][0]["attempts"] == 1
    clock.advance(1.1)
    await transmitter.run_once()
    second = (await client.get(log_url, headers=admin)).json()["items"][0]
    assert second["attempts"] == 2
    waits = datetime.fromisoformat(second["next_attempt_at"]) - clock.now()
    assert 1.5 < waits.total_seconds() <= 2.0  # doubled

    # The receiver comes up: the next retry delivers.
    receiver = Receiver(port)
    try:
        clock.advance(2.1)
        assert await transmitter.run_once() == 1
        (claims,) = await _verified(client, receiver.tokens())
        assert claims["sub_id"]["session"]["id"] == task["id"]
    finally:
        receiver.close()
    delivered = (await client.get(log_url, headers=admin)).json()["items"][0]
    assert delivered["status"] == "delivered"
    assert delivered["attempts"] == 3


async def test_a_receiver_that_never_comes_back_is_marked_failed(client, admin, broker) -> None:  # type: ignore[no-untyped-def]
    stream = await _stream(client, admin, f"http://127.0.0.1:{_free_port()}/caep", ["session-revoked"])
    verify = await client.post(
        "/v1/ssf/verify", json={"stream_id": stream["stream_id"], "state": "s1"}, headers=admin
    )
    assert verify.status_code == 202, verify.text
    clock = FrozenClock(datetime.now(UTC))
    transmitter = Transmitter(broker.storage, broker.audit, clock, broker.settings, broker.auth)
    for _ in range(MAX_ATTEMPTS):
        await transmitter.run_once()
        clock.advance(601)
    (failed,) = (
        await client.get(f"/v1/ssf/streams/{stream['stream_id']}/deliveries?status=failed", headers=admin)
    ).json()["items"]
    assert failed["event_type"] == VERIFICATION
    assert failed["attempts"] == MAX_ATTEMPTS
    assert failed["next_attempt_at"] is None


async def test_a_receiver_refusing_a_set_is_not_retried(client, admin, broker) -> None:  # type: ignore[no-untyped-def]
    refusing = Receiver(status=400, body=b'{"err": "invalid_audience", "description": "not for us"}')
    try:
        stream = await _stream(client, admin, refusing.url, ["session-revoked"])
        verify = await client.post("/v1/ssf/verify", json={"stream_id": stream["stream_id"]}, headers=admin)
        assert verify.status_code == 202, verify.text
        await broker.signals.run_once()
        (entry,) = (
            await client.get(f"/v1/ssf/streams/{stream['stream_id']}/deliveries", headers=admin)
        ).json()["items"]
        assert entry["status"] == "failed"
        assert entry["attempts"] == 1
        assert entry["last_status"] == 400
        assert entry["last_error"] == "HTTP 400: invalid_audience not for us"
        (claims,) = await _verified(client, refusing.tokens())
        assert claims["events"] == {VERIFICATION: {}}
    finally:
        refusing.close()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {
                "delivery": {"endpoint_url": "http://receiver.example/caep"},
                "events_requested": ["session-revoked"],
            },
            "https",
        ),
        (
            {"delivery": {"endpoint_url": "https://10.1.2.3/caep"}, "events_requested": ["session-revoked"]},
            "private",
        ),
        (
            {"delivery": {"endpoint_url": "https://[fd00::1]/caep"}, "events_requested": ["session-revoked"]},
            "private",
        ),
        (
            {
                "delivery": {"endpoint_url": "https://169.254.169.254/"},
                "events_requested": ["session-revoked"],
            },
            "private",
        ),
        (
            {
                "delivery": {"endpoint_url": "https://u:p@receiver.example/"},
                "events_requested": ["session-revoked"],
            },
            "credentials",
        ),
        (
            {
                "delivery": {"endpoint_url": "ftp://receiver.example/"},
                "events_requested": ["session-revoked"],
            },
            "https",
        ),
        (
            {"delivery": {"endpoint_url": "http://127.0.0.1:9/x"}, "events_requested": ["nonsense"]},
            "unknown event",
        ),
        ({"delivery": {"endpoint_url": "http://127.0.0.1:9/x"}, "events_requested": []}, "events_requested"),
        (
            {
                "delivery": {"endpoint_url": "http://127.0.0.1:9/x", "method": "poll"},
                "events_requested": ["session-revoked"],
            },
            "method",
        ),
        ({"events_requested": ["session-revoked"]}, "delivery"),
        (
            {
                "delivery": {"endpoint_url": "http://127.0.0.1:9/x"},
                "events_requested": ["session-revoked"],
                "x": 1,
            },
            "x",
        ),
    ],
)
async def test_bad_stream_registrations_are_problems(
    client, admin, body: dict[str, Any], fragment: str
) -> None:  # type: ignore[no-untyped-def]
    response = await client.post("/v1/ssf/streams", json=body, headers=admin)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert fragment in response.text
    assert (await client.get("/v1/ssf/streams", headers=admin)).json()["items"] == []


async def test_roles_pause_and_removal(client, admin, make_operator, broker, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    auditor = await make_operator("ada", "auditor")
    body = {"delivery": {"endpoint_url": receiver.url}, "events_requested": ["session-revoked"]}
    assert (await client.post("/v1/ssf/streams", json=body, headers=auditor)).status_code == 403
    stream = await _stream(client, admin, receiver.url, ["session-revoked"])
    listed = await client.get("/v1/ssf/streams", headers=auditor)
    assert [s["stream_id"] for s in listed.json()["items"]] == [stream["stream_id"]]
    one = await client.get(f"/v1/ssf/streams?stream_id={stream['stream_id']}", headers=auditor)
    assert one.json()["delivery"]["endpoint_url"] == receiver.url
    paused = await client.post(
        "/v1/ssf/status", json={"stream_id": stream["stream_id"], "status": "paused"}, headers=admin
    )
    assert paused.json() == {"stream_id": stream["stream_id"], "status": "paused"}
    await client.post("/v1/ssf/verify", json={"stream_id": stream["stream_id"], "state": "p"}, headers=admin)
    await broker.signals.run_once()
    assert receiver.received == []  # kept while paused
    await client.post(
        "/v1/ssf/status", json={"stream_id": stream["stream_id"], "status": "enabled"}, headers=admin
    )
    assert await broker.signals.run_once() == 1
    (claims,) = await _verified(client, receiver.tokens())
    assert claims["events"][VERIFICATION] == {"state": "p"}
    assert (await client.delete(f"/v1/ssf/streams/{stream['stream_id']}", headers=auditor)).status_code == 403
    assert (await client.delete(f"/v1/ssf/streams/{stream['stream_id']}", headers=admin)).status_code == 204
    missing = await client.get(f"/v1/ssf/streams/{stream['stream_id']}", headers=admin)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    kinds = [
        e["kind"] for e in (await client.get("/v1/audit/events?kind=ssf.*", headers=admin)).json()["events"]
    ]
    assert kinds == ["ssf.stream.add", "ssf.stream.update", "ssf.stream.update", "ssf.stream.remove"]


async def test_disabling_an_agent_tells_every_task_it_had(client, admin, broker, receiver: Receiver) -> None:  # type: ignore[no-untyped-def]
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    bot = await register_agent(client, admin, "deploy-bot")
    first, second = await _task(bot), await _task(bot)
    await _stream(client, admin, receiver.url, ["session-revoked"])
    disabled = await client.post("/v1/agents/deploy-bot/disable", headers=admin)
    assert disabled.status_code == 200, disabled.text
    assert await broker.signals.run_once() == 2
    told = {c["sub_id"]["session"]["id"] for c in await _verified(client, receiver.tokens())}
    assert told == {first["id"], second["id"]}


async def test_two_transmitters_on_one_store_tell_each_ending_once(  # type: ignore[no-untyped-def]
    client, admin, broker, receiver: Receiver
) -> None:
    values = {path: new_canary(path) for path in SECRETS}
    await seed(client, admin, values)
    await _stream(client, admin, receiver.url, ["session-revoked"])
    bot = await register_agent(client, admin, "deploy-bot")
    tasks = [await _task(bot) for _ in range(3)]
    for task in tasks:
        assert (await bot.request("POST", f"/v1/tasks/{task['id']}/complete")).status_code == 200
    other = Transmitter(broker.storage, broker.audit, broker.clock, broker.settings, broker.auth)
    delivered = await asyncio.gather(broker.signals.run_once(), other.run_once())
    delivered += await asyncio.gather(broker.signals.run_once(), other.run_once())
    assert sum(delivered) == 3
    told = [c["sub_id"]["session"]["id"] for c in await _verified(client, receiver.tokens())]
    assert sorted(told) == sorted(t["id"] for t in tasks)
