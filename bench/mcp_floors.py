"""Floors for the MCP gateway's added latency (issue 15): proxies in front of the same upstream that
do less than Tether, served as Tether serves (below), so that the light runs can say roughly what the
added latency is made of.

- **relay**: the extra hop alone. Each POST's bytes go to the upstream with its token, on Tether's
  pooled HTTP/1.1 transport, and the answer's bytes come back: no JSON-RPC, no SDK, no governance.
- **sdk**: the SDK out of the box, at both ends as the issue prescribes and with nothing else: its
  low-level ``Server`` behind its own stateless streamable HTTP app (JSON answers), each call
  forwarded by its ``Client`` over its own streamable HTTP transport. Given the tools' input
  schemas, listed once (as Tether gives its pinned ones): without them the SDK's 2026-07-28 entry
  lists every tool before each call, which the upstream would answer too.
- **sdk_tether**: the SDK parts as Tether runs them, without governance: the front's one-exchange
  path into the SDK's kernel (:mod:`tether.mcp.exchange`), the SDK's per-message span middleware
  off while tracing is, and the SDK's ``Client`` on Tether's dispatcher
  (:func:`tether.mcp.dispatcher.http_client`). No proof, no task, no policy, no audit, no redaction.

The gateway minus *sdk_tether* is, roughly, Tether's own work on a call: governance and the app
around the SDK (its middleware, the hot lane, the larger requests); *sdk_tether* minus *relay* is the
SDK's share, *relay* minus direct the hop's. Differences of medians only roughly add up, under load
least. Each is a floor, not a product: none of them authenticates anyone.

Served as ``tether server`` serves: one worker process per core, each on its own ``SO_REUSEPORT``
socket of a pinned group (:func:`tether.api.workers.listen`), uvicorn with Tether's HTTP protocol
(:data:`tether.api.server.HTTP_OPTIONS`) on Tether's event loop, the startup heap kept out of
garbage collection once serving. Run as ``python -m bench.mcp_floors KIND PORT UPSTREAM_URL`` with
the upstream's token in :data:`TOKEN_ENV`; stopped with SIGTERM (the workers die with it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Any

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["KINDS", "LABELS", "TOKEN_ENV", "main"]

KINDS = ("relay", "sdk", "sdk_tether")
LABELS = {
    "relay": "relay (the hop alone)",
    "sdk": "SDK proxy, out of the box",
    "sdk_tether": "SDK proxy, as Tether runs the SDK",
}
#: Where a floor finds the upstream's token.
TOKEN_ENV = "TETHER_BENCH_UPSTREAM_TOKEN"
_TIMEOUTS = dict.fromkeys(("connect", "read", "write", "pool"), 30.0)
#: What the relay passes on of a request's headers (the wire's own; the token is the relay's).
_PASSED = {b"content-type", b"accept", b"mcp-protocol-version", b"mcp-method", b"mcp-name"}


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer uvicorn's lifespan messages (nothing to start or stop)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _body(receive: Receive) -> bytes:
    """A request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


