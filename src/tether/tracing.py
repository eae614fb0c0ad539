"""Traces: OpenTelemetry, off unless the standard ``OTEL_*`` variables configure an exporter.

``tether server`` calls :func:`configure_tracing` once per process. Tracing is on when
``OTEL_TRACES_EXPORTER`` names an exporter (``otlp`` or ``console``; ``none`` is off) or an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``. It needs ``pip install 'tether[tracing]'`` (the SDK and the
OTLP/HTTP exporter); everything else (endpoint, headers, sampler, service name, resource
attributes) is the exporter's and the SDK's own ``OTEL_*`` configuration. A process that already
has an SDK tracer provider (``opentelemetry-instrument``) keeps it.

When on, every HTTP request is one server span (:class:`RequestSpans`), continuing a W3C
``traceparent`` it carries: method, path, status, and the request id of the logs, so a trace and
its log lines find each other. Attributes never carry a secret value, a token or a request body.
When off, nothing is installed and requests pay nothing.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tether import __version__
from tether.logs import current_request_id

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "RequestSpans",
    "configure_tracing",
    "disable_inner_spans",
    "enable_inner_spans",
    "inner_span",
    "inner_spans_enabled",
    "route",
    "textless_mcp_spans",
    "tracer",
    "tracing_requested",
]

log = logging.getLogger(__name__)

_EXPORTERS = ("otlp", "console")
_MAX_PATH_CHARS = 256
_WORD = re.compile(r"[a-z][a-z_-]{0,23}(:[a-z]+)?")


def route(path: str) -> str:
    """A low-cardinality name for a path: words stay, anything else (ids, numbers, names with
    digits) becomes ``{}`` — ``/v1/tasks/t_3f9c/grants`` → ``/v1/tasks/{}/grants``."""
    return "/".join(
        part if not part or part == "v1" or _WORD.fullmatch(part) else "{}" for part in path.split("/")
    )


def tracer() -> trace.Tracer:
    """Tether's tracer (a no-op one until a tracer provider is configured)."""
    return trace.get_tracer("tether", __version__)


# Spans inside a request (the decision, the store, the egress call) run on every use of a secret:
# while tracing is off they must cost nothing, not even a no-op tracer's call. So there is no tracer
# at all until tracing is on, and inner_span hands back one shared, empty context manager.
_inner_tracer: trace.Tracer | None = None
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def enable_inner_spans(provider: trace.TracerProvider | None = None) -> None:
    """Emit spans inside requests (done by :func:`configure_tracing` when tracing is on)."""
    global _inner_tracer  # noqa: PLW0603 - one switch per process, flipped at start
    _inner_tracer = trace.get_tracer("tether", __version__, tracer_provider=provider)
    textless_mcp_spans()


def disable_inner_spans() -> None:
    global _inner_tracer  # noqa: PLW0603
    _inner_tracer = None
    module: Any = sys.modules.get("mcp.shared._otel")
    if module is not None and isinstance(module._tracer, _TextlessTracer):
        module._tracer = module._tracer.tracer


def inner_spans_enabled() -> bool:
    """Whether spans inside requests are emitted (tracing is on)."""
    return _inner_tracer is not None


def inner_span(name: str, attributes: Mapping[str, str | int | bool]) -> AbstractContextManager[Any]:
    """A span inside a request (``tether.decide``, ``tether.store.read``, ``tether.egress.upstream``…),
    or an empty context manager when tracing is off. Attributes are names, ids and counts only: never
    a secret value, a token, a URL with its query, or a body."""
    if _inner_tracer is None:
        return _NO_SPAN
    return _Failing(
        _inner_tracer.start_as_current_span(
            name, attributes=attributes, record_exception=False, set_status_on_exception=False
        )
    )


