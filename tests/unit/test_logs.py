"""Structured logs (``tether.logs``): text and JSON lines, a request id on every line of a request,
taken from a sane ``X-Request-Id`` or generated, and echoed."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tether.logs import (
    TEXT_FORMAT,
    JsonFormatter,
    RequestIdFilter,
    RequestIdMiddleware,
    TextFormatter,
    configure_logging,
    request_id,
)

log = logging.getLogger("tether.test_logs")


def _capture(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(formatter)
    return handler, stream


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    handler, stream = _capture(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        log.removeHandler(handler)


def _records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    log.info("handling %s", scope["path"], extra={"task_id": "t-1"})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": (request_id.get() or "").encode()})


async def _get(headers: dict[str, str] | dict[str, bytes] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=RequestIdMiddleware(_app))
    async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as client:
        return await client.get("/v1/sys/health", headers=headers)


def test_json_lines_are_one_object_each_with_extra_fields(json_lines: io.StringIO) -> None:
    log.info("no request here")
    token = request_id.set("abc123")
    try:
        log.warning("in a request", extra={"client_id": "spiffe://acme.test/agent/a"})
    finally:
        request_id.reset(token)
    first, second = _records(json_lines)
    assert first["message"] == "no request here"
    assert "request_id" not in first
    assert second["request_id"] == "abc123"
    assert second["level"] == "WARNING"
    assert second["logger"] == "tether.test_logs"
    assert second["client_id"] == "spiffe://acme.test/agent/a"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", str(second["time"]))


def test_json_exceptions_carry_the_class_name_only(json_lines: io.StringIO) -> None:
    try:
        raise ValueError("text that might quote data")
    except ValueError:
        log.exception("failed")
    (record,) = _records(json_lines)
    assert record["exc_type"] == "ValueError"
    assert "quote data" not in json_lines.getvalue()


async def test_a_request_gets_a_generated_id_on_every_line_and_in_the_answer(json_lines: io.StringIO) -> None:
    response = await _get()
    rid = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid)
    assert response.text == rid
    (record,) = _records(json_lines)
    assert record["request_id"] == rid
    assert record["task_id"] == "t-1"
    assert request_id.get() is None  # reset after the request


async def test_two_requests_get_different_ids() -> None:
    first, second = await _get(), await _get()
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_a_sane_incoming_request_id_is_kept_and_echoed(json_lines: io.StringIO) -> None:
    response = await _get({"X-Request-Id": "edge-01:7f3a.b_c-9"})
    assert response.headers["x-request-id"] == "edge-01:7f3a.b_c-9"
    assert _records(json_lines)[0]["request_id"] == "edge-01:7f3a.b_c-9"


@pytest.mark.parametrize(
    "incoming", ["", "a" * 65, "two words", 'quote"d', "new\\nline", "{json}", "ünïcode", "a/b"]
)
async def test_an_odd_incoming_request_id_is_replaced(incoming: str) -> None:
    response = await _get({"X-Request-Id": incoming.encode("utf-8")})
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])


def test_text_exceptions_carry_the_class_name_only_even_from_a_librarys_logger() -> None:
    # A library logs a parse failure with its traceback; the error quotes what it was handed (an
    # MCP upstream's malformed notification holding the secret injected into that upstream). Not a
    # planted canary: the suite's own log scan reads exception text too, and would count this one.
    canary = f"quoted-data-{uuid.uuid4().hex}"
    handler, stream = _capture(TextFormatter(TEXT_FORMAT.replace("%(label)s", "")))
    other = logging.getLogger("mcp.client.session")
    other.addHandler(handler)
    try:
        try:
            raise ValueError(f"input_value={canary!r}")
        except ValueError:
            other.warning("Failed to validate notification: %s", "notifications/message", exc_info=True)
            # Another handler formatted the record first (its full traceback cached on it).
            record = other.makeRecord(other.name, logging.WARNING, __file__, 1, "again", (), sys.exc_info())
            logging.Formatter().format(record)
            assert record.exc_text
            assert canary in record.exc_text
            handler.handle(record)
    finally:
        other.removeHandler(handler)
    text = stream.getvalue()
    assert canary not in text
    assert text.count("exc_type=ValueError") == 2
    assert "Failed to validate notification: notifications/message" in text


def test_text_lines_show_the_request_id_only_within_a_request() -> None:
    handler, stream = _capture(logging.Formatter("%(levelname)s%(request_tag)s %(name)s: %(message)s"))
    log.addHandler(handler)
    try:
        log.info("outside")
        token = request_id.set("r1")
        log.info("inside")
        request_id.reset(token)
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        "INFO tether.test_logs: outside",
        "INFO [r1] tether.test_logs: inside",
    ]


def test_text_times_read_as_loggings_own_across_second_boundaries() -> None:
    """The date and time are formatted once a second: a line of the next second, or of an earlier
    one (another thread's record, formatted late), never carries a stale second."""
    ours, reference = TextFormatter(TEXT_FORMAT), logging.Formatter()
    for created in (
        1_700_000_000.999,
        1_700_000_001.0004,
        1_700_000_001.5,
        1_700_000_000.25,
        1_700_003_601.0,
    ):
        record = logging.LogRecord("tether.t", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.formatTime(record) == reference.formatTime(record)
    assert ours.formatTime(record, "%H") == reference.formatTime(record, "%H")


def test_configure_logging_replaces_its_own_handler_and_refuses_unknown_formats() -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    switches = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    try:
        configure_logging("text")
        configure_logging("json", label="worker")
        ours = [h for h in root.handlers if getattr(h, "_tether", False)]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        configure_logging("text")
        [text] = [h for h in root.handlers if getattr(h, "_tether", False)]
        assert isinstance(text.formatter, TextFormatter)
        # Nothing either format shows is gathered for a record: no caller lookup, no thread.
        assert (logging._srcfile, logging.logThreads, logging.logMultiprocessing) == (None, False, False)
        with pytest.raises(ValueError, match="text, json"):
            configure_logging("xml")
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
        root.setLevel(level)
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = switches
