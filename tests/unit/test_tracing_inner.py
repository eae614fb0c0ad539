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

from tether.store.sqlite import open_sqlite
from tether.tracing import disable_inner_spans, enable_inner_spans, inner_span


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
