"""Egress: ``ANY /v1/egress/{destination}/{path}`` — inject activation, forwarded upstream.

Thin: parse the agent's request, hand it to :class:`tether.egress.EgressProxy`, stream the
answer back. The path is read as the agent sent it (``raw_path``, still percent-encoded), which
is also what its DPoP proof signs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from tether.api.problems import Problem
from tether.api.routes_auth import agent_caller, request_path
from tether.broker import Broker
from tether.domain.destinations import ALLOWED_METHODS, validate_destination_name
from tether.egress import EgressError, EgressProxy, EgressRequest, UnsafePathError
from tether.errors import InvalidInputError

__all__ = ["close_egress", "egress_endpoint", "egress_proxy", "router"]

TASK_HEADER = "tether-task"
PREFIX = "/v1/egress/"


async def close_egress(app: FastAPI) -> None:
    """Release the egress proxy's upstream connections (an app served with lifespan off, or
    driven through ``httpx.ASGITransport``, calls this itself when done)."""
    proxy: EgressProxy | None = getattr(app.state, "egress", None)
    if proxy is not None:
        app.state.egress = None
        await proxy.aclose()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await close_egress(app)


router = APIRouter(tags=["egress"], lifespan=_lifespan)


def egress_proxy(app: Any) -> EgressProxy:
    """The app's proxy, created on first use (one connection pool per app)."""
    proxy: EgressProxy | None = getattr(app.state, "egress", None)
    if proxy is None:
        proxy = EgressProxy(app.state.broker)
        app.state.egress = proxy
    return proxy


def _agent_path(request: Request, destination: str) -> str:
    raw = request_path(request)
    prefix = PREFIX + destination
    if not raw.startswith(prefix + "/"):  # e.g. the destination name itself percent-encoded
        raise UnsafePathError("the destination name must be sent as it is registered")
    return raw[len(prefix) :]


async def _body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


async def egress(destination: str, path: str, request: Request) -> Response:
    """Forward this request to ``destination`` with its secret injected, under the task named by
    the ``Tether-Task`` header (which needs an ``inject`` grant for the destination). The answer
    is the upstream's, with hop-by-hop headers and cookies removed, every occurrence of the secret
    redacted, and ``Cache-Control: no-store``."""
    del destination, path  # read from the request by the endpoint (the raw path, as signed)
    return await egress_endpoint(request)


async def egress_endpoint(request: Request) -> Response:
    """``ANY /v1/egress/{destination}/{path}`` as a plain endpoint (the hot lane serves it; see
    ``tether.api.hot``). The raw path is used: the decoded one hides %2F and friends."""
    broker: Broker = request.app.state.broker
    caller = await agent_caller(request, broker, defer_replay=True)
    destination = request.path_params["destination"]
    task_id = request.headers.get(TASK_HEADER)
    if not task_id:
        raise InvalidInputError("the Tether-Task header (the task's id) is required", field="Tether-Task")
    try:
        validate_destination_name(destination)
        egress_request = EgressRequest(
            destination=destination,
            task_id=task_id,
            method=request.method,
            raw_path=_agent_path(request, destination),
            raw_query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=list(request.headers.raw),
            body=_body(request),
        )
        answer = await egress_proxy(request.app).forward(caller, egress_request)
    except UnsafePathError as exc:
        raise Problem(400, "unsafe-path", "Path refused", str(exc)) from None
    except EgressError as exc:
        raise Problem(exc.status, exc.slug, exc.title, str(exc)) from None
    if answer.content is not None:
        # A short answer goes out in one piece: no streaming task per response.
        response: Response = Response(answer.content, status_code=answer.status)
        length = [] if answer.status < 200 or answer.status in (204, 304) else [_length(answer.content)]
        response.raw_headers = [*answer.headers, *length]
        return response
    response = StreamingResponse(answer.body, status_code=answer.status)
    response.raw_headers = answer.headers
    return response


def _length(content: bytes) -> tuple[bytes, bytes]:
    return (b"content-length", str(len(content)).encode("ascii"))


for _method in sorted(ALLOWED_METHODS):  # one route per method: one OpenAPI operation each
    router.add_api_route(
        "/v1/egress/{destination}/{path:path}",
        egress,
        methods=[_method],
        response_model=None,
        operation_id=f"egress_{_method.lower()}",
        summary=f"{_method} to a destination with the task's secret injected",
    )
