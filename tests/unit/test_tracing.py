"""Traces (``tether.tracing``): off unless OTEL_* ask, one server span per request continuing an
incoming traceparent, with the request id, and no body or secret in its attributes."""

from __future__ import annotations

import logging

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import Receive, Scope, Send

from tether.logs import RequestIdMiddleware
from tether.tracing import RequestSpans, configure_tracing, route, tracing_requested

CANARY = "canary-value-never-in-a-span"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_off_unless_otel_variables_ask(environ: dict[str, str], expected: bool) -> None:
    assert tracing_requested(environ) is expected


def test_off_or_misconfigured_tracing_installs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert configure_tracing({}) is False
    with caplog.at_level(logging.WARNING, logger="tether.tracing"):
        assert configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin-ish"}) is False
    assert "is not one of otlp, console" in caplog.text


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/tasks/t_3f9c0a/grants", "/v1/tasks/{}/grants"),
        ("/v1/grants/g-1/activate", "/v1/grants/{}/activate"),
        ("/v1/sys/health", "/v1/sys/health"),
        ("/v1/secrets/prod/github/token:rotate", "/v1/secrets/prod/github/token:rotate"),
        ("/v1/egress/github/repos/acme/app2", "/v1/egress/github/repos/acme/{}"),
    ],
)
def test_span_names_have_low_cardinality(path: str, name: str) -> None:
    assert route(path) == name


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    status = 503 if scope["path"].endswith("/broken") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": CANARY.encode()})


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_one_server_span_per_request_continuing_the_callers_trace(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    app = RequestIdMiddleware(RequestSpans(_app, tracer_provider=provider))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as client:
        ok = await client.get(
            "/v1/tasks/t_1a2b/grants", headers={"traceparent": PARENT, "X-Request-Id": "r-1"}
        )
        broken = await client.post("/v1/sys/broken", content=CANARY)
    assert ok.status_code == 200
    assert broken.status_code == 503
    first, second = exporter.get_finished_spans()
    assert first.name == "GET /v1/tasks/{}/grants"
    assert first.kind == SpanKind.SERVER
    assert format(first.context.trace_id, "032x") == TRACE_ID  # continues the caller's trace
    assert first.parent is not None
    assert dict(first.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/v1/tasks/t_1a2b/grants",
        "tether.request_id": "r-1",
        "http.response.status_code": 200,
    }
    assert first.status.status_code == StatusCode.UNSET
    assert second.parent is None  # no traceparent: a new trace
    assert second.status.status_code == StatusCode.ERROR
    assert second.attributes is not None
    assert second.attributes["tether.request_id"] == broken.headers["x-request-id"]
    assert all(
        CANARY not in str(value) for span in (first, second) for value in (span.attributes or {}).values()
    )
