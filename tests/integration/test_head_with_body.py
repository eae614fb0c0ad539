"""Each answer's head and body leave in one write (tether.api.protocol), over a real uvicorn on
loopback: the bytes a client reads are the same HTTP as before, a head without a body (HEAD) still
goes out, and a streamed answer's head is not held back until its first chunk."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from tether.api.protocol import HeadWithBodyProtocol, _HeadWithBody
from tether.logs import RequestIdFilter, RequestIdMiddleware


class _Recorder:
    """A transport that records each write (the kernel would see one send each)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


async def test_a_head_and_its_body_are_one_write() -> None:
    inner = _Recorder()
    transport = _HeadWithBody(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert inner.writes == []
    transport.write(b"{}")
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"more")  # not a head: straight through
    assert inner.writes[-1] == b"more"
    assert transport.get_extra_info("peername") == "extra:peername"


async def test_a_head_alone_goes_out_at_the_end_of_the_turn_and_before_a_close() -> None:
    inner = _Recorder()
    transport = _HeadWithBody(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    transport.close()
    assert inner.writes[-1] == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    assert inner.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing held
    assert len(inner.writes) == 2


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-first", b"1")]})
        await asyncio.sleep(2.0)  # the head must reach the client before this chunk
        await send({"type": "http.response.body", "body": b"late", "more_body": False})
        return
    body = b"" if scope["method"] == "HEAD" else b"hello"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": body})


async def _read_until(reader: asyncio.StreamReader, marker: bytes, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.readuntil(marker), timeout)


@pytest.fixture
async def server_port() -> object:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        _app, http=HeadWithBodyProtocol, log_config=None, lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def test_over_uvicorn_get_head_and_a_stream_are_answered(server_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await _read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.write(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await _read_until(reader, b"\r\n\r\n")  # no body follows a HEAD answer's head
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"content-length: 5" in head
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await _read_until(reader, b"\r\n\r\n", timeout=1.5)  # before the chunk is sent
        assert b"x-first: 1" in head
        assert b"late" in await _read_until(reader, b"0\r\n\r\n")
    finally:
        writer.close()


async def test_the_access_line_is_written_after_the_answer_with_the_requests_id() -> None:
    """uvicorn writes its access line when the answer starts; here it comes once the answer is
    written, still in the request's context (its id)."""
    events: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        events.append("answered")

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            events.append(f"logged {record.getMessage()} id={getattr(record, 'request_id', None)}")

    handler = Lines()
    handler.addFilter(RequestIdFilter())
    access = logging.getLogger("uvicorn.access")
    level = access.level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        RequestIdMiddleware(app), http=HeadWithBodyProtocol, log_config=None, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        writer.write(b"GET /x?y=1 HTTP/1.1\r\nhost: x\r\nx-request-id: req-42\r\n\r\n")
        head = await _read_until(reader, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 201 Created\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"ok"
        writer.close()
        for _ in range(100):
            if len(events) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
        server.should_exit = True
        await asyncio.wait_for(task, 10)
    assert events[0] == "answered"
    assert events[1].startswith("logged 127.0.0.1:")
    assert events[1].endswith(' - "GET /x?y=1 HTTP/1.1" 201 id=req-42')
