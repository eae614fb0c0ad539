"""Spans inside a request (decision, store, egress): emitted only while tracing is on, and carrying
names and counts, never values."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tether.store.sqlite import open_sqlite
from tether.tracing import disable_inner_spans, enable_inner_spans, inner_span, textless_mcp_spans


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    enable_inner_spans(provider)
    try:
        yield exporter
    finally:
        disable_inner_spans()
        provider.shutdown()


def test_off_an_inner_span_is_one_shared_empty_context() -> None:
    disable_inner_spans()
    first, second = inner_span("tether.decide", {}), inner_span("tether.store.read", {})
    assert first is second
    with first as span:
        assert span is None


async def test_store_reads_and_writes_are_spans_with_the_database_only(
    exported: InMemorySpanExporter, tmp_path: Path
) -> None:
    store = open_sqlite(tmp_path / "tether.db")
    await store.migrate()
    try:
        assert await store.get_agent("spiffe://acme.test/agent/nobody") is None
        now = datetime.now(UTC)
        assert await store.remember_jti(b"k" * 32, expires_at=now + timedelta(minutes=1), now=now)
    finally:
        await store.close()
    spans = {span.name: dict(span.attributes or {}) for span in exported.get_finished_spans()}
    assert spans["tether.store.read"] == {"db.system": "sqlite"}
    assert spans["tether.store.write"] == {"db.system": "sqlite"}


def test_a_span_carries_only_what_it_was_given(exported: InMemorySpanExporter) -> None:
    with inner_span("tether.decide", {"tether.action": "activate"}) as span:
        span.set_attribute("tether.allowed", True)
    (finished,) = exported.get_finished_spans()
    assert finished.name == "tether.decide"
    assert dict(finished.attributes or {}) == {"tether.action": "activate", "tether.allowed": True}


async def test_the_mcp_sdks_span_middleware_runs_only_while_tracing_is_on() -> None:
    from tether.mcp.front import _WhileTracing

    spans: list[str] = []

    class Span:
        async def __call__(self, ctx: Any, call_next: Any) -> Any:
            spans.append(ctx)
            return await call_next(ctx)

    async def handler(ctx: Any) -> dict[str, str]:
        return {"handled": ctx}

    middleware = _WhileTracing(Span())  # type: ignore[arg-type]
    disable_inner_spans()
    assert await middleware("off", handler) == {"handled": "off"}
    provider = TracerProvider()
    enable_inner_spans(provider)
    try:
        assert await middleware("on", handler) == {"handled": "on"}
    finally:
        disable_inner_spans()
        provider.shutdown()
    assert spans == ["on"]


def test_a_failed_inner_span_says_the_exceptions_type_never_its_text(exported: InMemorySpanExporter) -> None:
    secret = "s3cr3t-in-the-exception"
    with pytest.raises(ValueError, match="s3cr3t"), inner_span("tether.egress.upstream", {}):
        raise ValueError(f"the upstream answered {secret}")
    (finished,) = exported.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == "ValueError"
    assert not finished.events
    assert secret not in finished.to_json()


def test_the_mcp_sdks_spans_carry_no_error_text(exported: InMemorySpanExporter) -> None:
    """The SDK's client span puts an upstream's error message in its status (it can hold the
    secret injected into that upstream): while tracing is on, the SDK's tracer is wrapped."""
    from mcp.shared import _otel

    secret = "s3cr3t-in-the-upstreams-error"
    provider = TracerProvider()
    sdk_exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(sdk_exported))
    original = _otel._tracer
    _otel._tracer = provider.get_tracer("mcp-python-sdk")
    try:
        textless_mcp_spans()
        textless_mcp_spans()  # once is enough: not wrapped twice
        assert not hasattr(_otel._tracer.tracer, "tracer")
        with _otel.otel_span("MCP send tools/call search", kind=SpanKind.CLIENT) as span:
            span.set_status(StatusCode.ERROR, f"upstream broke while using {secret}")
            span.record_exception(ValueError(secret))
        with (
            pytest.raises(ValueError, match="s3cr3t"),
            _otel.otel_span("tools/call gh__search", kind=SpanKind.SERVER),
        ):
            raise ValueError(secret)
    finally:
        _otel._tracer = original
        provider.shutdown()
    spans = sdk_exported.get_finished_spans()
    assert [s.status.status_code for s in spans] == [StatusCode.ERROR, StatusCode.ERROR]
    assert [s.status.description for s in spans] == [None, "ValueError"]
    assert all(secret not in s.to_json() and not s.events for s in spans)


def test_the_mcp_sdks_tracer_is_left_alone_while_tracing_is_off() -> None:
    from mcp.shared import _otel

    disable_inner_spans()
    before = _otel._tracer
    textless_mcp_spans()
    assert _otel._tracer is before