def _relay(upstream: str, token: str) -> ASGIApp:
    """The byte relay (see the module's docstring)."""
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
        head = [(b"content-type", kind), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": answer.status, "headers": head})
        await send({"type": "http.response.body", "body": data})

    return app


class _Upstream:
    """One SDK ``Client`` per worker, opened on the first call and held by a task of its own (its
    context is entered and left in one task, as anyio requires); the tools' input schemas, listed
    once when it opens."""

    def __init__(self, opened: Callable[[], AbstractAsyncContextManager[Any]]) -> None:
        self._opened = opened
        self._client: asyncio.Future[Any] | None = None
        self._holder: asyncio.Task[None] | None = None
        self.schemas: dict[str, Any] = {}

    async def _hold(self, ready: asyncio.Future[Any]) -> None:
        try:
            async with self._opened() as client:
                listed = await client.list_tools()
                # in place: the server holds this dict's ``get``
                self.schemas.update({tool.name: tool.input_schema for tool in listed.tools})
                ready.set_result(client)
                await asyncio.Event().wait()
        except BaseException as exc:
            if not ready.done():  # every waiting call fails with it, none hangs
                ready.set_exception(exc)
            raise

    async def client(self) -> Any:
        if self._client is None:
            self._client = asyncio.get_running_loop().create_future()
            self._holder = asyncio.ensure_future(self._hold(self._client))
        return await self._client


def _server(upstream: _Upstream) -> Any:
    """The SDK's low-level ``Server`` forwarding ``tools/list`` and ``tools/call`` to ``upstream``."""
    from mcp.server.lowlevel.server import Server

    async def list_tools(ctx: Any, params: Any) -> Any:
        return await (await upstream.client()).list_tools()

    async def call_tool(ctx: Any, params: Any) -> Any:
        return await (await upstream.client()).call_tool(params.name, params.arguments or {})

    return Server(
        "bench-floor",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        get_tool_input_schema=upstream.schemas.get,
    )


class _StockClient:
    """The SDK's ``Client`` on its own streamable HTTP transport, the token in every request."""

    def __init__(self, upstream: str, token: str) -> None:
        from mcp import Client
        from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client

        self._http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        self._client = Client(streamable_http_client(upstream, http_client=self._http))

    async def __aenter__(self) -> Any:
        await self._http.__aenter__()
        return await self._client.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._client.__aexit__(*exc)
        finally:
            await self._http.__aexit__(*exc)


def _sdk(upstream: str, token: str) -> ASGIApp:
    """The SDK out of the box (see the module's docstring)."""
    upstream_client = _Upstream(lambda: _StockClient(upstream, token))
    app: ASGIApp = _server(upstream_client).streamable_http_app(stateless_http=True, json_response=True)
    return app


def _sdk_tether(upstream: str, token: str) -> ASGIApp:
    """The SDK as Tether runs it (see the module's docstring)."""
    from starlette.requests import Request

    from tether.mcp.dispatcher import http_client
    from tether.mcp.exchange import answer, answer_modern, handshake_era, parse
    from tether.mcp.front import _WhileTracing

    upstream_client = _Upstream(lambda: http_client(upstream, {"Authorization": f"Bearer {token}"}, 30.0))
    server = _server(upstream_client)
    server.middleware = [
        _WhileTracing(m) if type(m).__name__ == "OpenTelemetryMiddleware" else m for m in server.middleware
    ]

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


_APPS: dict[str, Callable[[str, str], ASGIApp]] = {"relay": _relay, "sdk": _sdk, "sdk_tether": _sdk_tether}


def _worker(app: ASGIApp, sock: Any, parent: int) -> None:
    """One worker: serve ``app`` on ``sock`` until SIGTERM (or the parent's death)."""
    import uvicorn

    from tether.api.server import HTTP_OPTIONS, freeze_startup_heap, loop_factory
    from tether.api.workers import die_with_parent

    die_with_parent(parent)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False, **HTTP_OPTIONS)
    server = uvicorn.Server(config)

    async def serve() -> None:
        async def freeze() -> None:
            while not server.started:
                await asyncio.sleep(0.02)
            freeze_startup_heap()

        freezing = asyncio.create_task(freeze())
        try:
            await server.serve(sockets=[sock])
        finally:
            freezing.cancel()

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())


def main(argv: list[str]) -> None:
    """``KIND PORT UPSTREAM_URL``: serve that floor with one worker per core until SIGTERM."""
    from tether.api.workers import listen
    from tether.config import default_workers  # tether server's count: served as it serves

    if len(argv) != 3 or not argv[1].isdigit():
        raise SystemExit("usage: python -m bench.mcp_floors KIND PORT UPSTREAM_URL")
    kind, port, upstream = argv
    if kind not in _APPS:
        raise SystemExit(f"unknown floor {kind!r}: one of {', '.join(KINDS)}")
    count = default_workers()
    parent = os.getpid()
    children = []
    for sock in listen("127.0.0.1", int(port), count):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _worker(_APPS[kind](upstream, os.environ[TOKEN_ENV]), sock, parent)
            except BaseException:  # said on stderr; the exit code tells the parent
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
        sock.close()

    def stop(signum: int, frame: Any) -> None:
        for child in children:
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    for _ in children:
        os.wait()


if __name__ == "__main__":
    main(sys.argv[1:])
