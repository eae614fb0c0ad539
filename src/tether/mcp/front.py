"""``/mcp``: the gateway's front, the MCP SDK's low-level ``Server`` over streamable HTTP.

Every request is authenticated like the rest of the agent API — a DPoP-bound access token with a
fresh proof for ``POST <public URL>/mcp`` — and names its task in ``Tether-Task``; the MCP session is
never the authentication. The SDK runs *stateless*: no ``Mcp-Session-Id`` is issued or trusted, so
any worker of any node can serve any request, and each request carries everything it is judged by.
A call that asks for progress or log notifications is answered as a server-sent event stream, so
the upstream's notifications (redacted) reach the client during the call; any other request gets
one JSON body.

A proof is single-use as everywhere: for ``tools/call`` its use is recorded with the call's
``tool.call`` (or refusal) event, in one write; for any other method it is recorded before the
method runs. The handlers' answers per tool list and call are :class:`tether.mcp.gateway.McpGateway`'s.

The OAuth protected-resource metadata (RFC 9728) names Tether itself as the authorization server,
so a standard MCP client finds ``/v1/auth/token`` from a 401's ``WWW-Authenticate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import mcp_types as types
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import LOG_LEVEL_META_KEY
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tether import __version__
from tether.api.headers import HotRequest
from tether.broker.auth import AgentCaller
from tether.domain.tasks import validate_id
from tether.errors import (
    AuthenticationError,
    DeniedError,
    InvalidInputError,
    NotFoundError,
    SealedError,
    StorageError,
)
from tether.mcp.discovery import MCP_PATH, protected_resource_metadata
from tether.mcp.exchange import answer, answer_modern, handshake_era, parse
from tether.mcp.gateway import DENIED, UPSTREAM_FAILED, McpGateway
from tether.mcp.upstreams import UpstreamError
from tether.tracing import inner_spans_enabled, textless_mcp_spans

if TYPE_CHECKING:
    from tether.broker import Broker

__all__ = [
    "DENIED",
    "MCP_PATH",
    "TASK_HEADER",
    "UPSTREAM_FAILED",
    "McpFront",
    "protected_resource_metadata",
]

log = logging.getLogger(__name__)

textless_mcp_spans()  # the SDK is loaded now: while tracing is on, its spans carry no error text

TASK_HEADER = "tether-task"
_SCOPE_KEY = "tether.mcp"


@dataclass(slots=True)
class _Call:
    """What the front hands the handlers through the ASGI scope: who calls, for which task, and
    whether a handler took charge of the request's proof (``tools/call`` records its use with the
    call's event, or spends it when refusing)."""

    caller: AgentCaller
    task_id: str
    proof_taken: bool = False


def _error(exc: BaseException) -> MCPError:  # noqa: PLR0911 - one answer per kind of error
    """A JSON-RPC error for what the gateway raised; never upstream text beyond the redacted."""
    if isinstance(exc, MCPError):
        return exc
    if isinstance(exc, DeniedError):
        data: dict[str, Any] = {}
        if exc.decision is not None:
            data["decision"] = {
                "allowed": False,
                "policies": list(exc.decision.policies),
                "missing": list(exc.decision.missing),
            }
        if exc.approval_id:
            data["approval_id"] = exc.approval_id
        return MCPError(DENIED, f"denied: {exc}", data or None)
    if isinstance(exc, InvalidInputError | NotFoundError):
        return MCPError(types.INVALID_PARAMS, str(exc))
    if isinstance(exc, AuthenticationError):
        return MCPError(DENIED, f"denied: {exc}")
    if isinstance(exc, UpstreamError):
        return MCPError(UPSTREAM_FAILED, str(exc))
    if isinstance(exc, SealedError | StorageError):
        return MCPError(types.INTERNAL_ERROR, "Tether is unavailable (sealed or its store is down)")
    log.error("MCP gateway: unexpected %s", type(exc).__name__)
    return MCPError(types.INTERNAL_ERROR, "the call failed; see the server log")


class _WhileTracing:
    """A server middleware of the SDK's that runs only while tracing is on (see ``McpFront``)."""

    def __init__(self, inner: ServerMiddleware[Any]) -> None:
        self.inner = inner

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if inner_spans_enabled():
            return await self.inner(ctx, call_next)
        return await call_next(ctx)


