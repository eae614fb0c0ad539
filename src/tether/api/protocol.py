"""uvicorn's httptools protocol, with a response's head and body sent in one write.

uvicorn writes an answer's status line and headers as soon as the app sends
``http.response.start``, then its body in a second write: two ``send`` system calls and two TCP
segments for every answer, and on loopback the kernel does the receiver's work in the sender's
system call. Every agent request is small and answered in one body, so the head is held until the
body's write and both go out together. A head whose body does not follow in the same turn of the
event loop (a ``HEAD`` answer, a stream that waits for its first chunk) is sent at the end of that
turn, so nothing waits longer than it would have.

uvicorn also writes its access line when the app sends ``http.response.start``: before the head
and body leave. Here that line is written at the end of the same turn of the event loop instead,
after the answer (the request's context, and so its request id, go with it): a log line costs a
busy server some 40 µs, which no answer waits for any more.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeadWithBodyProtocol"]

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class _HeadWithBody:
    """The connection's transport for uvicorn's request cycle: a response head is held until the
    next write (its body) or the end of the event loop's turn; everything else passes through."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(_HEAD_START) and data.endswith(_HEAD_END):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _AfterTheAnswer:
    """uvicorn's access logger, its lines written at the end of the event loop's turn (after the
    answer that the line is about has been written); anything else passes through."""

    __slots__ = ("_logger", "_loop")

    def __init__(self, logger: logging.Logger, loop: asyncio.AbstractEventLoop) -> None:
        self._logger = logger
        self._loop = loop

    def info(self, msg: str, *args: object, **kwargs: Any) -> None:
        # call_soon runs it in a copy of this context: the line carries the request's id.
        self._loop.call_soon(functools.partial(self._logger.info, msg, *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)


class HeadWithBodyProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=HeadWithBodyProtocol)``: httptools, one write per small answer, the
    access line after it."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _HeadWithBody(transport, self.loop)  # type: ignore[assignment]
        self.access_logger = _AfterTheAnswer(self.access_logger, self.loop)  # type: ignore[assignment]
