"""Tether's streamable HTTP (:mod:`tether.mcp.streamable`, :mod:`tether.mcp.dispatcher`) under the
SDK's real ``Client``: against real SDK servers on loopback (stateless with JSON or event-stream
answers, stateful with a session), and against scripted upstreams that write exact bytes for every
way an answer can go wrong. Each failure must reach the waiting call as a JSON-RPC error (never a
hang or a crash) whose text holds nothing of the upstream's (its body, its Location) nor of the
injected secret."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import re
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import mcp_types as types
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError

import tether.mcp.streamable as streamable
from tests.security.canaries import new_canary
from tether.domain.destinations import Injection, InjectionType
from tether.errors import TetherError
from tether.mcp.dispatcher import ABANDON_SECONDS, HttpDispatcher, http_client
from tether.mcp.guard import SecretGuard
from tether.mcp.servers import McpServer, UpstreamKind
from tether.mcp.streamable import SESSION_ENDED, _Events
from tether.mcp.upstreams import UpstreamError, UpstreamPool, UpstreamSpec, _failure_of

EMPTY = {"type": "object", "properties": {}}
BODY_TEXT = "upstream-body-text-7f3a"  # what a scripted upstream writes in its bodies: never in an error
INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "scripted", "version": "1"},
}
TIMEOUT = 5.0


# -- real SDK servers -----------------------------------------------------------------------------
def sdk_server() -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        names = ("echo", "notify", "slow")
        return types.ListToolsResult(tools=[types.Tool(name=name, input_schema=EMPTY) for name in names])

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        if params.name == "notify":
            await ctx.session.send_log_message(
                "warning", {"step": 1}, "up", related_request_id=ctx.request_id
            )
            await ctx.session.report_progress(0.5, 1.0, "halfway")
        elif params.name == "slow":
            await asyncio.sleep(60)
        text = f"{params.name} {json.dumps(params.arguments or {}, sort_keys=True)}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("streamable-test", version="1", on_list_tools=list_tools, on_call_tool=call_tool)


@dataclass
class Seen:
    """What a real upstream received: each request's method, headers, and the session it was given."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # the JSON-RPC methods posted
    assigned: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@asynccontextmanager
