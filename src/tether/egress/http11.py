"""A small HTTP/1.1 client transport for the egress proxy: httpx's request and response models
over the event loop's own streams, parsed by httptools.

httpx's default transport (httpcore on anyio, h11) cost about half of an egress request's server
CPU in a profile (connection-pool bookkeeping, a socket-readability probe through anyio's typed
attributes on every reuse, h11's per-event state machine). This one does what the proxy needs and
nothing else: one request at a time per connection, kept-alive connections pooled per origin,
bodies streamed both ways, the proxy's timeouts, TLS with httpx's own default context (the same
trust store), errors raised as httpx's exceptions, which the proxy already maps to answers.
:meth:`Http11Transport.send` is the same exchange without httpx's request and response models, for
a caller holding its whole body (an MCP upstream's, once per tool call: the models cost about 6 %
of what the gateway adds to a call).

What it refuses rather than guesses: a header name that is not a token or a value with a control
character (CR, LF, NUL: a secret rendered into a header can never add a line), a method that is not
a token, a response the parser rejects, a body cut short. It never retries: a request that may
have reached the upstream is not sent twice. Protocol upgrades and HTTP/2 are not spoken.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import httptools
import httpx

__all__ = ["MAX_HEAD_BYTES", "Answer", "Http11Transport"]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls but HTAB
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_READ_BYTES = 65536
#: An upstream's status line and headers together, at most (h11's default limit is 100 KiB).
MAX_HEAD_BYTES = 64 * 1024
_HEAD_TOO_LONG = (
    f"the upstream's answer is not valid HTTP/1.1 (the answer's head is over {MAX_HEAD_BYTES} bytes)"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Headers :meth:`Http11Transport.send` writes itself, or that would change how the request is
#: framed or the connection used: refused from its caller.
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"te"})


class _Response:
    """httptools' callbacks for one connection: the current response's head and body chunks.

    One parser per connection, so an interim answer (``100 Continue``, ``103 Early Hints``) and the
    final one that follows it parse in order. Bytes after the final answer (an upstream answering
    what was not asked) poison the connection: they are never taken for the next request's answer.
    """

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.poisoned = False
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.error: str | None = None
        self.head_done = False
        self.done = False
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()

    @property
    def interim(self) -> bool:
        return 100 <= self.status < 200 and self.status != 101

    # httptools' protocol
    def on_message_begin(self) -> None:
        if self.done and not self.interim:
            self.poisoned = True
        if not self.poisoned:
            self.reset()

    def on_status(self, status: bytes) -> None:
        if not self.poisoned:
            self._count(status)
            self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.poisoned:
            self._count(name + value)
            if not self.head_done:  # trailers (after a chunked body) are not headers
                self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if not self.poisoned:
            self.status = self.parser.get_status_code()
            self.head_done = True

    def on_body(self, body: bytes) -> None:
        if not self.poisoned:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if not self.poisoned:
            self.done = True
            # Asked now: once feed_data returns, the parser has moved on and answers False.
            self.keep_alive = self.parser.should_keep_alive()

    def _count(self, part: bytes) -> None:
        self.head_bytes += len(part)
        if self.head_bytes > MAX_HEAD_BYTES:
            self.error = f"the answer's head is over {MAX_HEAD_BYTES} bytes"
            raise ValueError(self.error)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.response = _Response()
        self.idle_since = time.monotonic()

    def usable(self, now: float, expiry: float) -> bool:
        return (
            now - self.idle_since < expiry
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            and not self.reader._buffer  # type: ignore[attr-defined]  # bytes nobody asked for
        )

    def close(self) -> None:
        self.writer.close()


def _check_head(request: httpx.Request) -> bytes:
    return _head_bytes(request.method.encode("ascii"), request.url.raw_path, request.headers.raw, request)


def _head_bytes(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], request: httpx.Request | None
) -> bytes:
    """The request line and headers, refused when the method or a header name is not a token, the
    target is empty or holds a space or control, or a value holds a control character."""
    if not _TOKEN.fullmatch(method) or not target or _BAD_TARGET.search(target):
        raise httpx.LocalProtocolError("refused: an invalid request line", request=request)
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise httpx.LocalProtocolError("refused: an invalid header field", request=request)
        lines += [name, b": ", value, b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


def _chunked(request: httpx.Request) -> bool:
    return any(
        name.lower() == b"transfer-encoding" and b"chunked" in value.lower()
        for name, value in request.headers.raw
    )


#: A body already in memory up to this size goes out in the head's write (copying it costs less than
#: a second write); a larger one is written on its own.
_JOIN_BODY_BYTES = 64 * 1024


def _in_memory(request: httpx.Request) -> bytes | None:
    """The request's body when httpx holds it in memory already and it is small, else None."""
    try:
        body = request.content
    except httpx.RequestNotRead:  # a streamed body: sent as it comes
        return None
    return body if len(body) <= _JOIN_BODY_BYTES else None


