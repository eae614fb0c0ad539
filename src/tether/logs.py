"""Logs of a serving node: one line per record, ``text`` for people or ``json`` for machines, each
line of a request carrying that request's id.

The id comes from the request's ``X-Request-Id`` header when it is sane (1-64 characters of
``A-Z a-z 0-9 . _ : -``: nothing that could forge a log line or a JSON field), else it is generated;
the response echoes it in ``X-Request-Id``. It lives in a :class:`~contextvars.ContextVar`, so
everything logged while the request is handled (uvicorn's access line included) carries it, and a
logging filter puts it on every record.

Log records never carry secret values: Tether logs ids, paths, kinds and counts, and the test
suite's leak scan fails the run if a planted secret reaches any log line.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from tether.config import LOG_FORMATS

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "LOG_FORMATS",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "TextFormatter",
    "configure_logging",
    "current_request_id",
    "request_id",
]

REQUEST_ID_HEADER: Final = "X-Request-Id"
#: ``2026-01-01 12:00:00,000 INFO [3f9c0a1b2c3d4e5f] tether.api.server: message`` (no brackets outside a
#: request); workers add ``[worker PID]`` after the logger's name.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s%(request_tag)s %(name)s%(label)s: %(message)s"
_HEADER = REQUEST_ID_HEADER.lower().encode("latin-1")
_SANE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_NONE = "-"

request_id: ContextVar[str | None] = ContextVar("tether_request_id", default=None)

# The standard attributes of a LogRecord; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "request_tag",
    "taskName",
}


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return request_id.get()


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record: ``record.request_id`` (``-`` outside a
    request) and ``record.request_tag`` (`` [id]``, or empty outside a request) for text lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.request_id = rid or _NONE
        record.request_tag = f" [{rid}]" if rid else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` (when there is one), ``process``, fields passed with ``extra=`` and ``exc_type``
    for an exception (the class name only: exception text from deep inside may quote data)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        rid = getattr(record, "request_id", None)
        if rid and rid != _NONE:
            entry["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Text lines, with an exception as its type only, as in the JSON lines: an exception's text,
    or a traceback's lines, can quote data a library was handed (an MCP upstream's malformed
    notification, say, which may hold the very secret injected into that upstream)."""

    _second: tuple[int, str] = (-1, "")  # the last second formatted, and its text

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        kind = ei[0].__name__ if ei and ei[0] is not None else "Exception"
        return f"  exc_type={kind} (details withheld: exception text can quote secret data)"

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """logging's own ``2026-01-01 12:00:00,000``, the date and time formatted once a second
        instead of for every line (``localtime`` and ``strftime`` were some 10 of the 56 µs an
        access line cost a busy worker)."""
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second  # one tuple, read and replaced whole: safe across threads
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, self.converter(record.created)))
            self._second = cached
        return f"{cached[1]},{int(record.msecs):03d}"  # logging's default_msec_format

    def format(self, record: logging.LogRecord) -> str:
        cached = record.exc_text  # another handler's full text: never reused here
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached


def configure_logging(log_format: str = "text", *, level: int = logging.INFO, label: str = "") -> None:
    """Send the process's log records to stderr in ``log_format`` (``text`` or ``json``).

    Replaces the handlers a previous call installed, so calling it again switches formats.
    ``label`` (e.g. ``worker``) is added to text lines with the process id.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        tag = f" [{label} %(process)d]" if label else ""
        handler.setFormatter(TextFormatter(TEXT_FORMAT.replace("%(label)s", tag)))
    handler._tether = True  # type: ignore[attr-defined]  # ours, to replace on the next call
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_tether", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # What neither format shows is not gathered for every record: the caller's file, line and
    # function (a walk up the stack) and the thread (logging's HOWTO, "Optimization"). The
    # process id stays: worker lines and JSON lines show it.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its per-start INFO lines are noise here


def _new_id() -> str:
    # An id, not a secret: 64 random bits without a system call per request.
    return f"{random.getrandbits(64):016x}"


class RequestIdMiddleware:
    """ASGI middleware: a request id per HTTP request, in the context and echoed in the answer.

    Outermost, so every log line of the request (including uvicorn's access line, which
    :mod:`tether.api.protocol` writes once the answer is out, in the request's context) carries it.
    Costs one header scan and a context variable per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == _HEADER:
                rid = value.decode("ascii") if _SANE.fullmatch(value) else None
                break
        rid = rid or _new_id()
        token = request_id.set(rid)
        header = (_HEADER, rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