async def real_upstream(*, stateless: bool, json_response: bool) -> AsyncIterator[tuple[str, Seen]]:
    seen = Seen()
    inner = sdk_server().streamable_http_app(stateless_http=stateless, json_response=json_response)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        seen.requests.append((scope["method"], headers))

        async def receive_copy() -> Any:
            message = await receive()
            if message["type"] == "http.request" and message.get("body"):
                seen.methods.append(json.loads(message["body"]).get("method", "(a response)"))
            return message

        async def send_copy(message: Any) -> None:
            if message["type"] == "http.response.start":
                seen.statuses.append(message["status"])
                for name, value in message.get("headers", []):
                    if name.lower() == b"mcp-session-id":
                        seen.assigned.append(value.decode("latin-1"))
            await send(message)

        await inner(scope, receive_copy, send_copy)

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/mcp", seen
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def text_of(result: types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


@pytest.mark.parametrize("json_response", [True, False], ids=["json", "event-stream"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_stateless_sdk_server_answers_calls_in_json_and_in_event_streams(
    json_response: bool, mode: Any
) -> None:
    canary = new_canary("streamable")
    async with real_upstream(stateless=True, json_response=json_response) as (url, seen):
        async with asyncio.timeout(20):
            client = http_client(url, {"Authorization": f"Bearer {canary}"}, TIMEOUT, mode=mode)
            async with client:
                tools = await client.list_tools()
                assert [tool.name for tool in tools.tools] == ["echo", "notify", "slow"]
                results = await asyncio.gather(
                    *(client.call_tool("echo", {"n": n}) for n in range(8))  # side by side
                )
                assert [text_of(result) for result in results] == [f'echo {{"n": {n}}}' for n in range(8)]
    assert seen.requests
    assert all(headers.get("authorization") == f"Bearer {canary}" for _, headers in seen.requests)
    assert {method for method, _ in seen.requests} == {"POST"}
    assert not seen.assigned  # stateless: no session, so no DELETE either


async def test_a_stateful_server_gets_its_session_back_on_every_request_and_a_delete_at_the_end() -> None:
    async with real_upstream(stateless=False, json_response=False) as (url, seen):
        async with asyncio.timeout(20):
            async with http_client(url, {"x-token": "t"}, TIMEOUT, mode="legacy") as client:
                assert text_of(await client.call_tool("echo", {})) == "echo {}"
                assert text_of(await client.call_tool("echo", {"a": 1})) == 'echo {"a": 1}'
            assert len(set(seen.assigned)) == 1
            session = seen.assigned[0]
            first, *rest = seen.requests
            assert first[0] == "POST"  # the initialize, before there is a session
            assert "mcp-session-id" not in first[1]
            assert rest
            assert all(headers.get("mcp-session-id") == session for _, headers in rest)
            assert [method for method, _ in rest][-1] == "DELETE"
            assert seen.statuses[-1] < 300  # the server ended it
            # ... and the session is gone: the same id is refused now.
            ended = streamable.HttpExchange(url, {}, TIMEOUT)
            ended.session_id = session
            ping = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
            headers = ended._headers({}).items()
            response = await ended.http.send(ended.url, "POST", headers, ping, ended.timeouts)
            await response.aclose()
            await ended.http.aclose()
            assert response.status == 404


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
@pytest.mark.parametrize(("mode", "stateless"), [("auto", True), ("legacy", True), ("legacy", False)])
async def test_progress_and_log_notifications_during_a_call_reach_the_clients_callbacks(
    mode: Any, stateless: bool
) -> None:
    logs: list[types.LoggingMessageNotificationParams] = []
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with real_upstream(stateless=stateless, json_response=False) as (url, _):
        async with asyncio.timeout(20):
            level: Any = "debug" if mode == "auto" else None
            client = http_client(url, {}, TIMEOUT, mode=mode, logging_callback=on_log, log_level=level)
            async with client:
                result = await client.call_tool("notify", {}, progress_callback=on_progress)
                assert text_of(result) == "notify {}"
    assert [(entry.level, entry.logger, entry.data) for entry in logs] == [("warning", "up", {"step": 1})]
    assert progress == [(0.5, 1.0, "halfway")]


@asynccontextmanager
async def dispatcher(url: str, headers: dict[str, str]) -> AsyncIterator[HttpDispatcher]:
    """The dispatcher on its own (no session above it): its ``run`` started, closed at the end."""

    async def no_request(ctx: Any, method: str, params: Any) -> dict[str, Any]:
        raise AssertionError(f"unexpected request {method}")

    async def no_notification(ctx: Any, method: str, params: Any) -> None:
        raise AssertionError(f"unexpected notification {method}")

    under = HttpDispatcher(url, headers, TIMEOUT)
    async with anyio.create_task_group() as group:
        await group.start(under.run, no_request, no_notification)
        try:
            yield under
        finally:
            await under.aclose()


async def test_the_injected_header_wins_over_a_same_named_header_of_a_message() -> None:
    async with (
        real_upstream(stateless=True, json_response=True) as (url, seen),
        asyncio.timeout(20),
        dispatcher(url, {"AUTHORIZATION": "Bearer injected"}) as under,
    ):
        own = {"Authorization": "Bearer agent", "mcp-protocol-version": "2025-11-25"}
        assert await under.send_raw_request("ping", None, {"headers": own}) == {}
    [(_, headers)] = seen.requests
    assert headers["authorization"] == "Bearer injected"


async def test_a_request_before_run_is_refused_and_after_close_ends_as_closed() -> None:
    async with real_upstream(stateless=True, json_response=True) as (url, seen):
        under = HttpDispatcher(url, {}, TIMEOUT)
        with pytest.raises(RuntimeError, match="before run"):
            await under.send_raw_request("ping", None)
        async with asyncio.timeout(20), dispatcher(url, {}) as under:
            assert await under.send_raw_request("ping", None) == {}
        with pytest.raises(MCPError) as closed:
            await under.send_raw_request("ping", None)
        await under.notify("notifications/initialized", None)  # dropped, not an error
    assert closed.value.code == types.CONNECTION_CLOSED
    assert len(seen.requests) == 1


async def test_closing_the_transport_ends_a_call_in_flight_promptly() -> None:
    async with real_upstream(stateless=True, json_response=False) as (url, seen):
        async with asyncio.timeout(10):
            async with http_client(url, {}, 30.0) as client:
                call = asyncio.create_task(client.call_tool("slow", {}))
                async with asyncio.timeout(5):
                    while len(seen.requests) < 2:  # the probe, then the call
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.05)
            # The client is closed with the call outstanding: the call ends at once, with an error.
            with pytest.raises(MCPError) as ended:
                await call
    assert ended.value.code == types.CONNECTION_CLOSED
    assert streamable.is_transport_failure(ended.value.error)  # Tether's, not an upstream's words
    assert _failure_of(ended.value.error, stdio=False) == ("closed the connection during the call", True)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_call_given_up_on_is_aborted_on_the_modern_wire_and_cancelled_by_frame_before_it(
    mode: Any,
) -> None:
    async with real_upstream(stateless=True, json_response=False) as (url, seen):
        async with asyncio.timeout(20):
            async with http_client(url, {}, 30.0, mode=mode) as client:
                with pytest.raises(MCPError):
                    await client.call_tool("slow", {}, read_timeout_seconds=0.3)
                # The session goes on: the next call is answered.
                assert text_of(await client.call_tool("echo", {})) == "echo {}"
    cancelled = seen.methods.count("notifications/cancelled")
    assert cancelled == (0 if mode == "auto" else 1)


async def test_a_request_to_resume_a_stream_is_refused_not_sent_afresh() -> None:
    async with (
        real_upstream(stateless=True, json_response=True) as (url, seen),
        asyncio.timeout(20),
        dispatcher(url, {}) as under,
    ):
        with pytest.raises(MCPError) as refused:
            await under.send_raw_request("tools/call", {"name": "echo"}, {"resumption_token": "7"})
    assert refused.value.code == types.INVALID_REQUEST
    assert streamable.is_transport_failure(refused.value.error)
    assert not seen.requests


async def test_a_json_rpc_error_on_a_failed_status_answers_the_request() -> None:
    def script(message: dict[str, Any]) -> Reply:
        error = {"code": -32601, "message": "no such method"}
        return json_reply({"jsonrpc": "2.0", "id": None, "error": error}, 404)

    async with scripted(script) as upstream, asyncio.timeout(10), dispatcher(upstream.url, {}) as under:
        with pytest.raises(MCPError) as error:
            await under.send_raw_request("x/y", None)
    assert (error.value.code, error.value.message) == (-32601, "no such method")
    assert not streamable.is_transport_failure(error.value.error)


LEGACY = {"headers": {"mcp-protocol-version": "2025-11-25"}}
MODERN = {"headers": {"mcp-protocol-version": "2026-07-28"}}


def hanging(message: dict[str, Any]) -> Reply:
    """``x/slow`` never answered (a comment, then silence); anything else answered at once."""
    if message["method"] == "x/slow":
        return Reply([sse_head(), b": working\n\n"], pause=30)
    return json_reply(result(message["id"], {}))


def cancels(upstream: Scripted) -> list[Any]:
    return [
        message["params"]["requestId"]
        for _, message in upstream.posts
        if message.get("method") == "notifications/cancelled"
    ]


async def test_a_timed_out_call_is_a_marked_timeout_told_to_a_legacy_upstream_at_once() -> None:
    async with scripted(hanging) as upstream, asyncio.timeout(15), dispatcher(upstream.url, {}) as under:
        started = asyncio.get_running_loop().time()
        with pytest.raises(MCPError) as late:
            await under.send_raw_request("x/slow", None, {**LEGACY, "timeout": 0.3})  # type: ignore[typeddict-item]
        elapsed = asyncio.get_running_loop().time() - started
        # The handshake's own request is never cancelled (the SDK's session asks so).
        with pytest.raises(MCPError):
            await under.send_raw_request(
                "x/slow",
                None,
                {**LEGACY, "timeout": 0.3, "cancel_on_abandon": False},  # type: ignore[typeddict-item]
            )
    assert late.value.code == types.REQUEST_TIMEOUT
    assert _failure_of(late.value.error, stdio=False) == ("did not answer in time", False)
    assert elapsed < 0.3 + ABANDON_SECONDS + 0.5
    assert cancels(upstream) == [1]  # the first call only


@pytest.mark.parametrize(("wire", "told"), [(LEGACY, True), (MODERN, False)], ids=["legacy", "2026-07-28"])
async def test_a_cancelled_caller_aborts_its_call_and_tells_only_a_legacy_upstream(
    wire: dict[str, Any], told: bool
) -> None:
    async with scripted(hanging) as upstream, asyncio.timeout(15), dispatcher(upstream.url, {}) as under:
        call = asyncio.create_task(under.send_raw_request("x/slow", None, wire))  # type: ignore[arg-type]
        while not any(message.get("method") == "x/slow" for _, message in upstream.posts):
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await under.send_raw_request("ping", None, wire) == {}  # type: ignore[arg-type]
    assert cancels(upstream) == ([1] if told else [])


async def test_a_callers_request_id_is_kept_even_zero_and_one_in_flight_is_refused() -> None:
    async with scripted(hanging) as upstream, asyncio.timeout(15), dispatcher(upstream.url, {}) as under:
        call = asyncio.create_task(under.send_raw_request("x/slow", None, {**LEGACY, "request_id": 0}))
        while not any(message.get("method") == "x/slow" for _, message in upstream.posts):
            await asyncio.sleep(0.01)
        with pytest.raises(ValueError, match="already in flight"):
            await under.send_raw_request("ping", None, {**LEGACY, "request_id": "0"})
        assert await under.send_raw_request("ping", None, LEGACY) == {}  # a minted id: no clash
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    assert [message["id"] for _, message in upstream.posts if "id" in message][:2] == [0, 1]


# -- scripted upstreams -------------------------------------------------------------------------
@dataclass
class Reply:
    """What a scripted upstream writes for one POST: these pieces, a pause between them, and
    whether it then closes the connection."""

    pieces: list[bytes]
    close: bool = False
    pause: float = 0.0


Script = Callable[[dict[str, Any]], Reply]


def http(status: int, body: bytes = b"", content_type: str | None = None, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def result(request_id: Any, value: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


TOOL_RESULT = {"content": [{"type": "text", "text": "scripted"}]}


def json_reply(message: dict[str, Any], status: int = 200, *extra: str) -> Reply:
    return Reply([http(status, json.dumps(message).encode(), "application/json", *extra)])


def sse_head(*extra: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def event(message: dict[str, Any], newline: str = "\n") -> bytes:
    return f"event: message{newline}data: {json.dumps(message)}{newline}{newline}".encode()


@dataclass
class Scripted:
    url: str
    posts: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)


@asynccontextmanager
async def scripted(
    script: Script, *init_headers: str, notified: Reply | None = None
) -> AsyncIterator[Scripted]:
    """An upstream on loopback that answers the handshake (its answer to ``initialize`` with
    ``init_headers``, to a notification ``notified`` or 202) and hands every other POST's message to
    ``script`` (which may raise to hang up)."""
    state = Scripted("")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                state.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if head.startswith(b"DELETE"):
                    writer.write(http(200))
                    continue
                message = json.loads(body)
                state.posts.append((head, message))
                if message.get("method") == "initialize":
                    reply = json_reply(result(message["id"], INIT), 200, *init_headers)
                elif message.get("method") == "tools/list":  # the client reads output schemas first
                    reply = json_reply(
                        result(message["id"], {"tools": [{"name": "tool", "inputSchema": EMPTY}]})
                    )
                elif "id" not in message or "method" not in message:  # notifications, responses
                    reply = notified or Reply([http(202)])
                else:
                    reply = script(message)
                for piece in reply.pieces:
                    writer.write(piece)
                    await writer.drain()
                    if reply.pause:
                        await asyncio.sleep(reply.pause)
                if reply.close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/mcp"
    try:
        yield state
    finally:
        server.close()


async def call(url: str, canary: str, *, seconds: float = TIMEOUT) -> types.CallToolResult:
    """One tool call through the SDK's ``Client`` on the transport, the canary in a header."""
    async with asyncio.timeout(15):
        async with http_client(url, {"Authorization": f"Bearer {canary}"}, seconds, mode="legacy") as client:
            try:
                return await client.call_tool("tool", {})
            except MCPError as exc:
                error = exc  # raised outside the client, not in its task group's exception group
    raise error


async def refused(script: Script, *marks: str) -> MCPError:
    """The call's JSON-RPC error (asserted clean of the canary, the body's text and ``marks``)."""
    canary = new_canary("streamable")
    async with scripted(script) as upstream:
        with pytest.raises(MCPError) as error:
            await call(upstream.url, canary)
    assert all(canary.encode() in head for head in upstream.heads)  # it was sent
    text = f"{error.value} {error.value.error.model_dump_json()}"
    for mark in (canary, BODY_TEXT, upstream.url, "127.0.0.1", *marks):
        assert mark not in text
    return error.value


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_refused_and_never_followed(status: int) -> None:
    async with scripted(lambda message: json_reply(result(message["id"], TOOL_RESULT))) as trap:
        location = trap.url + "/elsewhere"

        def script(message: dict[str, Any]) -> Reply:
            return Reply([http(status, BODY_TEXT.encode(), "text/plain", f"Location: {location}")])

        error = await refused(script, location)
        assert "redirect" in error.message
    assert not trap.heads  # the secret never went to the Location


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (Reply([http(202)]), "202"),
        (Reply([http(500, BODY_TEXT.encode(), "text/plain")]), "HTTP 500"),
        (Reply([http(401, BODY_TEXT.encode(), "application/json")]), "HTTP 401"),  # not JSON-RPC
        (Reply([http(200, BODY_TEXT.encode(), "text/html")]), "content type"),
        (Reply([http(200, BODY_TEXT.encode(), "application/json")]), "not JSON-RPC"),
        (Reply([sse_head(), b": " + BODY_TEXT.encode() + b"\n\n"], close=True), "ended before"),
        (Reply([http(200, BODY_TEXT.encode() * 9, "application/json")[:-9]], close=True), "reached"),
    ],
    ids=["202", "500-text", "401-json", "text/html", "bad-json", "stream-ends", "cut-short"],
)
async def test_a_failed_answer_is_a_clean_json_rpc_error(reply: Reply, why: str) -> None:
    error = await refused(lambda message: reply)
    assert why in error.message


async def test_a_slow_upstream_times_out_as_an_error() -> None:
    canary = new_canary("streamable")
    async with scripted(lambda message: Reply([sse_head()], pause=3)) as upstream:
        with pytest.raises(MCPError) as error:
            await call(upstream.url, canary, seconds=0.5)
    assert error.value.message == "the upstream could not be reached (ReadTimeout)"


async def test_a_json_rpc_error_with_a_failed_status_is_forwarded_with_the_requests_id() -> None:
    def script(message: dict[str, Any]) -> Reply:
        error = {"code": -32602, "message": "no such argument"}
        return json_reply({"jsonrpc": "2.0", "id": None, "error": error}, 400)

    async with scripted(script) as upstream:
        with pytest.raises(MCPError) as error:
            await call(upstream.url, new_canary("streamable"))
    assert (error.value.code, error.value.message) == (-32602, "no such argument")


@pytest.mark.parametrize("kind", ["json", "event-stream"])
async def test_a_response_with_another_id_still_answers_the_request(kind: str) -> None:
    def script(message: dict[str, Any]) -> Reply:
        answer = result("not-the-request", TOOL_RESULT)
        if kind == "json":
            return json_reply(answer)
        return Reply([sse_head(), event(answer)], close=True)

    async with scripted(script) as upstream:
        assert text_of(await call(upstream.url, "t")) == "scripted"


async def test_an_answer_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamable, "MAX_MESSAGE_BYTES", 4096)
    big = {"content": [{"type": "text", "text": BODY_TEXT * 1000}]}
    error = await refused(lambda message: json_reply(result(message["id"], big)))
    assert "size limit" in error.message


async def test_an_event_over_the_size_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streamable, "MAX_MESSAGE_BYTES", 4096)
    big = {"content": [{"type": "text", "text": BODY_TEXT * 1000}]}

    def script(message: dict[str, Any]) -> Reply:
        data = event(result(message["id"], big))
        return Reply([sse_head(), *(data[i : i + 1000] for i in range(0, len(data), 1000))], close=True)

    error = await refused(script)
    assert "size limit" in error.message


@pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"], ids=["crlf", "cr", "lf"])
async def test_events_with_any_line_ending_split_over_tiny_writes_answer_the_call(newline: str) -> None:
    def script(message: dict[str, Any]) -> Reply:
        progress = {"jsonrpc": "2.0", "method": "notifications/progress"}
        progress["params"] = {"progressToken": "nobody", "progress": 1}
        stream = (
            f":a comment{newline}{newline}".encode()
            + f"event: ping{newline}data: {BODY_TEXT}{newline}{newline}".encode()  # not a message
            + f"id: 1{newline}retry: 10{newline}data:{newline}{newline}".encode()  # priming
            + event(progress, newline)
            + event(result(message["id"], TOOL_RESULT), newline)
        )
        return Reply([sse_head(), *(stream[i : i + 3] for i in range(0, len(stream), 3))], close=True)

    async with scripted(script) as upstream:
        assert text_of(await call(upstream.url, "t")) == "scripted"


async def test_a_request_from_the_upstream_during_a_call_is_refused_and_the_call_goes_on() -> None:
    # Sampling asked for on a call's event stream: the client declared no sampling, so the SDK's
    # session refuses it, the refusal is posted back under the request's id, and the call's own
    # answer still comes.
    def script(message: dict[str, Any]) -> Reply:
        ask = {"messages": [{"role": "user", "content": {"type": "text", "text": BODY_TEXT}}], "maxTokens": 5}
        sampling = {"jsonrpc": "2.0", "id": "up-1", "method": "sampling/createMessage", "params": ask}
        return Reply([sse_head(), event(sampling), event(result(message["id"], TOOL_RESULT))], close=True)

    async with scripted(script) as upstream:
        assert text_of(await call(upstream.url, "t")) == "scripted"
    [refusal] = [message for _, message in upstream.posts if message.get("id") == "up-1"]
    assert "error" in refusal
    assert "result" not in refusal