def _declared_length(request: httpx.Request) -> int:
    """The request's one Content-Length (0 without one); refused when it is not a plain number,
    is given twice, or comes with a Transfer-Encoding (a request the upstream could frame
    differently from us)."""
    lengths = [value for name, value in request.headers.raw if name.lower() == b"content-length"]
    if any(name.lower() == b"transfer-encoding" for name, _ in request.headers.raw) and lengths:
        raise httpx.LocalProtocolError("refused: both Content-Length and Transfer-Encoding", request=request)
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
        raise httpx.LocalProtocolError("refused: an invalid Content-Length", request=request)
    return int(lengths[0])


def _close_delimited(headers: list[tuple[bytes, bytes]]) -> bool:
    return not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers)


class _Body(httpx.AsyncByteStream):
    """The response body as it arrives; the connection goes back to the pool once the body was
    read to its end (and the upstream keeps it alive), and is closed otherwise."""

    def __init__(
        self, transport: Http11Transport, key: tuple[str, str, int], conn: _Connection, read: float | None
    ) -> None:
        self._transport = transport
        self._key = key
        self._conn = conn
        self._read = read
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        response = self._conn.response
        while True:
            while response.chunks:
                yield response.chunks.popleft()
            if response.done:
                break
            data = await _read(self._conn, self._read)
            if not data:
                if _close_delimited(response.headers):
                    response.done = True  # the body ends where the connection does
                    self._conn.writer.close()
                    break
                raise httpx.RemoteProtocolError("the upstream closed the connection mid-body")
            _feed(response, data)
        await self.aclose()

    async def aclose(self) -> None:
        if self._released:
            return
        self._released = True
        response = self._conn.response
        keep = response.done and not response.chunks and not response.poisoned and response.keep_alive
        self._transport._release(self._key, self._conn, keep=keep)


async def _drain(writer: asyncio.StreamWriter, seconds: float | None) -> None:
    if not writer.transport.get_write_buffer_size():
        # Everything was handed to the socket: drain does not wait (it only raises what the
        # connection met), so no timer is set for it.
        await writer.drain()
        return
    async with asyncio.timeout(seconds):
        await writer.drain()


async def _read(conn: _Connection, seconds: float | None) -> bytes:
    try:
        async with asyncio.timeout(seconds):
            return await conn.reader.read(_READ_BYTES)
    except TimeoutError:
        raise httpx.ReadTimeout("timed out reading the upstream's answer") from None
    except OSError as exc:
        raise httpx.ReadError(f"reading the upstream's answer failed: {type(exc).__name__}") from None


def _feed(response: _Response, data: bytes) -> None:
    try:
        response.parser.feed_data(data)
    except (httptools.HttpParserError, ValueError) as exc:
        why = response.error or str(exc)
        raise httpx.RemoteProtocolError(f"the upstream's answer is not valid HTTP/1.1 ({why})") from None


