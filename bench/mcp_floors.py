"""Floors for the MCP gateway's added latency (issue 15): proxies in front of the same upstream that
do less than Tether, served like Tether (their own process, uvicorn on uvloop and httptools, as many
workers as ``tether server`` runs), so that the light runs can say what the added latency is made of.

- **relay**: the extra hop alone. Each POST's bytes go to the upstream with its token, on Tether's
  pooled HTTP/1.1 transport, and the answer's bytes come back: no JSON-RPC, no SDK, no governance.
- **sdk**: the SDK out of the box, as the issue prescribes it at both ends and nothing else: its
  low-level ``Server`` behind its own stateless streamable HTTP app (JSON answers), each call
  forwarded by its ``Client`` over its own streamable HTTP transport. No governance.
- **sdk_tether**: the same SDK parts as Tether runs them, without governance: the front's
  one-exchange path into the SDK's kernel (:mod:`tether.mcp.exchange`) and the SDK's ``Client`` on
  Tether's dispatcher (:func:`tether.mcp.dispatcher.http_client`). No proof, no task, no policy, no
  audit, no redaction.

The gateway minus *sdk_tether* is what governance costs a call; *sdk_tether* minus *relay* is the
SDK's share; *relay* minus direct the hop's. Each is a floor, not a product: none authenticates
anyone. Run as ``python -m bench.mcp_floors KIND PORT UPSTREAM_URL`` (the token from
``TETHER_BENCH_UPSTREAM_TOKEN``), stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

__all__ = ["KINDS", "LABELS", "app"]

KINDS = ("relay", "sdk", "sdk_tether")
LABELS = {
    "relay": "relay (the hop alone)",
    "sdk": "SDK proxy, out of the box",
    "sdk_tether": "SDK proxy, as Tether runs the SDK",
}
TOKEN_ENV = "TETHER_BENCH_UPSTREAM_TOKEN"
_TIMEOUTS = dict.fromkeys(("connect", "read", "write", "pool"), 30.0)
#: What the relay passes on of a request's headers (the wire's own; the token is the relay's).
_PASSED = {b"content-type", b"accept", b"mcp-protocol-version", b"mcp-method", b"mcp-name"}

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _relay(upstream: str, token: str) -> Any:
    from tether.egress.http11 import Http11Transport

    url = httpx.URL(upstream)
    transports: list[Http11Transport] = []  # made in the worker's own loop, on its first request

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        body = await _body(receive)
        if not transports:
            transports.append(Http11Transport())
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"] if k in _PASSED]
        headers.append(("authorization", f"Bearer {token}"))
        answer = await transports[0].send(url, "POST", headers, body, _TIMEOUTS)
        try:
            data = b"".join([chunk async for chunk in answer])
        finally:
            await answer.aclose()
        kind = (answer.header(b"content-type") or "application/json").encode()
        head = [(b"content-type", kind)]
        await send({"type": "http.response.start", "status": answer.status, "headers": head})
        await send({"type": "http.response.body", "body": data})

    return app


class _Upstream:
    """One SDK ``Client`` per worker, opened on the first call and held by a task of its own (its
    context is entered and left in one task, as anyio requires)."""

    def __init__(self, opened: Callable[[], Any]) -> None:
        self._opened = opened
        self._client: asyncio.Future[Any] | None = None
        self._holder: asyncio.Task[None] | None = None

    async def _hold(self, ready: asyncio.Future[Any]) -> None:
        async with self._opened() as client:
            ready.set_result(client)
            await asyncio.Event().wait()

    async def client(self) -> Any:
        if self._client is None:
            self._client = asyncio.get_running_loop().create_future()
            self._holder = asyncio.ensure_future(self._hold(self._client))
        return await self._client


def _server(upstream: _Upstream) -> Any:
    from mcp.server.lowlevel.server import Server

    async def list_tools(ctx: Any, params: Any) -> Any:
        return await (await upstream.client()).list_tools()

    async def call_tool(ctx: Any, params: Any) -> Any:
        return await (await upstream.client()).call_tool(params.name, params.arguments or {})

    return Server("bench-floor", on_list_tools=list_tools, on_call_tool=call_tool)


def _sdk(upstream: str, token: str) -> Any:
    from mcp import Client
    from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

    class _Opened:
        async def __aenter__(self) -> Any:
            self.http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            await self.http.__aenter__()
            self.client = Client(streamable_http_client(upstream, http_client=self.http))
            return await self.client.__aenter__()

        async def __aexit__(self, *exc: object) -> None:
            await self.client.__aexit__(*exc)
            await self.http.__aexit__(*exc)

    return _server(_Upstream(_Opened)).streamable_http_app(stateless_http=True, json_response=True)


def _sdk_tether(upstream: str, token: str) -> Any:
    from starlette.requests import Request

    from tether.mcp.dispatcher import http_client
    from tether.mcp.exchange import answer, answer_modern, handshake_era, parse

    server = _server(_Upstream(lambda: http_client(upstream, {"Authorization": f"Bearer {token}"}, 30.0)))

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        request = Request(scope)
        era = answer if handshake_era(request) else answer_modern
        response = await era(server, request, parse(await _body(receive)))
        if response is None:  # not a plain request: the bench sends none
            await send({"type": "http.response.start", "status": 501, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await response(scope, receive, send)

    return app


def app() -> Any:
    """The floor named by ``TETHER_BENCH_FLOOR`` (uvicorn's factory, in each worker)."""
    kind = os.environ["TETHER_BENCH_FLOOR"]
    upstream, token = os.environ["TETHER_BENCH_FLOOR_UPSTREAM"], os.environ[TOKEN_ENV]
    return {"relay": _relay, "sdk": _sdk, "sdk_tether": _sdk_tether}[kind](upstream, token)


def main(argv: list[str]) -> None:
    import uvicorn

    from tether.config import MAX_WORKERS

    kind, port, upstream = argv
    if kind not in KINDS:
        raise SystemExit(f"unknown floor {kind!r}: one of {', '.join(KINDS)}")
    os.environ["TETHER_BENCH_FLOOR"] = kind
    os.environ["TETHER_BENCH_FLOOR_UPSTREAM"] = upstream
    uvicorn.run(
        "bench.mcp_floors:app",
        factory=True,
        host="127.0.0.1",
        port=int(port),
        workers=max(1, min(os.cpu_count() or 1, MAX_WORKERS)),  # as `tether server` by default
        http="httptools",
        loop="uvloop",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