async def test_an_upstream_that_hangs_up_mid_call_gives_an_error_not_a_hang() -> None:
    def script(message: dict[str, Any]) -> Reply:
        raise ConnectionResetError

    error = await refused(script)
    assert "could not be reached" in error.message


# -- the event-stream parser -------------------------------------------------------------------
def test_events_follow_the_whatwg_rules() -> None:
    events = _Events()
    stream = (
        b"\xef\xbb\xbf"  # a leading BOM is not part of the first line
        + b"data: one\n: comment\ndata:two\n\n"
        + b"event: other\ndata: skipped\n\n"
        + b"event: message\ndata: three\nid: 4\nretry: 5\nunknown: x\n\n"
        + b"data\n\n"  # a field without a colon: empty data
        + b"data: incomplete"
    )
    assert events.feed(stream) == [b"one\ntwo", b"three", b""]
    assert events.feed(b"\r") == []
    assert events.feed(b"\n\r\n") == [b"incomplete"]


def test_an_event_over_the_limit_is_refused_even_on_one_unending_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streamable, "MAX_MESSAGE_BYTES", 100)
    events = _Events()
    for _ in range(10):
        events.feed(b"x" * 10)  # a line of 100 bytes so far: the limit, not over it
    with pytest.raises(TetherError, match="size limit"):
        events.feed(b"x" * 10)
    events = _Events()
    for _ in range(5):
        events.feed(b"data: " + b"y" * 10 + b"\n")
    with pytest.raises(TetherError, match="size limit"):
        events.feed(b"data: " + b"y" * 90 + b"\n")