class McpFront:
    """The ``/mcp`` endpoint of one app: the SDK's server and session manager, and the gateway."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.gateway = McpGateway(broker)
        self.server: Server[Any] = Server(
            "tether",
            version=__version__,
            title="Tether MCP gateway",
            instructions="The tools of the MCP servers your task declared, decided by Tether's policies.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            # For the 2026-07-28 wire's Mcp-Param-* header check: without it the SDK runs the
            # whole tools/list (a decision per tool) before every tools/call.
            get_tool_input_schema=self.gateway.registry.pinned_input_schema,
        )
        # The SDK's per-message span middleware runs only while Tether's tracing is on: a tool
        # call pays nothing for traces nobody exports (as Tether's own inner spans).
        self.server.middleware = [
            _WhileTracing(m) if type(m).__name__ == "OpenTelemetryMiddleware" else m
            for m in self.server.middleware
        ]
        # Two stateless managers: a call that asks for progress or log notifications is answered
        # as a server-sent event stream (they can reach the client meanwhile), any other request
        # as one JSON body (cheaper: no stream to set up).
        self.manager = StreamableHTTPSessionManager(app=self.server, stateless=True, json_response=False)
        self.json_manager = StreamableHTTPSessionManager(app=self.server, stateless=True, json_response=True)
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._stop = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    async def _run(self) -> None:
        async with self.manager.run(), self.json_manager.run():
            self._started.set()
            await self._stop.wait()

    async def start(self) -> None:
        """Start the SDK's session manager and the gateway's watch loop (once)."""
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="mcp-front")
            self.gateway.start_watch()
        async with asyncio.timeout(10):
            await self._started.wait()

    async def aclose(self) -> None:
        self._stop.set()
        if self._runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._runner, 10)
        await self.gateway.aclose()

    # -- handlers ----------------------------------------------------------------------------
    @staticmethod
    def _call(ctx: ServerRequestContext[Any, Any]) -> _Call:
        request = ctx.request
        call = None if request is None else request.scope.get(_SCOPE_KEY)
        if not isinstance(call, _Call):  # not through the authenticated endpoint: refuse
            raise MCPError(DENIED, "denied: not authenticated")
        return call

    async def _list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        call = self._call(ctx)
        try:
            listed = await self.gateway.list_tools(call.caller, call.task_id)
            tools = [types.Tool.model_validate(tool) for tool in listed]
        except Exception as exc:  # noqa: BLE001 - every failure is a JSON-RPC error, never a crash
            raise _error(exc) from None
        return types.ListToolsResult(tools=tools)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        call = self._call(ctx)
        call.proof_taken = True

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            await ctx.session.report_progress(progress, total, message)

        async def on_log(params: dict[str, Any]) -> None:
            # Logging is deprecated since 2026-07-28 (SEP-2577); clients of both eras still use it.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await ctx.session.send_log_message(
                    params.get("level", "info"),
                    params.get("data"),
                    params.get("logger"),
                    related_request_id=ctx.request_id,
                )

        # Notifications are forwarded only on an answer that streams (the client asked for
        # progress or logs; the SDK's session then applies the client's log level); otherwise
        # the upstream is not asked for them either.
        streams = _wants_notifications(ctx.params)
        try:
            outcome = await self.gateway.call_tool(
                call.caller,
                call.task_id,
                params.name,
                params.arguments,
                progress=progress if streams else None,
                on_log=on_log if streams else None,
            )
            # The wire dict as it is: the SDK's kernel takes a dict as well as a model and
            # validates it against the protocol version's result shape as it serializes.
            return cast(types.CallToolResult, outcome.result)
        except Exception as exc:  # noqa: BLE001 - every failure is a JSON-RPC error, never a crash
            if call.caller.replay is not None:  # refused before anything was recorded: use the proof up
                await self.gateway.spend_proof(call.caller.replay)
            raise _error(exc) from None

    # -- the endpoint ------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        """Authenticate, then let the SDK answer (JSON-RPC over SSE or JSON)."""
        from tether.api.problems import problem_response
        from tether.api.routes_auth import agent_caller, public_base_url

        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, public_base_url(request)):
            # The transport's rule against DNS rebinding: a browser page of another origin is
            # refused before anything else (it could not sign a DPoP proof either).
            return problem_response(
                403,
                "forbidden-origin",
                "Origin not allowed",
                "requests to /mcp from a browser must come from Tether's own origin",
            )
        if request.method != "POST":
            # Stateless: no standalone SSE stream (GET) and no session to end (DELETE).
            return problem_response(
                405,
                "method-not-allowed",
                "Method not allowed",
                "the MCP gateway is stateless: POST only (no SSE stream to open, no session to end)",
                headers={"Allow": "POST"},
            )
        caller = await agent_caller(request, self.broker, defer_replay=True)
        task_id = request.headers.get(TASK_HEADER)
        if not task_id:
            raise InvalidInputError("the Tether-Task header (the task's id) is required", field="Tether-Task")
        validate_id(task_id, "tsk", "Tether-Task")
        body = await request.body()
        raw = parse(body)
        method, streams = _peek(raw)
        if method != "tools/call":
            caller = await self._spend(caller)
        call = _Call(caller, task_id)
        if not streams:
            # One request, one JSON body: straight to the SDK's kernel, none of the transport
            # (a 2026-07-28 request the SDK's ladder would refuse is left to the transport below).
            scoped = HotRequest({**request.scope, _SCOPE_KEY: call})
            era = answer if handshake_era(request) else answer_modern
            try:
                response = await era(self.server, scoped, raw)
            except BaseException:
                await self.settle(call)  # failed, even cancelled: the proof is used up all the same
                raise
            if response is not None:
                await self.settle(call)
                return response
        await self.start()
        manager = self.manager if streams else self.json_manager
        return _Delegated(self, manager, body, call)

    async def settle(self, call: _Call) -> None:
        """Use up the proof of a ``tools/call`` that no handler took (the SDK refused its
        parameters first): a proof is single-use whatever became of the request."""
        if not call.proof_taken:
            call.proof_taken = True
            await self._spend(call.caller)

    async def _spend(self, caller: AgentCaller) -> AgentCaller:
        """Record the proof's single use now (a request that records nothing else)."""
        replay = caller.replay
        if replay is None:
            return caller
        if not await self.broker.storage.remember_jti(
            replay.key, expires_at=replay.expires_at, now=replay.now
        ):
            raise await self.broker.auth.refuse_replay(caller, "POST /mcp")
        return replace(caller, replay=None)


