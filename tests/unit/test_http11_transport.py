"""The egress proxy's HTTP/1.1 transport against real upstreams on loopback, scripted byte by byte
(each test's server answers exactly what it is told, so the odd answers are real too)."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether.egress.http11 import MAX_HEAD_BYTES, Http11Transport

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Upstream"], Awaitable[None]]
LOOPBACK = "127.0.0.1"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


class Upstream:
    def __init__(self) -> None:
        self.connections = 0
        self.received: list[bytes] = []


async def read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return b""


@asynccontextmanager
async def upstream(script: Script) -> AsyncIterator[tuple[str, Upstream]]:
    state = Upstream()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            await script(reader, writer, state)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client that hung up, or the test's loop closing under a kept-alive connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", state
    finally:
        server.close()


async def answer_each(reply: bytes) -> Script:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        while head := await read_head(reader):
            state.received.append(head)
            writer.write(reply)
            await writer.drain()

    return script


async def fetch(transport: Http11Transport, request: httpx.Request) -> tuple[httpx.Response, bytes]:
    response = await transport.handle_async_request(request)
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    finally:
        await response.aclose()
    return response, body


def get(url: str, path: str = "/x", **kw: object) -> httpx.Request:
    return httpx.Request("GET", url + path, **kw)  # type: ignore[arg-type]


async def test_a_kept_alive_connection_serves_the_next_request() -> None:
    async with upstream(await answer_each(OK)) as (url, state):
        transport = Http11Transport()
        for _ in range(3):
            response, body = await fetch(transport, get(url))
            assert (response.status_code, body) == (200, b"hello")
            assert response.extensions["reason_phrase"] == b"OK"
        await transport.aclose()
    assert state.connections == 1
    assert state.received[0].startswith(b"GET /x HTTP/1.1\r\n")
    assert b"host: 127.0.0.1" in state.received[0].lower()


async def test_a_chunked_answer_streams_and_the_connection_is_kept() -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    async with upstream(await answer_each(reply)) as (url, state):
        transport = Http11Transport()
        for _ in range(2):
            _, body = await fetch(transport, get(url))
            assert body == b"abcdefg"
        await transport.aclose()
    assert state.connections == 1


async def test_a_body_that_ends_with_the_connection_is_read_to_the_end_and_not_reused() -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        await read_head(reader)
        writer.write(reply)
        await writer.drain()

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        for _ in range(2):
            _, body = await fetch(transport, get(url))
            assert body == b"until the end"
        await transport.aclose()
    assert state.connections == 2


async def test_a_body_cut_short_is_an_error() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()

    async with upstream(script) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="mid-body"):
            await fetch(transport, get(url))
        await transport.aclose()


async def test_a_head_answer_has_no_body_whatever_its_length_says() -> None:
    async with upstream(await answer_each(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")) as (url, _):
        transport = Http11Transport()
        response, body = await asyncio.wait_for(fetch(transport, httpx.Request("HEAD", url + "/x")), 5)
        assert (response.status_code, body, response.headers["content-length"]) == (200, b"", "1000")
        await transport.aclose()


@pytest.mark.parametrize(
    "interim", [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"]
)
async def test_an_interim_answer_is_skipped_for_the_final_one(interim: bytes) -> None:
    async with upstream(await answer_each(interim + OK)) as (url, state):
        transport = Http11Transport()
        for _ in range(2):
            response, body = await fetch(transport, get(url))
            assert (response.status_code, body) == (200, b"hello")
            assert "link" not in response.headers
        await transport.aclose()
    assert state.connections == 1


async def test_bytes_nobody_asked_for_are_never_taken_for_the_next_answer() -> None:
    # An upstream that answers twice to one request: the second answer must not become the
    # answer to the next request (response queue poisoning).
    evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        first = True
        while await read_head(reader):
            writer.write(OK + evil if first else OK)
            first = False
            await writer.drain()

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        for _ in range(2):
            _, body = await fetch(transport, get(url))
            assert body == b"hello"
        await transport.aclose()
    assert state.connections == 2


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer x\r\nX-Injected: 1")],
        [(b"authorization", b"Bearer x\nX-Injected: 1")],
        [(b"x-bad\r\nname", b"v")],
        [(b"x", b"nul\x00")],
    ],
)
async def test_a_header_that_would_add_a_line_is_refused_before_anything_is_sent(
    headers: list[tuple[bytes, bytes]],
) -> None:
    async with upstream(await answer_each(OK)) as (url, state):
        transport = Http11Transport()
        with pytest.raises(httpx.LocalProtocolError):
            await transport.handle_async_request(get(url, headers=headers))
        await transport.aclose()
    assert state.connections == 0


async def test_an_endless_head_is_refused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(MAX_HEAD_BYTES // 100 + 10):
            writer.write(b"x-filler-%d: %s\r\n" % (i, b"a" * 90))
        await writer.drain()
        await reader.read()  # until the client hangs up

    async with upstream(script) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="head is over"):
            await asyncio.wait_for(fetch(transport, get(url)), 5)
        await transport.aclose()


async def test_a_streamed_request_body_is_sent_chunked() -> None:
    got: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        head = await read_head(reader)
        assert b"transfer-encoding: chunked" in head.lower()
        body = b""
        while not body.endswith(b"0\r\n\r\n"):
            body += await reader.read(1024)
        got.append(body)
        writer.write(OK)
        await writer.drain()

    async def parts() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b""
        yield b"0123456789abcdefX"

    async with upstream(script) as (url, _):
        transport = Http11Transport()
        _, body = await fetch(transport, httpx.Request("POST", url + "/up", content=parts()))
        assert body == b"hello"
        await transport.aclose()
    assert got == [b"3\r\nabc\r\n11\r\n0123456789abcdefX\r\n0\r\n\r\n"]


async def test_timeouts_and_refusals_are_httpx_errors() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        await read_head(reader)
        await reader.read()  # never answers; until the client hangs up

    timeout = {"connect": 1.0, "read": 0.2, "write": 1.0, "pool": 1.0}
    async with upstream(silent) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(get(url, extensions={"timeout": timeout}))
        await transport.aclose()
    async with upstream(silent) as (url, _):
        pass  # closed: nobody listens on its port any more
    transport = Http11Transport()
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(get(url))
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/x"))
    await transport.aclose()


async def test_a_request_waits_for_a_free_connection_up_to_its_pool_timeout() -> None:
    async with upstream(await answer_each(OK)) as (url, state):
        transport = Http11Transport(max_connections=1)
        held = await transport.handle_async_request(get(url))  # its body not read: the slot is taken
        with pytest.raises(httpx.PoolTimeout):
            await transport.handle_async_request(get(url, extensions={"timeout": {"pool": 0.2}}))
        await held.aread()
        await held.aclose()  # read to its end: the connection goes back, and serves the next request
        _, body = await fetch(transport, get(url))
        assert body == b"hello"
        await transport.aclose()
    assert state.connections == 1


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_https_is_verified_with_httpxs_trust_store_unless_given_a_context(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    script = await answer_each(OK)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer, Upstream())
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_side)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        default = Http11Transport()  # httpx's context: this self-signed certificate is not trusted
        with pytest.raises(httpx.ConnectError):
            await default.handle_async_request(get(url))
        await default.aclose()
        trusting = Http11Transport(ssl_context=ssl.create_default_context(cafile=str(cert)))
        for _ in range(2):
            response, body = await fetch(trusting, get(url))
            assert (response.status_code, body) == (200, b"hello")
        await trusting.aclose()
    finally:
        server.close()


async def test_the_host_is_resolved_as_the_url_carries_it_never_re_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # httpx shows xn--fa-hia.de as "faß.de"; the stdlib's IDNA 2003 would turn that into fass.de,
    # another domain. No DNS here: the resolver is replaced by one that records the name asked.
    asked: list[object] = []
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: object, port: object, *args: object, **kw: object) -> object:
        asked.append(host)
        return await real(LOOPBACK, port, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    async with upstream(await answer_each(OK)) as (url, _):
        port = url.rsplit(":", 1)[1]
        transport = Http11Transport()
        _, body = await fetch(transport, get(f"http://xn--fa-hia.de:{port}"))
        assert body == b"hello"
        await transport.aclose()
    assert asked in (["xn--fa-hia.de"], [b"xn--fa-hia.de"])


async def test_one_endless_header_line_is_refused_once_the_head_limit_is_read() -> None:
    sent = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        nonlocal sent
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(256):  # up to 16 MiB, in one line that never ends
            writer.write(b"a" * 65536)
            sent += 65536
            await writer.drain()

    async with upstream(script) as (url, _):
        transport = Http11Transport()
        with pytest.raises(httpx.RemoteProtocolError, match="head is over"):
            await asyncio.wait_for(fetch(transport, get(url)), 5)
        await transport.aclose()
    assert sent < 4 * 1024 * 1024  # refused long before the upstream was done


@pytest.mark.parametrize(
    ("headers", "parts"),
    [
        ([(b"content-length", b"5")], [b"hello", b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"]),
        ([(b"content-length", b"10")], [b"short"]),
        ([(b"content-length", b"5"), (b"content-length", b"5")], [b"hello"]),
        ([(b"content-length", b"+5")], [b"hello"]),
    ],
)
async def test_a_body_that_does_not_match_its_content_length_is_refused(
    headers: list[tuple[bytes, bytes]], parts: list[bytes]
) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        state.received.append(await reader.read())

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        request = httpx.Request("POST", url + "/a", headers=headers, content=body())
        with pytest.raises(httpx.LocalProtocolError):
            await asyncio.wait_for(transport.handle_async_request(request), 5)
        await transport.aclose()
    assert not any(b"smuggled" in got for got in state.received)


@pytest.mark.parametrize(
    "headers",
    [[(b"content-length", b"5"), (b"content-length", b"5")], [(b"content-length", b"+5")]],
)
async def test_a_malformed_content_length_is_refused_before_the_head_is_sent(
    headers: list[tuple[bytes, bytes]],
) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"hello"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        state.received.append(await reader.read())

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        request = httpx.Request("POST", url + "/a", headers=headers, content=body())
        with pytest.raises(httpx.LocalProtocolError, match="refused"):
            await asyncio.wait_for(transport.handle_async_request(request), 5)
        await transport.aclose()
        await asyncio.sleep(0.05)  # the upstream reads what (if anything) arrived before the close
    assert all(got == b"" for got in state.received)


@pytest.mark.parametrize(
    ("headers", "content"),
    [
        ([(b"content-length", b"5")], b"helloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ([(b"content-length", b"10")], b"short"),
        ([(b"content-length", b"5"), (b"content-length", b"5")], b"hello"),
        ([(b"content-length", b"+5")], b"hello"),
    ],
)
async def test_a_body_in_memory_that_does_not_match_its_content_length_is_refused(
    headers: list[tuple[bytes, bytes]], content: bytes
) -> None:
    # A body httpx holds in memory goes out in the head's write: checked the same way first.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        state.received.append(await reader.read())

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        request = httpx.Request("POST", url + "/a", headers=headers, content=content)
        with pytest.raises(httpx.LocalProtocolError, match="refused"):
            await asyncio.wait_for(transport.handle_async_request(request), 5)
        await transport.aclose()
    assert not any(b"smuggled" in got or b"hello" in got or b"short" in got for got in state.received)


async def test_a_body_in_memory_is_sent_whole_and_the_connection_kept() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        while head := await read_head(reader):
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            state.received.append(head + await reader.readexactly(length))
            writer.write(OK)
            await writer.drain()

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        for content in (b'{"jsonrpc": "2.0"}', b"", b"x" * 100_000):  # the last: above the join limit
            response, body = await fetch(transport, httpx.Request("POST", url + "/a", content=content))
            assert (response.status_code, body) == (200, b"hello")
        await transport.aclose()
    assert state.connections == 1
    assert [got.split(b"\r\n\r\n", 1)[1] for got in state.received] == [
        b'{"jsonrpc": "2.0"}',
        b"",
        b"x" * 100_000,
    ]


async def test_a_head_answer_closes_its_connection_and_trailers_are_not_headers() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: t\r\n\r\n"
    async with upstream(await answer_each(chunked)) as (url, state):
        transport = Http11Transport()
        response, body = await fetch(transport, get(url))
        assert body == b"ok"
        assert "x-trailer" not in response.headers
        await fetch(transport, httpx.Request("HEAD", url + "/x"))
        await fetch(transport, get(url))
        await transport.aclose()
    assert state.connections == 2  # the HEAD's connection was not reused


async def test_expired_idle_connections_of_other_origins_are_closed_to_make_room() -> None:
    async with upstream(await answer_each(OK)) as (first, _), upstream(await answer_each(OK)) as (second, _):
        transport = Http11Transport(max_keepalive_connections=1, keepalive_expiry=0.05)
        await fetch(transport, get(first))
        await asyncio.sleep(0.1)  # the first origin's idle connection expires
        await fetch(transport, get(second))
        assert transport._idle_count == 1
        assert list(transport._idle) == [("http", LOOPBACK, int(second.rsplit(":", 1)[1]))]
        await transport.aclose()


# -- send: a whole body out, the answer's head and body back, without httpx's models ----------


async def test_send_writes_host_length_and_body_in_one_request_and_reuses_the_connection() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nX-Twice: a\r\nContent-Type: text/plain\r\nX-Twice: b\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream) -> None:
        while head := await read_head(reader):
            length = int(
                next(
                    v
                    for k, v in (line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
                    if k.lower() == b"content-length"
                )
            )
            state.received.append(head + await reader.readexactly(length))
            writer.write(reply)
            await writer.drain()

    async with upstream(script) as (url, state):
        transport = Http11Transport()
        for n in range(2):
            answer = await transport.send(
                httpx.URL(url + "/mcp?q=1"), "POST", [("x-n", str(n))], b'{"n": %d}' % n, {"read": 5.0}
            )
            body = b"".join([chunk async for chunk in answer])
            await answer.aclose()
            assert (answer.status, body) == (200, b"hello")
            assert answer.header(b"content-type") == "text/plain"
            assert answer.header(b"x-twice") == "a, b"  # several joined, as httpx joins them
            assert answer.header(b"x-none") is None
        await transport.aclose()
    assert state.connections == 1
    host = url.removeprefix("http://").encode()
    assert state.received[1] == (
        b"POST /mcp?q=1 HTTP/1.1\r\nhost: " + host + b"\r\nx-n: 1\r\ncontent-length: 8\r\n\r\n" + b'{"n": 1}'
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-evil", "a\r\nx-injected: 1"), ("x-nul", "a\x00b"), ("bad name", "v"), ("x-latin", "caf\u00e9")],
)
async def test_send_refuses_a_header_that_could_add_a_line_or_is_not_ascii(name: str, value: str) -> None:
    async with upstream(await answer_each(OK)) as (url, state):
        transport = Http11Transport()
        with pytest.raises(httpx.LocalProtocolError, match="invalid header field"):
            await transport.send(httpx.URL(url + "/x"), "POST", [(name, value)], b"", {})
        await transport.aclose()
    assert state.connections == 0  # refused before anything was sent


async def test_send_on_a_closed_transport_or_to_another_scheme_is_refused() -> None:
    transport = Http11Transport()
    with pytest.raises(httpx.UnsupportedProtocol):
        await transport.send(httpx.URL("ftp://127.0.0.1/x"), "POST", [], b"", {})
    await transport.aclose()
    with pytest.raises(httpx.ConnectError, match="closed"):
        await transport.send(httpx.URL("http://127.0.0.1:1/x"), "POST", [], b"", {})


async def test_send_gives_the_connection_back_only_when_the_body_was_read() -> None:
    async with upstream(await answer_each(OK)) as (url, state):
        transport = Http11Transport(max_connections=1)
        answer = await transport.send(httpx.URL(url + "/x"), "POST", [], b"", {"pool": 5.0})
        await answer.aclose()  # not read: the connection is closed, its slot freed
        answer = await transport.send(httpx.URL(url + "/x"), "POST", [], b"", {"pool": 5.0})
        assert b"".join([chunk async for chunk in answer]) == b"hello"
        await answer.aclose()
        await transport.aclose()
    assert state.connections == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("host", "other.example"),
        ("Content-Length", "0"),
        ("transfer-encoding", "chunked"),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("te", "trailers"),
    ],
)
async def test_send_refuses_a_header_that_would_route_or_frame_the_request_otherwise(
    name: str, value: str
) -> None:
    async with upstream(await answer_each(OK)) as (url, state):
        transport = Http11Transport()
        with pytest.raises(httpx.LocalProtocolError, match="framing or routing"):
            await transport.send(httpx.URL(url + "/x"), "POST", [(name, value)], b'{"a": 1}', {})
        await transport.aclose()
    assert state.connections == 0


async def test_a_body_the_upstream_never_reads_is_a_write_timeout_and_frees_its_slot() -> None:
    async def never_reads(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: Upstream
    ) -> None:
        await asyncio.sleep(10)

    async with upstream(never_reads) as (url, _):
        transport = Http11Transport(max_connections=1)
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), 0.3)
        with pytest.raises(httpx.WriteTimeout):
            await transport.send(httpx.URL(url + "/x"), "POST", [], b"x" * (32 << 20), timeouts)
        assert not transport._slots.locked()  # the slot was given back
        with pytest.raises(httpx.WriteTimeout):  # the same through handle_async_request
            await transport.handle_async_request(
                httpx.Request("POST", url + "/x", content=b"x" * (32 << 20), extensions={"timeout": timeouts})
            )
        assert not transport._slots.locked()
        await transport.aclose()
