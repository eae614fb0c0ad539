"""Streamable HTTP to an upstream MCP server, under the SDK's ``Client``: a ``Dispatcher`` (the SDK's
own seam between a session and its wire) on Tether's HTTP/1.1 transport
(:class:`tether.egress.http11.Http11Transport`).

The SDK's ``Client`` and ``ClientSession`` are unchanged (the handshake, request stamping and
``Mcp-Param-*`` headers, result validation against the negotiated version and the tool's output
schema, the ``HEADER_MISMATCH`` retry, input-required rounds, the refusal of sampling, elicitation
and roots). This replaces only what is under the session. The SDK's stream-backed dispatcher hands
each message through memory streams to a writer task and each answer back through a reader task;
its own HTTP transport adds httpx2 and httpcore2 in a task group of its own. Here a request is one
POST on a kept-alive pooled connection, sent and answered in the caller's own task (issue 15: a tool
call through the gateway is an activation, and every hop between tasks is CPU on its path).

- Every message is one POST to the registered URL, with the injected headers (they win over any
  other of the same name), the session's per-message headers (``MCP-Protocol-Version``, and on the
  2026-07-28 wire ``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``), and the ``Mcp-Session-Id`` a
  stateful server assigned. Requests run side by side; notifications and responses are posted in
  order.
- A request's answer is one JSON-RPC message (``application/json``) or an event stream
  (``text/event-stream``) whose messages are handled as they arrive (progress and log notifications
  during a call; a request from the upstream is answered by the session, which refuses sampling,
  elicitation and roots) until the response. A response on a request's POST always answers that
  request: its id is the request's, whatever the upstream wrote. A notification's or a response's
  answer is ``202`` with no body; whatever body comes is not read.
- A stateful server's session is ended with ``DELETE`` when the client closes; calls still in
  flight end at once with the SDK's ``Connection closed``.
- A call given up on (cancelled, or past its timeout) has its POST aborted; before the 2026-07-28
  wire the ``notifications/cancelled`` frame is posted too.

What it refuses, each as an ``MCPError`` for the request (never the upstream's text, only a
JSON-RPC error the upstream sent, which the gateway redacts): a redirect (never followed: the
registered URL is the only one the secret goes to), an answer or one event over
:data:`MAX_MESSAGE_BYTES`, a content type that is neither JSON nor an event stream, a content
encoding (none is asked for), a session id that is not visible ASCII, a ``202`` to a request, a
failed status without a JSON-RPC error, a stream that ends before its response (there is no
resumption), and a transport failure or timeout (its type only). These errors carry a mark of this
process (:func:`is_transport_failure`), so the gateway answers them as the upstream having failed
(``-32002``, in Tether's words), and an upstream's own JSON-RPC error as the upstream's (redacted).

Not spoken: the standalone ``GET`` stream (messages from the server outside a call: sampling,
elicitation and roots are refused anyway, and a ``list_changed`` is not acted on), resumption, and
the SDK dispatcher's OpenTelemetry spans (Tether traces the call itself).
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
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
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.transport_context import TransportContext
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    REQUEST_TIMEOUT,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
    jsonrpc_message_adapter,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from tether.egress.http11 import Http11Transport
from tether.errors import TetherError

__all__ = ["MAX_MESSAGE_BYTES", "SESSION_ENDED", "HttpDispatcher", "http_client", "is_transport_failure"]

log = logging.getLogger(__name__)

#: One answer (JSON) or one event of a stream is at most this long, as one stdio line is.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How long ending a stateful server's session (``DELETE``) may take when the client closes.
END_SESSION_SECONDS = 2.0
#: How long posting the cancellation of a call given up on may take (within the second a call's
#: caller allows past its timeout).
ABANDON_SECONDS = 0.5
_SESSION = "mcp-session-id"
_VERSION = "mcp-protocol-version"
#: What a session id may hold (the specification's rule): anything else could not be sent back.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_BASE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
_TRANSPORT = TransportContext(kind="streamable-http", can_send_request=False)

_BOM = b"\xef\xbb\xbf"


class _Events:
    """Server-sent events (the WHATWG parsing rules) fed as bytes: the ``data`` of each complete
    ``message`` event. Comments, ``id`` and ``retry`` are read over (there is no resumption).
    Linear in what it is fed, and what it holds (a line still incomplete, an event's data so far) is
    held in one buffer each: no more than that many bytes, whatever the pieces it came in."""

    def __init__(self) -> None:
        self._partial = bytearray()
        self._data = bytearray()
        self._event = b""
        self._after_cr = False
        self._lead: bytes | None = b""  # the stream's first bytes, until a leading BOM is ruled out

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._lead is not None:  # one UTF-8 BOM may open the stream; it is not part of a line
            lead = self._lead + chunk
            if len(lead) < len(_BOM) and _BOM.startswith(lead):
                self._lead = lead
                return []
            self._lead = None
            chunk = lead.removeprefix(_BOM)
        if self._after_cr and chunk:  # a CR ended the last chunk: an LF starting this one is its CRLF's
            self._after_cr = False
            chunk = chunk.removeprefix(b"\n")
        if b"\n" not in chunk and b"\r" not in chunk:  # the middle of a long line
            self._hold(chunk)
            return []
        buffer = bytes(self._partial) + chunk if self._partial else chunk
        self._partial = bytearray()
        # A CR at the end ends its line now (not when the next byte comes: a stream written with CR
        # alone would hold its response back until more bytes, or for ever when the stream ends).
        self._after_cr = buffer.endswith(b"\r")
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buffer.split(b"\n")
        out: list[bytes] = []
        for line in lines:
            self._line(line, out)
        self._hold(rest)
        return out

    def _hold(self, part: bytes) -> None:
        if part:
            self._partial += part
            if len(self._partial) + len(self._data) > MAX_MESSAGE_BYTES:
                raise TetherError("the upstream sent an event over the size limit")

    def _line(self, line: bytes, out: list[bytes]) -> None:
        if not line:  # a blank line dispatches the event
            if self._data and self._event in (b"", b"message"):
                del self._data[-1]  # each data line ends with a newline: the last one is not data
                out.append(bytes(self._data))
            self._data, self._event = bytearray(), b""
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            self._data += value
            self._data += b"\n"
            if len(self._data) > MAX_MESSAGE_BYTES:
                raise TetherError("the upstream sent an event over the size limit")
        elif name == b"event":
            self._event = value


def _answer(message: JSONRPCResponse | JSONRPCError, request_id: RequestId) -> JSONRPCResponse | JSONRPCError:
    """A response on a request's POST answers that request, whatever id the upstream wrote."""
    message.id = request_id
    return message


def _parse(data: bytes) -> JSONRPCMessage:
    try:
        return jsonrpc_message_adapter.validate_json(data, by_name=False)
    except ValidationError:
        raise TetherError("the upstream sent a message that is not JSON-RPC") from None


#: The ``data`` of the errors this transport makes up itself (the upstream could not be reached, or
#: answered with something that is not an answer), so that the gateway tells them from the
#: upstream's own errors: a value per process, which no upstream can guess and send back.
_MARK_KEY = "tether.transport"
_MARK = secrets.token_hex(16)
#: The failure of a request whose session the upstream ended: the session is gone for good.
SESSION_ENDED = "the upstream ended its session (404)"
#: The failure of a request past its timeout (the SDK's ``REQUEST_TIMEOUT``, marked).
TIMED_OUT = "the upstream did not answer in time"
#: The failure of a request in flight when the client closed (the SDK's ``CONNECTION_CLOSED``,
#: marked): an upstream cannot spell either of these and have it taken for Tether's.
CLOSED = "the client closed while the request was in flight"


def _failure(why: str, code: int = CONNECTION_CLOSED) -> MCPError:
    return MCPError(code=code, message=why, data={_MARK_KEY: _MARK})


def is_transport_failure(error: ErrorData) -> bool:
    """Whether ``error`` was made up by this transport (the exchange failed), not sent by the upstream."""
    data = error.data
    if not isinstance(data, dict) or len(data) != 1:
        return False
    value = data.get(_MARK_KEY)
    # As bytes: compare_digest refuses a str with non-ASCII characters, which an upstream may send.
    return isinstance(value, str) and hmac.compare_digest(
        value.encode("utf-8", "surrogatepass"), _MARK.encode("ascii")
    )


#: Handles a message the upstream sent on a request's event stream before its response.
_Relay = Callable[[JSONRPCRequest | JSONRPCNotification], Awaitable[None]]


class _Upstream:
    """One upstream's HTTP state: its URL, headers, session, and the exchange of one POST."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout_seconds: float) -> None:
        self.url = httpx.URL(url)
        self.injected = {name.lower(): value for name, value in headers.items()}
        self.timeouts = dict.fromkeys(("connect", "read", "write", "pool"), timeout_seconds)
        self.http = Http11Transport(max_connections=64, max_keepalive_connections=16)
        self.session_id: str | None = None
        self.version: str | None = None

    @property
    def modern(self) -> bool:
        return self.version in MODERN_PROTOCOL_VERSIONS

    def stamped(self, method: str, opts: CallOptions | None) -> dict[str, str]:
        """A message's own headers (lower-case names); the protocol version it carries is the
        session's from now on (``initialize`` negotiates it afresh)."""
        own = opts.get("headers") if opts else None
        stamped = {name.lower(): value for name, value in own.items()} if own else {}
        if method == "initialize":
            self.version = None
        elif _VERSION in stamped:
            self.version = stamped[_VERSION]
        return stamped

    def _headers(self, stamped: Mapping[str, str]) -> dict[str, str]:
        """A POST's headers: the base, the session's, the message's own (``stamped``), and the
        injected ones over all of them."""
        headers = dict(_BASE)
        if self.session_id is not None:
            headers[_SESSION] = self.session_id
        if self.version is not None:
            headers[_VERSION] = self.version
        headers.update(stamped)
        headers.update(self.injected)
        return headers

    def _request(self, method: str, headers: Mapping[str, str], body: bytes = b"") -> httpx.Request:
        return httpx.Request(
            method, self.url, headers=headers, content=body, extensions={"timeout": self.timeouts}
        )

    async def post(self, body: bytes, stamped: Mapping[str, str]) -> None:
        """POST a notification or a response: accepted, or :class:`TetherError`/``httpx.HTTPError``."""
        await self.exchange(body, stamped, None, None)

    async def exchange(
        self,
        body: bytes,
        stamped: Mapping[str, str],
        request_id: RequestId | None,
        relay: _Relay | None,
        *,
        opening: bool = False,
    ) -> JSONRPCResponse | JSONRPCError | None:
        """POST one message. A request's answer is returned (the messages before it on its event
        stream go to ``relay``); a notification's or a response's POST returns None once accepted.
        Raises :class:`TetherError` (a refusal, in Tether's words) or ``httpx.HTTPError``."""
        response = await self.http.handle_async_request(self._request("POST", self._headers(stamped), body))
        try:
            session = response.headers.get(_SESSION) if opening else None
            if session:  # assigned by the answer to initialize only, as the SDK's transport takes it
                if not _VISIBLE_ASCII.fullmatch(session):  # sent back in a header: it could not be
                    raise TetherError("the upstream assigned a session id that is not visible ASCII")
                self.session_id = session
            status = response.status_code
            kind = response.headers.get("content-type", "").partition(";")[0].strip().lower()
            if status == 202:
                if request_id is not None:
                    raise TetherError("the upstream answered a request with 202 Accepted")
                return None
            if 300 <= status < 400:
                raise TetherError(f"the upstream answered with a redirect ({status}), which is not followed")
            if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
                # None is asked for; inflating one would decode a whole read at once, past the limit.
                raise TetherError("the upstream answered with a content encoding it was not asked for")
            if status >= 400:
                return await self._failed(response, kind, request_id)
            if request_id is None or relay is None:
                # A notification's or a response's answer is 202 with no body; a body is not read
                # (as the SDK's transport reads none): one that never ends would hold back every
                # message after it, since these are posted in order.
                return None
            if kind == "application/json":
                message = _parse(await _read_all(response))
                if isinstance(message, JSONRPCResponse | JSONRPCError):
                    return _answer(message, request_id)
                raise TetherError("the upstream's answer ended before its response (there is no resumption)")
            if kind == "text/event-stream":
                return await self._stream(response, request_id, relay)
            raise TetherError(
                "the upstream answered with a content type that is neither JSON nor an event stream"
            )
        finally:
            await response.aclose()

    async def _failed(
        self, response: httpx.Response, kind: str, request_id: RequestId | None
    ) -> JSONRPCError | None:
        status = response.status_code
        if request_id is not None and kind == "application/json":
            with contextlib.suppress(TetherError):
                message = _parse(await _read_all(response))
                if isinstance(message, JSONRPCError):
                    return JSONRPCError(jsonrpc="2.0", id=request_id, error=message.error)
        if status == 404 and self.session_id is not None:
            raise TetherError(SESSION_ENDED)
        raise TetherError(f"the upstream answered HTTP {status}")

    async def _stream(
        self, response: httpx.Response, request_id: RequestId, relay: _Relay
    ) -> JSONRPCResponse | JSONRPCError:
        events = _Events()
        async for chunk in response.aiter_raw():
            for data in events.feed(chunk):
                if not data:
                    continue  # a priming event (an id for resumption, no message)
                message = _parse(data)
                if isinstance(message, JSONRPCResponse | JSONRPCError):
                    return _answer(message, request_id)
                await relay(message)
        raise TetherError("the upstream's answer ended before its response (there is no resumption)")

    async def end_session(self) -> None:
        """``DELETE`` a stateful server's session (best effort, bounded)."""
        if self.session_id is None:
            return
        with anyio.move_on_after(END_SESSION_SECONDS, shield=True), contextlib.suppress(httpx.HTTPError):
            response = await self.http.handle_async_request(self._request("DELETE", self._headers({})))
            await response.aclose()


async def _read_all(response: httpx.Response) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise TetherError("the upstream's answer is over the size limit")
        parts.append(chunk)
    return b"".join(parts)


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


@dataclass
class _Inbound:
    """The SDK's ``DispatchContext`` for a message the upstream sent during a call: no back
    channel (a request from the upstream is answered, never sent to)."""

    dispatcher: HttpDispatcher
    request_id: RequestId | None
    transport: TransportContext = _TRANSPORT
    message_metadata: None = None
    cancel_requested: anyio.Event = field(default_factory=anyio.Event)

    @property
    def can_send_request(self) -> bool:
        return False

    async def send_raw_request(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> dict[str, Any]:
        raise NoBackChannelError(method)

    async def notify(
        self, method: str, params: Mapping[str, Any] | None, opts: CallOptions | None = None
    ) -> None:
        await self.dispatcher.notify(method, params, opts)

    async def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        return None


class HttpDispatcher:
    """The SDK's ``Dispatcher`` for one upstream over streamable HTTP (see the module's docstring).

    Args:
        url: The upstream's registered endpoint.
        headers: Sent on every request (the injected secret among them), over any other header of
            the same name.
        timeout_seconds: Connecting, writing, and the wait for each read of an answer.
    """

    def __init__(self, url: str, headers: Mapping[str, str], timeout_seconds: float) -> None:
        self._upstream = _Upstream(url, headers, timeout_seconds)
        self._ids = itertools.count(1)
        self._handlers: tuple[OnRequest, OnNotify, OnNotifyIntercept | None] | None = None
        self._closed = False
        self._stopped = anyio.Event()
        #: Requests in flight (their scopes): closing the dispatcher ends them at once.
        self._in_flight: set[anyio.CancelScope] = set()
        self._ids_in_flight: set[RequestId] = set()
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
        for scope in self._in_flight:
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
            raise _failure(CLOSED)
        options: CallOptions = opts or {}
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
        answer: JSONRPCResponse | JSONRPCError | None = None
        scope = anyio.CancelScope()
        self._in_flight.add(scope)
        try:
            # The timeout covers the whole exchange (also waiting for a connection and writing),
            # where the SDK's clock starts after the write: never longer than the SDK's.
            with scope, anyio.fail_after(options.get("timeout")):
                answer = await upstream.exchange(
                    _json(message), stamped, request_id, relay, opening=method == "initialize"
                )
        except TimeoutError:
            if tell:
                await self._abandon(request_id, f"timed out after {options.get('timeout')}s", shield=False)
            raise _failure(TIMED_OUT, REQUEST_TIMEOUT) from None
        except anyio.get_cancelled_exc_class():
            if tell:
                await self._abandon(request_id, "caller cancelled", shield=True)
            raise
        except TetherError as exc:  # a refusal of this transport's own (its text is Tether's)
            raise _failure(str(exc)) from None
        except httpx.HTTPError as exc:  # the type only: a transport error's text names the upstream
            raise _failure(f"the upstream could not be reached ({type(exc).__name__})") from None
        finally:
            self._in_flight.discard(scope)
            self._ids_in_flight.discard(coerce_request_id(request_id))
        if answer is None:  # the dispatcher closed while it was in flight
            raise _failure(CLOSED)
        if isinstance(answer, JSONRPCError):
            raise MCPError.from_error_data(answer.error)
        return answer.result

    def _request_id(self, supplied: RequestId | None) -> RequestId:
        """The caller's id (refused while another request holds it, as the SDK's dispatcher does),
        or the next one minted past any in flight."""
        if supplied is not None:
            key = coerce_request_id(supplied)
            if key in self._ids_in_flight:
                raise ValueError(f"request id {supplied!r} is already in flight")
            self._ids_in_flight.add(key)
            return supplied
        minted = next(self._ids)
        while minted in self._ids_in_flight:
            minted = next(self._ids)
        self._ids_in_flight.add(minted)
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
                result = await on_request(_Inbound(self, message.id), message.method, message.params)
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
            await on_notify(_Inbound(self, None), message.method, params)
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
