"""While tracing is on, an upstream's error that quotes the secret injected into it reaches no
span: not the MCP SDK's client span (which puts the error message in its status), not Tether's.
Against the real stdio test upstream (its ``fail_secret`` tool fails with the token in its message
and data)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.shared import _otel
from mcp.shared.exceptions import MCPError
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.test_mcp_upstream_cancel import stdio_upstream
from tests.security.canaries import new_canary
from tether.tracing import disable_inner_spans, enable_inner_spans, inner_span


async def test_an_upstreams_error_with_the_secret_reaches_no_span(tmp_path: Path) -> None:
    secret = new_canary("mcp-trace")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = _otel._tracer
    _otel._tracer = provider.get_tracer("mcp-python-sdk")  # as the global provider would give it
    enable_inner_spans(provider)
    session = stdio_upstream(tmp_path, secret)
    try:
        await session.start()
        with inner_span("tether.test", {}), pytest.raises(MCPError) as failed:
            await session.call_tool("fail_secret", {})
        assert secret in failed.value.error.message  # the upstream did send it back
        # Once more through a span of Tether's own that fails with it.
        with pytest.raises(MCPError), inner_span("tether.test.failing", {}):
            await session.call_tool("fail_secret", {})
    finally:
        await session.close()
        disable_inner_spans()
        _otel._tracer = original
        provider.shutdown()
    spans = exporter.get_finished_spans()
    sdk_spans = [s for s in spans if s.name.startswith("MCP send tools/call")]
    assert sdk_spans, [s.name for s in spans]  # the SDK's client span is there, and was exported
    assert all(secret not in s.to_json() for s in spans)
    assert {s.status.description for s in sdk_spans} == {None}
    # Tether's own span of the upstream call: the server and the method, a failure by its type.
    ours = [s for s in spans if s.name == "tether.mcp.upstream"]
    assert len(ours) == 2
    assert dict(ours[0].attributes or {}) == {"tether.mcp_server": "gh", "mcp.method.name": "tools/call"}
    assert {s.status.description for s in ours} == {"MCPError"}
