"""The FastAPI application: thin routers over the broker."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sniffio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from tether import __version__
from tether.api import (
    routes_agents,
    routes_audit,
    routes_auth,
    routes_compliance,
    routes_destinations,
    routes_egress,
    routes_leases,
    routes_mcp,
    routes_operators,
    routes_policies,
    routes_reach,
    routes_scan,
    routes_secrets,
    routes_signals,
    routes_sys,
    routes_tasks,
)
from tether.api.hot import TetherAPI
from tether.api.metrics import Metrics
from tether.api.problems import install_problem_handlers, problem_response
from tether.broker import Broker
from tether.config import Settings
from tether.errors import ConfigError

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_MAX_REQUEST_BYTES",
    "create_app",
    "create_app_from_env",
    "create_node_app",
    "with_request_context",
]

#: The data dir of the node that :func:`create_app_from_env` serves (as for the CLI's ``--data-dir``).
DATA_DIR_ENV = "TETHER_DATA_DIR"

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
EGRESS_PREFIX = "/v1/egress/"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _BodyLimit:
    """Refuse request bodies over a bound, whether or not Content-Length is declared."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(EGRESS_PREFIX):
            # Egress bodies are bounded per destination (max_body_bytes) by the proxy itself.
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name != b"content-length":
                continue
            if not value.isdigit():
                response = problem_response(
                    400, "bad-request", "Bad request", "Content-Length is not a number"
                )
            elif int(value) > self.max_bytes:
                response = problem_response(
                    413, "payload-too-large", "Request body too large", f"the limit is {self.max_bytes} bytes"
                )
            else:
                break
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # An HTTPException survives FastAPI's body parsing (other errors become 400).
                    raise HTTPException(413, "Request body too large")
            return message

        await self.app(scope, limited, send)