def test_a_cr_at_the_end_of_a_chunk_ends_its_line_at_once() -> None:
    events = _Events()
    assert events.feed(b"data: one\r\r") == [b"one"]  # not held for a byte that may never come
    assert events.feed(b"\ndata: two\r") == []  # that LF was the first CR's CRLF: no blank line
    assert events.feed(b"\n\r\n") == [b"two"]
    assert events.feed(b"data: three\r") == []
    assert events.feed(b"") == []  # nothing came: the next LF may still be the CR's
    assert events.feed(b"\ndata: four\n\n") == [b"three\nfour"]


def reference(stream: bytes) -> list[bytes]:
    """The WHATWG rules written plainly over a whole stream (what a chunked parse must equal)."""
    *lines, _ = re.split(rb"\r\n|\r|\n", stream.removeprefix(b"\xef\xbb\xbf"))
    out: list[bytes] = []
    data: list[bytes] = []
    name = b""
    for line in lines:
        if not line:
            if data and name in (b"", b"message"):
                out.append(b"\n".join(data))
            data, name = [], b""
        elif not line.startswith(b":"):
            key, _, value = line.partition(b":")
            value = value.removeprefix(b" ")
            if key == b"data":
                data.append(value)
            elif key == b"event":
                name = value
    return out


@pytest.mark.parametrize("line", [b"data:xy\n", b"x"], ids=["short-data-lines", "one-byte-pieces"])
def test_what_the_parser_holds_is_bounded_by_the_limit_whatever_the_pieces(
    monkeypatch: pytest.MonkeyPatch, line: bytes
) -> None:
    # Many short data lines, or one line fed a byte at a time: each piece kept as an object of
    # its own would hold ten times the limit or more before the limit is reached.
    monkeypatch.setattr(streamable, "MAX_MESSAGE_BYTES", 1 << 18)
    events = _Events()

    def feed_past_the_limit() -> None:
        for _ in range(1 << 19):
            events.feed(line)

    tracemalloc.start()
    try:
        with pytest.raises(TetherError, match="size limit"):
            feed_past_the_limit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 << 18


