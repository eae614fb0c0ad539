"""Streamable HTTP to an upstream MCP server: the exchange of one message, on Tether's HTTP/1.1
transport (:class:`tether.egress.http11.Http11Transport`). The SDK's ``Client`` speaks through it by
way of :class:`tether.mcp.dispatcher.HttpDispatcher`.

- Every message is one POST to the registered URL, with the injected headers (they win over any
  other of the same name), the message's own headers (``MCP-Protocol-Version``, and on the
  2026-07-28 wire ``Mcp-Method``, ``Mcp-Name``, ``Mcp-Param-*``), and the ``Mcp-Session-Id`` a
  stateful server assigned (taken from the answer to ``initialize`` only).
- A request's answer is one JSON-RPC message (``application/json``) or an event stream
  (``text/event-stream``) whose messages before the response are handed to the caller as they
  arrive. A response on a request's POST always answers that request: its id is the request's,
  whatever the upstream wrote. A notification's or a response's answer is ``202`` with no body;
  whatever body comes is not read.
- A stateful server's session is ended with ``DELETE`` (:meth:`HttpExchange.end_session`).

What it refuses, each as a :class:`TetherError` in Tether's words (never the upstream's text, only
a JSON-RPC error the upstream sent, which the gateway redacts): a redirect (never followed: the
registered URL is the only one the secret goes to), an answer or one event over
:data:`MAX_MESSAGE_BYTES`, a content type that is neither JSON nor an event stream, a content
encoding (none is asked for), a session id that is not visible ASCII, a ``202`` to a request, a
failed status without a JSON-RPC error, and a stream that ends before its response (there is no
resumption). Such failures, and a transport failure or timeout (its type only), reach the session as
errors carrying a mark of this process (:func:`transport_failure`, :func:`is_transport_failure`), so
the gateway answers them as the upstream having failed (``-32002``, in Tether's words), and an
upstream's own JSON-RPC error as the upstream's (redacted).

Not spoken: the standalone ``GET`` stream (messages from the server outside a call: sampling,
elicitation and roots are refused anyway, and a ``list_changed`` is not acted on) and resumption.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping

import anyio
import httpx
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
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

from tether.egress.http11 import Answer, Http11Transport
from tether.errors import TetherError

__all__ = [
    "CLOSED",
    "MAX_MESSAGE_BYTES",
    "SESSION_ENDED",
    "TIMED_OUT",
    "HttpExchange",
    "Relay",
    "is_transport_failure",
    "transport_failure",
]

log = logging.getLogger(__name__)

#: One answer (JSON) or one event of a stream is at most this long, as one stdio line is.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: How long ending a stateful server's session (``DELETE``) may take when the client closes.
END_SESSION_SECONDS = 2.0
_SESSION = "mcp-session-id"
_SESSION_BYTES = _SESSION.encode("ascii")
_VERSION = "mcp-protocol-version"
#: What a session id may hold (the specification's rule): anything else could not be sent back.
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_BASE = {"accept": "application/json, text/event-stream", "content-type": "application/json"}

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


def transport_failure(why: str, code: int = CONNECTION_CLOSED) -> MCPError:
    """An error of this transport's own, ``why`` in Tether's words, marked as this process's."""
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
Relay = Callable[[JSONRPCRequest | JSONRPCNotification], Awaitable[None]]


class HttpExchange:
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

    async def post(self, body: bytes, stamped: Mapping[str, str]) -> None:
        """POST a notification or a response: accepted, or :class:`TetherError`/``httpx.HTTPError``."""
        await self.exchange(body, stamped, None, None)

    async def exchange(
        self,
        body: bytes,
        stamped: Mapping[str, str],
        request_id: RequestId | None,
        relay: Relay | None,
        *,
        opening: bool = False,
    ) -> JSONRPCResponse | JSONRPCError | None:
        """POST one message. A request's answer is returned (the messages before it on its event
        stream go to ``relay``); a notification's or a response's POST returns None once accepted.
        Raises :class:`TetherError` (a refusal, in Tether's words) or ``httpx.HTTPError``."""
        response = await self.http.send(self.url, "POST", self._headers(stamped).items(), body, self.timeouts)
        try:
            session = response.header(_SESSION_BYTES) if opening else None
            if session:  # assigned by the answer to initialize only, as the SDK's transport takes it
                if not _VISIBLE_ASCII.fullmatch(session):  # sent back in a header: it could not be
                    raise TetherError("the upstream assigned a session id that is not visible ASCII")
                self.session_id = session
            status = response.status
            kind = (response.header(b"content-type") or "").partition(";")[0].strip().lower()
            if status == 202:
                if request_id is not None:
                    raise TetherError("the upstream answered a request with 202 Accepted")
                return None
            if 300 <= status < 400:
                raise TetherError(f"the upstream answered with a redirect ({status}), which is not followed")
            encoding = response.header(b"content-encoding")
            if encoding is not None and encoding.strip().lower() != "identity":
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

    async def _failed(self, response: Answer, kind: str, request_id: RequestId | None) -> JSONRPCError | None:
        status = response.status
        if request_id is not None and kind == "application/json":
            with contextlib.suppress(TetherError):
                message = _parse(await _read_all(response))
                if isinstance(message, JSONRPCError):
                    return JSONRPCError(jsonrpc="2.0", id=request_id, error=message.error)
        if status == 404 and self.session_id is not None:
            raise TetherError(SESSION_ENDED)
        raise TetherError(f"the upstream answered HTTP {status}")

    async def _stream(
        self, response: Answer, request_id: RequestId, relay: Relay
    ) -> JSONRPCResponse | JSONRPCError:
        events = _Events()
        async for chunk in response:
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
            response = await self.http.send(self.url, "DELETE", self._headers({}).items(), b"", self.timeouts)
            await response.aclose()


async def _read_all(response: Answer) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response:
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise TetherError("the upstream's answer is over the size limit")
        parts.append(chunk)
    return b"".join(parts)
