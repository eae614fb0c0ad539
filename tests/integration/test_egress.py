"""Egress end to end: Tether and a real upstream, both served by uvicorn on 127.0.0.1.

The upstream records every request it receives and can echo, reflect (in many encodings, split
across chunks, in headers), stream large bodies, redirect, stall and set cookies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.integration.governed import deploy_policies
from tests.security.canaries import encodings, new_canary
from tether.api import create_app
from tether.api.routes_egress import close_egress
from tether.broker import Broker
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent, TetherConnectionError
from tether.sdk.egress import AsyncEgressClient

SECRET_PATH = "prod/github/token"
MIB = 1024 * 1024
PATTERN = b"0123456789abcdef"


class Upstream:
    """A loopback upstream under ``/gh``: records requests, answers by path."""

    def __init__(self) -> None:
        self.secret = ""
        self.seen: list[dict[str, Any]] = []

    def reflection(self, form: str) -> bytes:
        value = self.secret.encode()
        forms = {
            "plain": value,
            "b64": base64.b64encode(value),
            "b64url-nopad": base64.urlsafe_b64encode(value).rstrip(b"="),
            "b64-embedded": base64.b64encode(b"xy:" + value + b":tail"),
            "url": urllib.parse.quote(self.secret, safe="").encode(),
            "hex": value.hex().encode(),
            "HEX": value.hex().upper().encode(),
            "bearer-b64": base64.b64encode(b"Bearer " + value),
        }
        return forms[form]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":  # a cut-off request is never answered
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode("latin-1")
        record = {
            "method": scope["method"],
            "path": scope["raw_path"].decode("latin-1"),
            "query": query,
            "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        self.seen.append(record)
        params = dict(urllib.parse.parse_qsl(query))
        route = scope["path"].removeprefix("/gh")

        async def answer(status: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]) -> None:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            for i, chunk in enumerate(chunks):
                await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})
            if not chunks:
                await send({"type": "http.response.body", "body": b""})

        if route.startswith("/reflect/"):
            text = b"before " + self.reflection(route.removeprefix("/reflect/")) + b" after"
            size = int(params.get("chunk", "0")) or len(text)
            await answer(200, [text[i : i + size] for i in range(0, len(text), size)], [])
        elif route == "/header":
            headers = [
                (b"x-echo", self.secret.encode()),
                (b"location", b"https://x.test/?t=" + self.secret.encode()),
            ]
            await answer(200, [b"ok"], headers)
        elif route == "/big":
            n = int(params["n"])
            block = PATTERN * (64 * 1024 // len(PATTERN))
            chunks = [block[: min(len(block), n - i)] for i in range(0, n, len(block))]
            headers = [(b"content-length", str(n).encode())] if params.get("cl") == "1" else []
            await answer(200, chunks, headers)
        elif route == "/redirect":
            await answer(302, [], [(b"location", b"http://evil.test/steal")])
        elif route == "/cookie":
            await answer(200, [b"ok"], [(b"set-cookie", b"session=abc; Path=/")])
        elif route == "/slow":
            # Later than the destination's timeout (2 s): the caller cuts it off first. Waiting
            # for that disconnect, rather than sleeping the whole 5 s, lets the upstream stop at
            # once when the test is over instead of finishing the sleep first.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    return  # a cut-off request is never answered
            await answer(200, [b"late"], [])
        else:  # echo
            await answer(200, [json.dumps(record).encode()], [(b"content-type", b"application/json")])


async def _serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.005)
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


async def _stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, 10)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Env:
    broker: Broker
    url: str
    http: httpx.AsyncClient
    admin: dict[str, str]
    upstream: Upstream
    agent: AsyncAgent
    secret: str
    task_id: str
    upstream_host: str

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Tether-Task": self.task_id, **kwargs.pop("headers", {})}
        return await self.agent.request(method, path, headers=headers, **kwargs)

    async def raw(self, method: str, target: str, **kwargs: Any) -> httpx.Response:
        """A request with an exact request target (no client-side normalisation), signed for it."""
        token = await self.agent.token()
        signed = self.agent._session.signed_headers(method, self.url + target, token)
        request = self.http.build_request(
            method,
            self.url + "/v1/egress/github/echo",
            headers={**signed, "Tether-Task": self.task_id},
            **kwargs,
        )
        request.extensions["target"] = target.encode("latin-1")
        return await self.http.send(request)

    async def events(self, kind: str) -> list[dict[str, Any]]:
        response = await self.http.get(
            self.url + "/v1/audit/events", params={"kind": kind, "task": self.task_id}, headers=self.admin
        )
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


def _destination(name: str, base: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": base,
        "secret": SECRET_PATH,
        "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
        "methods": ["GET", "POST", "PUT"],
        "path_prefixes": ["/echo", "/reflect", "/header", "/big", "/redirect", "/cookie", "/slow", "/repos"],
        "timeout_seconds": 2,
        "max_body_bytes": MIB,
        **extra,
    }


@pytest.fixture
async def env(broker: Broker) -> AsyncIterator[Env]:
    upstream = Upstream()
    up_server, up_task, up_port = await _serve(upstream)
    app = create_app(broker)  # the default app limit: egress bodies are bounded per destination
    server, task, port = await _serve(app)
    url = f"http://127.0.0.1:{port}"
    base = f"http://127.0.0.1:{up_port}/gh"
    admin = {"Authorization": f"Bearer {broker.root_token}"}  # type: ignore[attr-defined]
    secret = new_canary("egress")
    upstream.secret = secret
    names = ["github", "tiny", "down", "basic", "query"]
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            await deploy_policies(http, admin)
            response = await http.put(
                url + f"/v1/secrets/{SECRET_PATH}",
                json={
                    "value": secret,
                    "sensitivity": "internal",
                    "purposes": ["deploy"],
                    "destinations": names,
                },
                headers=admin,
            )
            assert response.status_code in (200, 201), response.text
            for body in (
                _destination("github", base),
                _destination("tiny", base, max_response_bytes=50_000),
                _destination("down", f"http://127.0.0.1:{_closed_port()}/"),
                _destination("basic", base, inject={"type": "basic", "name": "bot"}),
                _destination(
                    "query", base, inject={"type": "query", "name": "api_key", "template": "{secret}"}
                ),
            ):
                response = await http.post(url + "/v1/destinations", json=body, headers=admin)
                assert response.status_code == 201, response.text
            private = generate_private_jwk()
            public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
            attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": ["deploy"]}
            response = await http.post(
                url + "/v1/agents",
                json={"name": "egress-bot", "public_key": public, "attributes": attributes},
                headers=admin,
            )
            assert response.status_code == 201, response.text
            agent = AsyncAgent(url, response.json()["id"], private, http=http)
            opened = await agent.request(
                "POST",
                "/v1/tasks",
                json={
                    "purpose": "deploy",
                    "objective": "egress tests",
                    "sensitivity": "internal",
                    "secrets": [SECRET_PATH],
                    "destinations": names,
                    "ttl_seconds": 600,
                },
            )
            assert opened.status_code == 201, opened.text
            task_id = opened.json()["id"]
            for name in names:
                grant = await agent.request(
                    "POST", f"/v1/tasks/{task_id}/grants", json={"destination": name, "mode": "inject"}
                )
                assert grant.status_code == 201, grant.text
            yield Env(broker, url, http, admin, upstream, agent, secret, task_id, f"127.0.0.1:{up_port}")
    finally:
        await _stop(server, task)
        await close_egress(app)
        await _stop(up_server, up_task)


def _assert_no_secret(env: Env, text: str) -> None:
    for forms in encodings(env.secret).values():
        for form in forms:
            assert form not in text


# -- injection and the leak guard --------------------------------------------------------------
async def test_secret_is_injected_and_never_returned(env: Env) -> None:
    response = await env.call(
        "GET",
        "/v1/egress/github/echo/x?a=1",
        headers={
            "Cookie": "mine=1",
            "Proxy-Authorization": "Basic eA==",
            "X-Forwarded-For": "10.0.0.1",
            "Connection": "x-hop",
            "X-Hop": "1",
            "X-Kept": "yes",
        },
    )
    assert response.status_code == 200, response.text
    seen = env.upstream.seen[-1]
    headers = dict(seen["headers"])
    assert seen["path"] == "/gh/echo/x"
    assert seen["query"] == "a=1"
    assert [v for k, v in seen["headers"] if k == "authorization"] == [f"Bearer {env.secret}"]
    for dropped in ("cookie", "proxy-authorization", "x-forwarded-for", "x-hop", "dpop", "tether-task"):
        assert dropped not in headers
    assert headers["x-kept"] == "yes"
    assert headers["host"] == env.upstream_host
    # The echo quoted the injected header back: the agent gets it redacted.
    assert env.secret not in response.text
    assert '["authorization", "[REDACTED]"]' in response.text  # the whole injected value
    assert response.headers["cache-control"] == "no-store"
    redactions = await env.events("egress.redact")
    assert len(redactions) == 1
    assert redactions[0]["data"]["count"] >= 1
    assert redactions[0]["resource"] == "destination:github"
    assert env.secret not in json.dumps(redactions)


@pytest.mark.parametrize("chunk", [0, 1, 7])
async def test_reflected_secret_is_redacted_in_every_encoding(env: Env, chunk: int) -> None:
    forms = ["plain", "b64", "b64url-nopad", "b64-embedded", "url", "hex", "HEX", "bearer-b64"]
    for form in forms:
        response = await env.call("GET", f"/v1/egress/github/reflect/{form}?chunk={chunk}")
        assert response.status_code == 200, response.text
        assert response.text.startswith("before "), form
        assert response.text.endswith(" after"), form
        assert "[REDACTED]" in response.text, form
        _assert_no_secret(env, response.text)
        assert env.upstream.reflection(form).decode() not in response.text
    redactions = await env.events("egress.redact")
    assert len(redactions) == len(forms)


async def test_secret_in_response_headers_is_redacted_and_cookies_dropped(env: Env) -> None:
    response = await env.call("GET", "/v1/egress/github/header")
    assert response.status_code == 200
    assert response.headers["x-echo"] == "[REDACTED]"
    assert response.headers["location"] == "https://x.test/?t=[REDACTED]"
    cookie = await env.call("GET", "/v1/egress/github/cookie")
    assert cookie.status_code == 200
    assert "set-cookie" not in cookie.headers
    (event,) = await env.events("egress.redact")
    assert event["data"]["in_headers"] == 2


async def test_basic_and_query_injection(env: Env) -> None:
    response = await env.call("GET", "/v1/egress/basic/echo")
    assert response.status_code == 200, response.text
    expected = "Basic " + base64.b64encode(f"bot:{env.secret}".encode()).decode()
    assert dict(env.upstream.seen[-1]["headers"])["authorization"] == expected
    assert "[REDACTED]" in response.text
    _assert_no_secret(env, response.text)

    # The agent cannot set the injected parameter itself, however it spells it.
    response = await env.call("GET", "/v1/egress/query/echo?api_key=mine&API_KEY=x&ap%69_key=y&q=1")
    assert response.status_code == 200, response.text
    query = urllib.parse.parse_qsl(env.upstream.seen[-1]["query"])
    assert query == [("q", "1"), ("api_key", env.secret)]
    _assert_no_secret(env, response.text)


# -- refusals ------------------------------------------------------------------------------------
async def test_method_or_path_outside_the_destination_is_refused(env: Env) -> None:
    for method, path in (("DELETE", "/echo"), ("GET", "/admin"), ("GET", "/"), ("PATCH", "/repos/x")):
        response = await env.call(method, f"/v1/egress/github{path}")
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["type"] == "urn:tether:problem:denied"
    assert env.upstream.seen == []
    denials = [e for e in await env.events("decision") if e["decision"]["allowed"] is False]
    assert len(denials) == 4


async def test_completed_task_is_refused(env: Env) -> None:
    assert (await env.call("GET", "/v1/egress/github/echo")).status_code == 200
    done = await env.agent.request("POST", f"/v1/tasks/{env.task_id}/complete")
    assert done.status_code == 200, done.text
    response = await env.call("GET", "/v1/egress/github/echo")
    assert response.status_code == 403
    assert "completed" in response.json()["detail"]
    assert len(env.upstream.seen) == 1


async def test_tether_task_header_is_required(env: Env) -> None:
    missing = await env.agent.request("GET", "/v1/egress/github/echo")
    assert missing.status_code == 422
    malformed = await env.agent.request("GET", "/v1/egress/github/echo", headers={"Tether-Task": "nope"})
    assert malformed.status_code == 422
    unknown = await env.call("GET", "/v1/egress/nowhere/echo")
    assert unknown.status_code == 403
    assert env.upstream.seen == []


TRAVERSALS = [
    "/v1/egress/github/repos/../admin",
    "/v1/egress/github/repos/./x",
    "/v1/egress/github/repos/%2e%2e/admin",
    "/v1/egress/github/repos/%2E%2E/admin",
    "/v1/egress/github/repos/.%2e/admin",
    "/v1/egress/github/repos%2F..%2Fadmin",
    "/v1/egress/github/repos/a%2Fb",
    "/v1/egress/github/repos/%252e%252e/admin",
    "/v1/egress/github/repos/..;/admin",
    "/v1/egress/github//evil.test/x",
    "/v1/egress/github/http://evil.test/",
    "/v1/egress/github/http:%2F%2Fevil.test/",
    "/v1/egress/github/https:evil.test",
    "/v1/egress/github/repos\\..\\admin",
    "/v1/egress/github/repos/%5c..%5cadmin",
    "/v1/egress/github/repos/%00",
    "/v1/egress/github/repos/%0d%0aX-Injected:%201",
    "/v1/egress/git%68ub/repos/x",
]


async def test_traversal_and_ssrf_attempts_are_refused(env: Env) -> None:
    for target in TRAVERSALS:
        response = await env.raw("GET", target)
        assert 400 <= response.status_code < 500, (target, response.status_code)
        assert response.status_code != 401, (target, response.text)
    assert env.upstream.seen == []
    # The control: the same machinery with an honest path goes through.
    response = await env.raw("GET", "/v1/egress/github/repos/a%20b/c")
    assert response.status_code == 200, response.text
    assert env.upstream.seen[-1]["path"] == "/gh/repos/a%20b/c"


# -- sizes, timeouts, upstream failures ----------------------------------------------------------
async def test_request_bodies_are_bounded_and_streamed(env: Env) -> None:
    body = bytes(range(256)) * (MIB // 256)  # exactly the cap
    response = await env.call("POST", "/v1/egress/github/echo", content=body)
    assert response.status_code == 200, response.text
    assert env.upstream.seen[-1]["body_len"] == MIB
    assert env.upstream.seen[-1]["body_sha256"] == hashlib.sha256(body).hexdigest()

    over = await env.call("POST", "/v1/egress/github/echo", content=body + b"x")
    assert over.status_code == 413, over.text
    seen = len(env.upstream.seen)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(24):
            yield b"y" * 65536

    over_chunked = await env.call("POST", "/v1/egress/github/echo", content=chunked())
    assert over_chunked.status_code == 413, over_chunked.text
    assert len(env.upstream.seen) == seen  # the upstream never accepted a cut-off body


async def test_response_bodies_are_bounded_and_streamed(env: Env) -> None:
    size = 5 * MIB
    response = await env.call("GET", f"/v1/egress/github/big?n={size}")
    assert response.status_code == 200
    assert len(response.content) == size
    assert response.content == (PATTERN * (size // len(PATTERN)))

    for query in ("n=60000&cl=1", "n=60000", "n=300000&cl=1"):
        too_large = await env.call("GET", f"/v1/egress/tiny/big?{query}")
        assert too_large.status_code == 502, query
        assert too_large.json()["type"] == "urn:tether:problem:upstream-response-too-large"

    # Past the first 64 KiB the status is sent: an over-long answer is cut off, never passed whole
    # (the SDK reports the broken-off answer as TetherConnectionError).
    with pytest.raises(TetherConnectionError):
        await env.call("GET", f"/v1/egress/github/big?n={9 * MIB}")


async def test_short_answers_go_out_whole_and_long_ones_stream(env: Env) -> None:
    # An answer that ends within the prefetch is sent in one piece with its length, its
    # redactions recorded first; a longer one streams (chunked), redacted as it goes.
    short = await env.call("GET", "/v1/egress/github/reflect/plain")
    assert short.status_code == 200, short.text
    assert short.headers["content-length"] == str(len(short.content))
    assert "transfer-encoding" not in short.headers
    assert "[REDACTED]" in short.text
    assert len(await env.events("egress.redact")) == 1
    long = await env.call("GET", f"/v1/egress/github/big?n={1 * MIB}")
    assert long.status_code == 200
    assert long.headers.get("transfer-encoding") == "chunked"
    assert len(long.content) == MIB


async def test_upstream_down_timeout_and_redirect(env: Env) -> None:
    down = await env.call("GET", "/v1/egress/down/echo")
    assert down.status_code == 502
    assert down.json()["type"] == "urn:tether:problem:upstream-unavailable"

    slow = await env.call("GET", "/v1/egress/github/slow")
    assert slow.status_code == 504
    assert slow.json()["type"] == "urn:tether:problem:upstream-timeout"

    redirect = await env.call("GET", "/v1/egress/github/redirect")
    assert redirect.status_code == 302
    assert redirect.headers["location"] == "http://evil.test/steal"
    assert [r["path"] for r in env.upstream.seen] == ["/gh/slow", "/gh/redirect"]


async def test_sdk_egress_client(env: Env) -> None:
    client = AsyncEgressClient(env.agent, env.task_id)
    response = await client.get("github", "/echo/sdk", params={"page": "2"})
    assert response.status_code == 200, response.text
    assert env.upstream.seen[-1]["path"] == "/gh/echo/sdk"
    assert env.upstream.seen[-1]["query"] == "page=2"
    posted = await client.post("github", "/echo/sdk", json={"a": 1})
    assert posted.status_code == 200
    assert env.upstream.seen[-1]["method"] == "POST"
    _assert_no_secret(env, posted.text)


async def test_sdk_task_http_routes_through_egress(env: Env) -> None:
    task = await env.agent.join_task(env.task_id)
    response = await task.http.get("github", "/echo/task-http")
    assert response.status_code == 200, response.text
    assert env.upstream.seen[-1]["path"] == "/gh/echo/task-http"
    assert dict(env.upstream.seen[-1]["headers"])["authorization"] == f"Bearer {env.secret}"
    _assert_no_secret(env, response.text)