class _Measure:
    """Count and time requests by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # The labelled series (bounded: methods, route templates, statuses), looked up once each:
        # prometheus_client takes a lock and rebuilds the label tuple on every labels() call.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"  # bounded label values
            counted = self._counted.get((method, template, status))
            if counted is None:
                counted = self._counted[method, template, status] = self.metrics.requests.labels(
                    method, template, str(status)
                )
            timed = self._timed.get(template)
            if timed is None:
                timed = self._timed[template] = self.metrics.latency.labels(template)
            counted.inc()
            timed.observe(time.perf_counter() - start)


def create_app(broker: Broker, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """An app serving ``broker``. The caller starts and closes the broker."""
    app = _build_app(max_request_bytes=max_request_bytes, console=broker.settings.console == "on")
    app.state.broker = broker
    return app


def create_node_app(
    settings: Settings, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, sealed: bool = False
) -> FastAPI:
    """An app that runs a node from ``settings`` in its lifespan: at startup the broker starts
    (migrate, unseal; one process of the node at a time) and the node's background loops start
    in this process if no other process of the node runs them; at shutdown both stop.

    Agents sign Tether's URL into their proofs, so ``settings.public_url`` is required. With
    ``sealed``, the broker drops its keys once started, before serving (a worker started while
    its node is sealed).
    """
    from tether.api.lifespan import background_loops, start_broker

    if settings.public_url is None:
        raise ConfigError("set public_url (TETHER_PUBLIC_URL), the URL agents use to reach Tether")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = Broker.from_settings(settings)
        # This thread runs asyncio and nothing else: say so once, instead of anyio asking sniffio
        # (which asks asyncio for the current task) on every primitive it makes — a few percent of
        # an MCP tool call's CPU, whose SDK builds many.
        previous, sniffio.thread_local.name = sniffio.thread_local.name, "asyncio"
        try:
            await start_broker(broker)
            if sealed:
                broker.seal_now()
                app.state.metrics.sealed.set(1)
            app.state.broker = broker
            if await broker.storage.list_mcp_servers():
                # A node that gateways MCP loads the SDK now, before it serves: else the first
                # /mcp request each worker takes waits for its imports (~0.4 s here).
                routes_mcp.mcp_front(app)
            async with background_loops(broker):
                yield
        finally:
            await broker.close()
            sniffio.thread_local.name = previous

    return _build_app(
        max_request_bytes=max_request_bytes, lifespan=lifespan, console=settings.console == "on"
    )


def create_app_from_env(environ: Mapping[str, str] | None = None, *, sealed: bool = False) -> FastAPI:
    """The app factory for ASGI servers: the node whose data dir is ``$TETHER_DATA_DIR``, with its
    ``tether.toml`` and the ``TETHER_*`` variables (``TETHER_PUBLIC_URL`` is required).

    ``uvicorn --factory tether.api.app:create_app_from_env`` or ``gunicorn -k
    uvicorn.workers.UvicornWorker 'tether.api.app:create_app_from_env()'``.
    """
    env = os.environ if environ is None else environ
    if not env.get(DATA_DIR_ENV):
        raise ConfigError(f"set {DATA_DIR_ENV} to the data dir of an initialised node (tether init)")
    data_dir = Path(env[DATA_DIR_ENV]).expanduser().resolve()
    settings = Settings.load(data_dir, env)
    if settings.backend == "sqlite" and not Path(settings.database_url.removeprefix("sqlite:///")).exists():
        # Starting would create an empty database as a side effect.
        raise ConfigError(f"{data_dir} is not initialised; run `tether init --data-dir {data_dir}` first")
    return with_request_context(create_node_app(settings, sealed=sealed))


def with_request_context(app: FastAPI) -> FastAPI:
    """``app`` with a request id on every request (and, when ``OTEL_*`` ask for traces, one span per
    request), outermost, so every log line and span of a request carries its id. Every way of serving
    a node (``tether server``, its workers, the factory under another ASGI server) applies it once."""
    from tether.logs import RequestIdMiddleware
    from tether.tracing import RequestSpans, configure_tracing

    if configure_tracing():
        app.add_middleware(RequestSpans)
    app.add_middleware(RequestIdMiddleware)
    return app


def _build_app(
    *, max_request_bytes: int, lifespan: Lifespan[FastAPI] | None = None, console: bool = True
) -> FastAPI:
    app = TetherAPI(
        title="Tether",
        version=__version__,
        summary="Secret-governance broker for AI agents",
        description=(
            "Operators administer secrets (write-only values), operators and keys. Every error is "
            "`application/problem+json` (RFC 9457) with a stable `type`."
        ),
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.state.metrics = metrics
    install_problem_handlers(app)
    app.include_router(routes_sys.router)
    app.include_router(routes_operators.router)
    app.include_router(routes_secrets.router)
    app.include_router(routes_audit.router)
    app.include_router(routes_agents.router)
    app.include_router(routes_auth.router)
    app.include_router(routes_policies.router)
    app.include_router(routes_tasks.router)
    app.include_router(routes_destinations.router)
    app.include_router(routes_egress.router)
    app.include_router(routes_leases.router)
    app.include_router(routes_mcp.router)
    app.include_router(routes_reach.router)
    app.include_router(routes_scan.router)
    if console:  # the web console (/ui), unless the `console` setting is off
        from tether.console import router as console_router

        app.include_router(console_router)
    app.include_router(routes_compliance.router)
    app.include_router(routes_signals.router)
    app.add_middleware(_BodyLimit, max_bytes=max_request_bytes)
    app.add_middleware(_Measure, metrics=metrics)
    app.openapi = lambda: _openapi_with_problems(app)  # type: ignore[method-assign]
    return app


# The errors any operation can answer, all application/problem+json (problems.py).
_ERRORS = {
    "400": "Bad request",
    "401": "Authentication required",
    "403": "Forbidden, or denied on the governed path (with the decision)",
    "404": "Not found",
    "405": "Method not allowed (e.g. POST /v1/secrets/{path} without :rotate)",
    "409": "Conflict",
    "413": "Request body too large",
    "422": "Invalid input",
    "502": "An upstream (egress) or a secret engine failed",
    "503": "Sealed, or storage unavailable",
    "504": "An upstream (egress) timed out",
}
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; a denial also carries `decision` and `approval_id`.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
        "decision": {"type": "object"},
        "approval_id": {"type": "string"},
    },
    "additionalProperties": True,
}


def _openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with every error answer described as the problem+json it is (FastAPI
    documents 422 as its own JSON shape and no other error)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = _PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, description in _ERRORS.items():
                if path == "/v1/auth/token" and method == "post" and status in {"400", "401"}:
                    # RFC 6749 §5.2: OAuth errors are application/json (carrying the problem fields too).
                    responses[status] = {
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
                    continue
                responses[status] = {"description": description, "content": problem}
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    app.openapi_schema = schema
    return schema
