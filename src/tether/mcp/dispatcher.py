"""The SDK's ``Client`` for an upstream MCP server over streamable HTTP, on a ``Dispatcher`` of
Tether's (the SDK's own seam between a session and its wire): :class:`HttpDispatcher` over
:class:`tether.mcp.streamable.HttpExchange`.

The SDK's ``Client`` and ``ClientSession`` are unchanged (the handshake, request stamping and
``Mcp-Param-*`` headers, result validation against the negotiated version and the tool's output
schema, the ``HEADER_MISMATCH`` retry, input-required rounds, the refusal of sampling, elicitation
and roots). This replaces only what is under the session. The SDK's stream-backed dispatcher hands
each message through memory streams to a writer task and each answer back through a reader task;
its own HTTP transport adds httpx2 and httpcore2 in a task group of its own. Here a request is one
POST on a kept-alive pooled connection, sent and answered in the caller's own task (issue 15: a tool
call through the gateway is an activation, and every hop between tasks is CPU on its path).

- Requests run side by side; notifications and responses are posted in order.
- Messages the upstream sends on a request's event stream are handled as they arrive: progress to
  the call's callback, other notifications to the session (log messages), a request answered by the
  session (which refuses sampling, elicitation and roots) and the answer posted back.
- When the client closes, calls still in flight end at once and a stateful server's session is
  ended with ``DELETE``.
- A call given up on (cancelled, or past its timeout) has its POST aborted; before the 2026-07-28
  wire the ``notifications/cancelled`` frame is posted too (never for the handshake).
- Its own errors (a timeout, a close, a failed exchange) carry this process's mark, so that an
  upstream cannot spell them and be taken for Tether (:func:`tether.mcp.upstreams._failure_of`).

Not done: the SDK dispatcher's OpenTelemetry spans (Tether traces the call itself), and resuming
a stream (a request that asks to resume one is refused, as the stream transport before it did).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio
import anyio.abc
import httpx
import pydantic_core
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.shared.dispatcher import (
    CallOptions,
    Dispatcher,
    OnNotify,
    OnNotifyIntercept,
    OnRequest,
    ProgressFnT,
    coerce_request_id,
    run_notify_intercept,
)
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    REQUEST_TIMEOUT,
    ErrorData,
    JSONRPCError,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
)
from pydantic import ValidationError

from tether.errors import TetherError
from tether.mcp._context import OneWay
from tether.mcp.streamable import CLOSED, TIMED_OUT, HttpExchange, Relay, transport_failure

__all__ = ["ABANDON_SECONDS", "HttpDispatcher", "http_client"]

log = logging.getLogger(__name__)

#: How long posting the cancellation of a call given up on may take (within the second a call's
#: caller allows past its timeout).
ABANDON_SECONDS = 0.5


def _json(message: Mapping[str, Any]) -> bytes:
    return pydantic_core.to_json(message)


def _request(
    method: str, params: Mapping[str, Any] | None, request_id: RequestId, *, progress: bool
) -> dict[str, Any]:
    """A JSON-RPC request (``params`` left out when empty: JSON-RPC forbids ``null``); with
    ``progress``, its id is also its progress token."""
    out = dict(params) if params is not None else {}
    meta = dict(out.get("_meta") or {})
    if progress:
        meta["progressToken"] = request_id
    if meta:
        out["_meta"] = meta
    else:
        out.pop("_meta", None)
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if out:
        message["params"] = out
    return message


class HttpDispatcher:
    """The SDK's ``Dispatcher`` for one upstream over streamable HTTP (see the module's docstring).

    Args:
        url: The upstream's registered endpoint.
        headers: Sent on every request (the injected secret among them), over any other header of
            the same name.
        timeout_seconds: Connecting, writing, and the wait for each read of an answer.
    """

    def __init__(self, url: str, headers: Mapping[str, str], timeout_seconds: float) -> None:
        self._upstream = HttpExchange(url, headers, timeout_seconds)
        self._ids = itertools.count(1)
        self._handlers: tuple[OnRequest, OnNotify, OnNotifyIntercept | None] | None = None
        self._closed = False
        self._stopped = anyio.Event()
        #: Requests in flight, by id (as the SDK's dispatcher keys them): closing the dispatcher
        #: cancels their scopes, ending them at once.
        self._in_flight: dict[RequestId, anyio.CancelScope] = {}
        # Notifications and responses are posted in order, one at a time. A POST that holds the
        # lock is bounded by the transport's timeouts (a notification's answer body is never
        # read); whoever waits for it is bounded too (a call by its timeout, a cancellation by
        # ABANDON_SECONDS).
        self._posting = anyio.Lock()

    async def run(
        self,
        on_request: OnRequest,
        on_notify: OnNotify,
        on_notify_intercept: OnNotifyIntercept | None = None,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Ready at once; parks until :meth:`aclose` (there is no receive loop: each answer is read
        by the request it answers)."""
        self._handlers = (on_request, on_notify, on_notify_intercept)
        task_status.started()
        try:
            await self._stopped.wait()
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._stopped.set()
        for scope in self._in_flight.values():
            scope.cancel()

    async def aclose(self) -> None:
        """End the upstream's session (``DELETE``) and close the connections; calls in flight end."""
        self._close()
        await self._upstream.end_session()
        await self._upstream.http.aclose()

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        """One request, answered in this task: its result, or ``MCPError`` (the upstream's error,
        ``REQUEST_TIMEOUT`` past ``opts["timeout"]``, ``CONNECTION_CLOSED`` once closed, or a
        failure of the exchange marked as this transport's)."""
        if self._handlers is None:
            raise RuntimeError("HttpDispatcher.send_raw_request called before run()")
        if self._closed:
            raise transport_failure(CLOSED)
        options: CallOptions = opts or {}
        if options.get("resumption_token") is not None:  # never resumed: not sent afresh either
            raise transport_failure("resuming a stream is not supported", INVALID_REQUEST)
        request_id = self._request_id(options.get("request_id"))
        on_progress = options.get("on_progress")
        message = _request(method, params, request_id, progress=on_progress is not None)
        upstream = self._upstream
        stamped = upstream.stamped(method, options)
        modern = upstream.modern

        async def relay(inbound: JSONRPCRequest | JSONRPCNotification) -> None:
            await self._relay(inbound, request_id, on_progress)

        # The SDK's session asks that the handshake never be cancelled (the specification forbids it).
        tell = not modern and options.get("cancel_on_abandon", True)
        # The id stays taken until the upstream was told of a call given up on (below).
        key = coerce_request_id(request_id)
        self._in_flight[key] = scope = _scope(options.get("timeout"))
        try:
            answer = await self._exchange(
                scope, _json(message), stamped, request_id, relay, method == "initialize"
            )
        except TimeoutError:
            if tell:
                await self._abandon(request_id, f"timed out after {options.get('timeout')}s", shield=False)
            raise transport_failure(TIMED_OUT, REQUEST_TIMEOUT) from None
        except anyio.get_cancelled_exc_class():
            if tell:
                await self._abandon(request_id, "caller cancelled", shield=True)
            raise
        except TetherError as exc:  # a refusal of this transport's own (its text is Tether's)
            raise transport_failure(str(exc)) from None
        except httpx.HTTPError as exc:  # the type only: a transport error's text names the upstream
            raise transport_failure(f"the upstream could not be reached ({type(exc).__name__})") from None
        finally:
            del self._in_flight[key]
        if answer is None:  # the dispatcher closed while it was in flight
            raise transport_failure(CLOSED)
        if isinstance(answer, JSONRPCError):
            raise MCPError.from_error_data(answer.error)
        return answer.result

    async def _exchange(
        self,
        scope: anyio.CancelScope,
        body: bytes,
        stamped: Mapping[str, str],
        request_id: RequestId,
        relay: Relay,
        opening: bool,
    ) -> JSONRPCResponse | JSONRPCError | None:
        """The exchange of one request under ``scope`` (see :func:`_scope`): None when the
        dispatcher closed meanwhile, :class:`TimeoutError` past the scope's deadline."""
        with scope:
            return await self._upstream.exchange(body, stamped, request_id, relay, opening=opening)
        if self._closed:  # cancelled by close(); otherwise only its deadline cancels it
            return None
        raise TimeoutError

    def _request_id(self, supplied: RequestId | None) -> RequestId:
        """The caller's id (refused while another request holds it, as the SDK's dispatcher does),
        or the next one minted past any in flight."""
        if supplied is not None:
            if coerce_request_id(supplied) in self._in_flight:
                raise ValueError(f"request id {supplied!r} is already in flight")
            return supplied
        minted = next(self._ids)
        while minted in self._in_flight:
            minted = next(self._ids)
        return minted

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        """Post a notification (fire and forget: a failure is logged, and once closed it is dropped)."""
        if self._closed:
            log.debug("MCP upstream notification dropped: the client is closed")
            return
        stamped = self._upstream.stamped(method, opts)
        if method == "notifications/cancelled" and self._upstream.modern:
            # The 2026-07-28 wire has none: aborting the request's POST is the cancellation, which
            # this dispatcher does itself for a call given up on (the session never sends one).
            return
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = dict(params)
        await self._post(_json(message), stamped, method)

    async def _post(self, body: bytes, stamped: Mapping[str, str], what: str) -> None:
        async with self._posting:
            try:
                await self._upstream.post(body, stamped)
            except (TetherError, httpx.HTTPError) as exc:
                log.debug("MCP upstream message %s not delivered (%s)", what, type(exc).__name__)

    async def _abandon(self, request_id: RequestId, reason: str, *, shield: bool) -> None:
        """A call given up on before the 2026-07-28 wire: its POST is aborted already, and the
        upstream is told too (within ABANDON_SECONDS; ``shield``: whatever cancels the caller)."""
        if self._closed:
            return
        params = {"requestId": request_id, "reason": reason}
        body = _json({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params})
        with anyio.move_on_after(ABANDON_SECONDS, shield=shield):
            await self._post(body, {}, "notifications/cancelled")

    async def _relay(
        self,
        message: JSONRPCRequest | JSONRPCNotification,
        request_id: RequestId,
        on_progress: ProgressFnT | None,
    ) -> None:
        """A message the upstream sent on a request's stream: progress to its callback, other
        notifications to the session, a request answered by the session."""
        assert self._handlers is not None
        on_request, on_notify, intercept = self._handlers
        if isinstance(message, JSONRPCRequest):
            try:
                result = await on_request(
                    OneWay(message.id, forward=self.notify), message.method, message.params
                )
                reply: JSONRPCResponse | JSONRPCError = JSONRPCResponse(
                    jsonrpc="2.0", id=message.id, result=result
                )
            except MCPError as exc:
                reply = JSONRPCError(jsonrpc="2.0", id=message.id, error=exc.error)
            except ValidationError:  # as the SDK's dispatcher answers what its handlers cannot parse
                error = ErrorData(code=INVALID_PARAMS, message="Invalid request parameters", data="")
                reply = JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
            except Exception as exc:  # noqa: BLE001 - the session's failure is the upstream's answer, not ours
                log.debug("MCP upstream request failed in the session (%s)", type(exc).__name__)
                reply = JSONRPCError(
                    jsonrpc="2.0",
                    id=message.id,
                    error=ErrorData(code=INTERNAL_ERROR, message="Internal error"),
                )
            body = reply.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8")
            await self._post(body, {}, "response")
            return
        params = message.params
        if message.method == "notifications/progress" and on_progress is not None:
            await _progress(params, request_id, on_progress)
        if run_notify_intercept(intercept, message.method, params):
            return
        try:
            await on_notify(OneWay(None, forward=self.notify), message.method, params)
        except Exception as exc:  # noqa: BLE001 - one notification lost, never the call
            log.debug("MCP upstream notification dropped (%s)", type(exc).__name__)