class Answer:
    """A response as :meth:`Http11Transport.send` gives it: its status and headers as they came,
    and its body as it arrives (iterate it once; :meth:`aclose` gives the connection back, or
    closes it when the body was not read to its end)."""

    __slots__ = ("_body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: _Body) -> None:
        self.status = status
        self.headers = headers
        self._body = body

    def header(self, name: bytes) -> str | None:
        """The value of header ``name``, several joined with ``", "`` as httpx joins them; None
        without one. Decoded as Latin-1: every byte is kept, none is guessed."""
        name = name.lower()
        values = [value for key, value in self.headers if key.lower() == name]
        if not values:
            return None
        return b", ".join(values).decode("latin-1")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body.__aiter__()

    async def aclose(self) -> None:
        await self._body.aclose()


#: Writes a request (its head, then its body) on a connection, bounded by the write timeout.
_Write = Callable[["_Connection"], Awaitable[None]]


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to upstreams on kept-alive pooled connections (see the module's docstring).

    Args:
        max_connections: Connections open at once (a request waits, up to its pool timeout).
        max_keepalive_connections: Idle connections kept per process.
        keepalive_expiry: Seconds an idle connection is kept.
        ssl_context: For ``https`` (default: httpx's, built on first use).
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        max_keepalive_connections: int = 64,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_keepalive_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._idle_count = 0
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and answer with its response, whose body streams from the connection."""
        key = self._origin(request.url, request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        head = _check_head(request)

        def write(conn: _Connection) -> Awaitable[None]:
            return self._send(conn, request, head, timeouts.get("write"))

        conn, response = await self._open(key, request.method, write, timeouts, request)
        return httpx.Response(
            response.status,
            headers=response.headers,
            stream=_Body(self, key, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": response.reason.strip()},
            request=request,
        )

    async def send(
        self,
        url: httpx.URL,
        method: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        timeouts: Mapping[str, float | None],
    ) -> Answer:
        """``method`` ``url`` with ``headers`` (``Host`` and ``Content-Length`` are added) and
        ``body``, in one write; the answer's head, its body streaming from the connection.

        The checks, errors (httpx's), pool and timeouts (``connect``, ``write``, ``read``,
        ``pool``) of :meth:`handle_async_request`, without httpx's request and response models:
        for a caller that holds its whole body and reads the answer itself (an MCP upstream's
        exchange, once per tool call)."""
        key = self._origin(url, None)
        try:
            fields = [(b"host", url.netloc)]
            fields += [(name.encode("ascii"), value.encode("ascii")) for name, value in headers]
            verb = method.encode("ascii")
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError("refused: an invalid header field") from None
        if any(name.lower() in _FRAMING for name, _ in fields[1:]):
            # Host and the body's length are this method's to write: a second one would route or
            # frame the request differently for the upstream than for us.
            raise httpx.LocalProtocolError(
                "refused: a framing or routing header (send writes Host and the length)"
            )
        fields.append((b"content-length", b"%d" % len(body)))
        whole = _head_bytes(verb, url.raw_path, fields, None) + body
        seconds = timeouts.get("write")

        async def write(conn: _Connection) -> None:
            try:
                conn.writer.write(whole)
                await _drain(conn.writer, seconds)
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending to the upstream") from None
            except OSError as exc:
                raise httpx.WriteError(f"sending to the upstream failed: {type(exc).__name__}") from None

        conn, response = await self._open(key, method, write, timeouts, None)
        return Answer(response.status, response.headers, _Body(self, key, conn, timeouts.get("read")))

    def _origin(self, url: httpx.URL, request: httpx.Request | None) -> tuple[str, str, int]:
        """The pool's key for ``url`` (scheme, host, port); refused once closed, and for a scheme
        that is not HTTP."""
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        scheme = url.scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}", request=request)
        # The host as the URL carries it (IDNA-encoded), never httpx's Unicode form: the stdlib would
        # encode that again with IDNA 2003 rules, which map some names to another domain.
        return (scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS[scheme])

    async def _open(
        self,
        key: tuple[str, str, int],
        method: str,
        write: _Write,
        timeouts: Mapping[str, float | None],
        request: httpx.Request | None,
    ) -> tuple[_Connection, _Response]:
        """A connection (pooled or new) with the request written on it and the answer's head read;
        its slot stays taken until the body is done with (:class:`_Body`)."""
        try:
            if self._slots.locked():  # every connection taken: wait for one, bounded
                async with asyncio.timeout(timeouts.get("pool")):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()  # a free slot is taken at once, without waiting
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection was free in time", request=request) from None
        conn: _Connection | None = None
        try:
            conn = self._take(key) or await self._connect(key, request, timeouts.get("connect"))
            await write(conn)
            response = await self._head(conn, method, request, timeouts.get("read"))
        except BaseException:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise
        return conn, response

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.usable(now, self._expiry):
                conn.response.reset()
                return conn
            conn.close()
        return None

    async def _connect(
        self, key: tuple[str, str, int], request: httpx.Request | None, seconds: float | None
    ) -> _Connection:
        scheme, host, port = key
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(seconds):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context is not None else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out connecting to the upstream", request=request) from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(
                f"cannot connect to the upstream: {type(exc).__name__}", request=request
            ) from None
        return _Connection(reader, writer)

    async def _send(
        self, conn: _Connection, request: httpx.Request, head: bytes, seconds: float | None
    ) -> None:
        """The head, then the body as it comes (each write bounded by ``seconds``, as httpcore's
        write timeout bounds each write: a body that arrives slowly is not a write timeout)."""
        writer = conn.writer
        try:
            chunked = _chunked(request)
            left = 0 if chunked else _declared_length(request)  # refused before anything is sent
            whole = None if chunked else _in_memory(request)
            if whole is not None:
                # One write (one segment, one wake-up of the upstream) for a body already in memory.
                if len(whole) != left:
                    longer = "longer" if len(whole) > left else "shorter"
                    raise httpx.LocalProtocolError(
                        f"refused: a body {longer} than its Content-Length", request=request
                    )
                writer.write(head + whole)
                await _drain(writer, seconds)
                return
            writer.write(head)
            await _drain(writer, seconds)
            stream: Any = request.stream
            if chunked:
                async for chunk in stream:
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        await _drain(writer, seconds)
                writer.write(b"0\r\n\r\n")
                await _drain(writer, seconds)
            else:
                async for chunk in stream:
                    if len(chunk) > left:
                        raise httpx.LocalProtocolError(
                            "refused: a body longer than its Content-Length", request=request
                        )
                    left -= len(chunk)
                    writer.write(chunk)
                    await _drain(writer, seconds)
                if left:
                    raise httpx.LocalProtocolError(
                        "refused: a body shorter than its Content-Length", request=request
                    )
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending to the upstream", request=request) from None
        except OSError as exc:
            raise httpx.WriteError(
                f"sending to the upstream failed: {type(exc).__name__}", request=request
            ) from None

    async def _head(
        self, conn: _Connection, method: str, request: httpx.Request | None, seconds: float | None
    ) -> _Response:
        response = conn.response
        fed = 0  # bytes of heads (interim ones too), bounded whatever the parser buffers in one line
        while not response.head_done or response.interim:  # an interim answer: the final one follows
            data = await _read(conn, seconds)
            if not data:
                raise httpx.RemoteProtocolError(
                    "the upstream closed the connection without an answer", request=request
                )
            fed += len(data)
            _feed(response, data)
            if fed > MAX_HEAD_BYTES and (not response.head_done or response.interim):
                raise httpx.RemoteProtocolError(_HEAD_TOO_LONG, request=request)
        if response.status == 101 or response.parser.should_upgrade():
            raise httpx.RemoteProtocolError("the upstream asked to switch protocols", request=request)
        if method == "HEAD":
            # No body follows a HEAD whatever the headers say, but the parser does not know the
            # method: whatever it took for a body is not, so the connection is not reused.
            response.done = True
            response.chunks.clear()
            conn.writer.close()
        return response

    def _sweep(self) -> None:
        """Close the idle connections that expired, of every origin."""
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            live = deque(conn for conn in idle if conn.usable(now, self._expiry))
            for conn in idle:
                if conn not in live:
                    conn.close()
            self._idle_count -= len(idle) - len(live)
            if live:
                self._idle[key] = live
            else:
                del self._idle[key]

    def _release(self, key: tuple[str, str, int], conn: _Connection, *, keep: bool) -> None:
        self._slots.release()
        if keep and self._idle_count >= self._max_idle:
            self._sweep()
        if keep and not self._closed and self._idle_count < self._max_idle and not conn.writer.is_closing():
            conn.idle_since = time.monotonic()
            self._idle.setdefault(key, deque()).append(conn)
            self._idle_count += 1
        else:
            conn.close()

    async def aclose(self) -> None:
        """Close every idle connection; requests in flight finish on theirs, which then close."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()
        self._idle_count = 0