TEXT = st.binary().map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))
LINE = st.one_of(
    TEXT.map(lambda text: b"data: " + text),
    st.sampled_from([b"", b": comment", b"event: message", b"event: other", b"id: 1", b"data", b"retry: 3"]),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(LINE, st.sampled_from([b"\n", b"\r", b"\r\n"])), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
    bom=st.sampled_from([b"", b"\xef\xbb\xbf", b"\xef\xbb\xbf\xef\xbb\xbf"]),
)
def test_a_stream_split_anywhere_yields_the_same_events(
    lines: list[tuple[bytes, bytes]], cuts: list[int], bom: bytes
) -> None:
    # A second BOM is an ordinary part of the first line (its field name), as the rules say.
    stream = bom + b"".join(line + end for line, end in lines)
    whole = _Events().feed(stream)
    assert whole == reference(stream)
    events = _Events()
    pieces: list[bytes] = []
    points = sorted({0, len(stream), *(cut % (len(stream) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(points):
        pieces += events.feed(stream[start:end])
    assert pieces == whole
    one_by_one = _Events()
    assert [data for i in range(len(stream)) for data in one_by_one.feed(stream[i : i + 1])] == whole


async def open_client(client: Client) -> None:
    async with client:
        pass


def leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


@pytest.mark.parametrize("session", ["caf\xe9", "a b"], ids=["latin-1", "space"])
async def test_a_session_id_that_is_not_visible_ascii_is_refused_not_a_crash(session: str) -> None:
    canary = new_canary("streamable")
    ok = lambda message: json_reply(result(message["id"], TOOL_RESULT))  # noqa: E731
    async with scripted(ok, f"Mcp-Session-Id: {session}") as upstream:
        client = http_client(upstream.url, {"Authorization": f"Bearer {canary}"}, TIMEOUT, mode="legacy")
        async with asyncio.timeout(15):
            with pytest.raises(BaseExceptionGroup) as raised:  # the handshake fails inside the client
                await open_client(client)
    [error] = leaves(raised.value)
    assert isinstance(error, MCPError)
    assert "session" in error.message
    assert session not in error.message
    assert canary not in error.message
    assert len(upstream.posts) == 1  # nothing sent under it


async def test_a_compressed_answer_is_refused_not_inflated() -> None:
    # Nothing asks for an encoding (no Accept-Encoding): inflating one anyway would decode a whole
    # read at once, past the size limit (64 KiB of gzip is 60 MB of JSON whitespace).
    bomb = gzip.compress(b" " * 60_000_000 + b"{}", compresslevel=9)
    assert len(bomb) < 65536

    def script(message: dict[str, Any]) -> Reply:
        return Reply([http(200, bomb, "application/json", "Content-Encoding: gzip")])

    tracemalloc.start()
    try:
        error = await refused(script)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < streamable.MAX_MESSAGE_BYTES
    assert "encoding" in error.message


@pytest.mark.parametrize("encoding", ["", "br", "identity, gzip"])
async def test_any_content_encoding_but_identity_is_refused_even_an_empty_one(encoding: str) -> None:
    def script(message: dict[str, Any]) -> Reply:
        body = json.dumps(result(message["id"], TOOL_RESULT)).encode()
        return Reply([http(200, body, "application/json", f"Content-Encoding: {encoding}")])

    error = await refused(script)
    assert "encoding" in error.message


async def test_an_answer_that_never_ends_to_a_notification_does_not_hold_back_the_next_call() -> None:
    # A notification is answered with 202 and no body; an upstream that streams to one instead
    # (a comment now and then, each within the read timeout) must not stall the messages after it.
    trickle = Reply([sse_head(), *[b": still here\n\n"] * 40], close=True, pause=0.1)
    ok = lambda message: json_reply(result(message["id"], TOOL_RESULT))  # noqa: E731
    async with scripted(ok, notified=trickle) as upstream:
        async with asyncio.timeout(15):
            async with http_client(upstream.url, {}, 1.0, mode="legacy") as client:
                async with asyncio.timeout(1.5):
                    assert text_of(await client.call_tool("tool", {})) == "scripted"


async def test_only_the_answer_to_initialize_assigns_a_session() -> None:
    # As the SDK's transport: a session id on a later answer is not taken (an upstream cannot
    # switch the session it is spoken to under mid-way).
    def script(message: dict[str, Any]) -> Reply:
        return json_reply(result(message["id"], TOOL_RESULT), 200, "Mcp-Session-Id: later")

    async with (
        scripted(script) as upstream,
        asyncio.timeout(15),
        http_client(upstream.url, {"Authorization": "Bearer x"}, TIMEOUT, mode="legacy") as client,
    ):
        for _ in range(2):
            assert text_of(await client.call_tool("tool", {})) == "scripted"
    assert upstream.posts
    assert not any(b"mcp-session-id" in head.lower() for head, _ in upstream.posts)
    assert not any(head.startswith(b"DELETE") for head in upstream.heads)


# -- a session the upstream ended ------------------------------------------------------------------
async def test_a_session_the_upstream_ended_is_retired_so_that_a_new_one_is_opened() -> None:
    """A stateful upstream answers 404 to a request of its session (it ended it): the call fails
    with Tether's words and the session is retired, so the pool opens a new one for the task's next
    call (under the old session id every request would be refused until the task ended)."""
    ended = {"now": False}

    def script(message: dict[str, Any]) -> Reply:
        if ended["now"]:
            return Reply([http(404)])
        return json_reply(result(message["id"], TOOL_RESULT))

    canary = new_canary("streamable")
    async with scripted(script, "Mcp-Session-Id: s-1") as upstream:
        server = McpServer(
            name="up",
            kind=UpstreamKind.HTTP,
            created_at=datetime.now(UTC),
            created_by="test",
            url=upstream.url,
            secret="prod/up/token",
            inject=Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}"),
            timeout_seconds=5,
        )
        spec = UpstreamSpec(server, {}, {"Authorization": f"Bearer {canary}"}, SecretGuard(()))
        pool = UpstreamPool()

        async def open_spec() -> UpstreamSpec:
            return spec

        try:
            session, opened = await pool.session("tsk_a", "up", open_spec)
            assert opened
            assert text_of(await session.call_tool("tool", {})) == "scripted"
            ended["now"] = True
            with pytest.raises(UpstreamError) as failed:
                await session.call_tool("tool", {})
            assert str(failed.value) == f"upstream 'up' failed: {SESSION_ENDED}"
            assert not session.open
            ended["now"] = False
            again, opened = await pool.session("tsk_a", "up", open_spec)
            assert opened
            assert again is not session
            assert text_of(await again.call_tool("tool", {})) == "scripted"
        finally:
            await pool.close_task("tsk_a")
    initializes = [message for _, message in upstream.posts if message.get("method") == "initialize"]
    assert len(initializes) == 2