async def _progress(
    params: Mapping[str, Any] | None, request_id: RequestId, on_progress: ProgressFnT
) -> None:
    if params is None:
        return
    match params:
        case {"progressToken": str() | int() as token, "progress": int() | float() as progress} if (
            not isinstance(token, bool)
            and not isinstance(progress, bool)
            and coerce_request_id(token) == coerce_request_id(request_id)
        ):
            total = params.get("total")
            text = params.get("message")
            try:
                await on_progress(
                    float(progress),
                    float(total) if isinstance(total, int | float) and not isinstance(total, bool) else None,
                    text if isinstance(text, str) else None,
                )
            except Exception as exc:  # noqa: BLE001 - a sink gone meanwhile: the call goes on
                log.debug("MCP upstream progress dropped (%s)", type(exc).__name__)
        case _:
            pass


def _scope(seconds: float | None) -> anyio.CancelScope:
    """One request's cancel scope: closing the dispatcher cancels it, and its deadline is the
    timeout. The timeout covers the whole exchange (also waiting for a connection and writing),
    where the SDK's clock starts after the write: never longer than the SDK's."""
    return anyio.CancelScope(deadline=math.inf if seconds is None else anyio.current_time() + seconds)


def http_client(url: str, headers: Mapping[str, str], timeout_seconds: float, **options: Any) -> Client:
    """The SDK's ``Client`` for the upstream at ``url``, on :class:`HttpDispatcher`.

    ``options`` are the ``Client``'s own (``mode``, ``logging_callback``, ...). The dispatcher is
    built when the client is entered and closed (the session ``DELETE``d) when it exits.
    """
    client = Client(url, **options)

    async def connect(exit_stack: AsyncExitStack, _mode: ConnectMode, _raise: bool) -> Dispatcher[Any]:
        dispatcher = HttpDispatcher(url, headers, timeout_seconds)
        exit_stack.push_async_callback(dispatcher.aclose)
        return dispatcher

    # The Client picks its connector from the type of its server (a URL: the SDK's own transport);
    # this is the one place that connector is chosen, so it is replaced here, before entry.
    client._connect = connect  # the SDK's seam between a Client and its Dispatcher
    return client