def same_origin(origin: str, base_url: str) -> bool:
    """Whether an ``Origin`` header names the origin (scheme, host, port) of ``base_url``; an
    opaque origin (``null``) or a malformed one never does."""
    try:
        theirs, ours = urlsplit(origin.strip()), urlsplit(base_url)
        return (
            theirs.scheme.lower() == ours.scheme.lower()
            and theirs.hostname is not None
            and theirs.username is None
            and theirs.hostname == ours.hostname
            and (theirs.port or _DEFAULT_PORTS.get(theirs.scheme.lower()))
            == (ours.port or _DEFAULT_PORTS.get(ours.scheme.lower()))
            and theirs.path in ("", "/")
        )
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _peek(message: Any) -> tuple[str | None, bool]:
    """The JSON-RPC method of a parsed request body, and whether its answer should stream (the
    request asks for progress or log notifications in ``_meta``)."""
    if not isinstance(message, dict):
        return None, False
    method = message.get("method")
    return (method if isinstance(method, str) else None), _wants_notifications(message.get("params"))


def _wants_notifications(params: Any) -> bool:
    meta = params.get("_meta") if isinstance(params, Mapping) else None
    return isinstance(meta, Mapping) and ("progressToken" in meta or LOG_LEVEL_META_KEY in meta)


class _Delegated(Response):
    """A response that lets the SDK's manager answer on the raw ASGI channel, with the body
    already read and the authenticated call in the scope."""

    def __init__(
        self, front: McpFront, manager: StreamableHTTPSessionManager, body: bytes, call: _Call
    ) -> None:
        super().__init__()
        self._front = front
        self._manager = manager
        self._body = body
        self._call_state = call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": self._body, "more_body": False}
            return await receive()

        scope = {**scope, _SCOPE_KEY: self._call_state}
        try:
            await self._manager.handle_request(scope, replay, send)
        finally:
            with contextlib.suppress(Exception):  # answered already; a replay is refused next time
                await self._front.settle(self._call_state)