class _Failing:
    """A span's context that marks a failure with the exception's type only. OpenTelemetry's own
    puts ``"Type: text"`` in the status, and an exception's text can quote what it was handed: an
    upstream's answer, a row, the URL an egress secret was injected into."""

    __slots__ = ("_context", "_span")

    def __init__(self, context: AbstractContextManager[trace.Span]) -> None:
        self._context = context
        self._span: trace.Span | None = None

    def __enter__(self) -> trace.Span:
        self._span = self._context.__enter__()
        return self._span

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if kind is not None and issubclass(kind, Exception) and self._span is not None:
            self._span.set_status(Status(StatusCode.ERROR, kind.__name__))
        return self._context.__exit__(kind, exc, tb)


class _TextlessSpan:
    """A span of the MCP SDK's, as the SDK sees it: a status without its description, and no
    exception recorded. The SDK puts an upstream's JSON-RPC error message in the status of its
    client span; the gateway redacts the secret injected into that upstream from what the agent
    gets, but a span is exported as it was written."""

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        code = status.status_code if isinstance(status, Status) else status
        self._span.set_status(Status(code))

    def record_exception(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._span, name)


class _TextlessTracer:
    """The MCP SDK's tracer, wrapped: its spans never carry exception or error text (see
    :class:`_TextlessSpan`); a failure is marked with the exception's type only."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    @contextmanager
    def start_as_current_span(self, name: str, **options: Any) -> Iterator[_TextlessSpan]:
        options.update(record_exception=False, set_status_on_exception=False)
        with self.tracer.start_as_current_span(name, **options) as span:
            try:
                yield _TextlessSpan(span)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise


def textless_mcp_spans() -> None:
    """While tracing is on, wrap the MCP SDK's tracer (``mcp.shared._otel._tracer``, the one its
    client and server spans come from) in :class:`_TextlessTracer`. Does nothing until the SDK is
    imported (the gateway calls this again when it loads it), or when done already."""
    module: Any = sys.modules.get("mcp.shared._otel")
    if _inner_tracer is None or module is None:
        return
    if not isinstance(module._tracer, _TextlessTracer):  # the SDK's one tracer, made at its import
        module._tracer = _TextlessTracer(module._tracer)


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider exporting as ``OTEL_*`` say; whether traces are exported.

    Misconfiguration (an unknown exporter, the SDK not installed) is one warning and no traces:
    tracing never stops a node from serving."""
    env = os.environ if environ is None else environ
    if not tracing_requested(env):
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning(
            "OTEL_* ask for traces, but opentelemetry-sdk is not installed: pip install 'tether[tracing]'"
        )
        return False
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        enable_inner_spans()
        return True  # configured already (e.g. by opentelemetry-instrument)
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError:
                log.warning(
                    "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install 'tether[tracing]'"
                )
                continue
            exporters.append(OTLPSpanExporter())
        else:
            log.warning("OTEL_TRACES_EXPORTER %r is not one of %s; ignored", name[:40], ", ".join(_EXPORTERS))
    if not exporters:
        return False
    attributes: dict[str, Any] = {"service.version": __version__}
    if not env.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "tether"
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    enable_inner_spans()
    log.info("tracing: exporting spans (%s)", ", ".join(names))
    return True


class RequestSpans:
    """ASGI middleware: one server span per HTTP request (install it inside
    :class:`~tether.logs.RequestIdMiddleware`, so the span knows the request id)."""

    def __init__(self, app: ASGIApp, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.app = app
        self._tracer = trace.get_tracer("tether", __version__, tracer_provider=tracer_provider)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        parent = propagate.extract(headers) if headers else None
        method = scope["method"]
        path = scope["path"][:_MAX_PATH_CHARS]
        attributes: dict[str, Any] = {"http.request.method": method, "url.path": path}
        rid = current_request_id()
        if rid is not None:
            attributes["tether.request_id"] = rid
        with self._tracer.start_as_current_span(
            f"{method} {route(path)}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # exception text may quote data; the status says it failed
            set_status_on_exception=False,  # (by the answer's status; else the type, below)
        ) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            try:
                await self.app(scope, receive, send_with_status)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
