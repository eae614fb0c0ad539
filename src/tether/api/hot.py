"""The hot lane: the agent routes that run on every use of a secret, served as plain endpoints.

Token, task opening, activation, egress and MCP tool calls (``POST /mcp``) run on every use of
every secret. FastAPI's layers and router (telemetry checks, exception middleware, the route table,
dependency resolution) cost as much CPU per request as the broker's own work on these paths;
:class:`TetherAPI` matches the few hot paths by their structure and calls their endpoint
(``request -> response``) through the app's own middleware only. Everything else, and any request
that is not exactly one of these shapes, goes on to FastAPI unchanged. The FastAPI routes of the
same paths stay declared (they call the same endpoints) so the OpenAPI document describes them.

Errors become problems through :func:`tether.api.problems.problem_for`, the same function FastAPI's
handlers use, so an answer does not depend on which of the two served it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from tether.api.headers import HotRequest
from tether.api.problems import problem_for
from tether.api.routes_auth import token_endpoint
from tether.api.routes_egress import egress_endpoint
from tether.api.routes_mcp import mcp_endpoint
from tether.api.routes_tasks import activate_endpoint, open_task_endpoint
from tether.domain.destinations import ALLOWED_METHODS

__all__ = ["MCP", "HotRoute", "TetherAPI", "match", "serve_hot"]

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """What the lane puts in ``scope["route"]``: the template metrics label requests with."""

    path: str
    endpoint: Endpoint


TOKEN = HotRoute("/v1/auth/token", token_endpoint)
OPEN_TASK = HotRoute("/v1/tasks", open_task_endpoint)
ACTIVATE = HotRoute("/v1/grants/{grant_id}/activate", activate_endpoint)
EGRESS = HotRoute("/v1/egress/{destination}/{path:path}", egress_endpoint)
#: Every MCP tool call is an activation.
MCP = HotRoute("/mcp", mcp_endpoint)

_GRANTS, _ACTIVATE = "/v1/grants/", "/activate"
_EGRESS = "/v1/egress/"


def match(method: str, path: str) -> tuple[HotRoute, dict[str, str]] | None:
    """The hot route ``method path`` is, with its path parameters, exactly as FastAPI's router would
    match it; None for anything else (FastAPI serves it)."""
    if method == "POST":
        if path == TOKEN.path:
            return TOKEN, {}
        if path == OPEN_TASK.path:
            return OPEN_TASK, {}
        if path == MCP.path:
            return MCP, {}
        if path.startswith(_GRANTS) and path.endswith(_ACTIVATE):
            grant_id = path[len(_GRANTS) : -len(_ACTIVATE)]
            if grant_id and "/" not in grant_id:
                return ACTIVATE, {"grant_id": grant_id}
    if path.startswith(_EGRESS) and method in ALLOWED_METHODS:
        destination, slash, rest = path[len(_EGRESS) :].partition("/")
        if destination and slash:
            return EGRESS, {"destination": destination, "path": rest}
    return None


async def serve_hot(scope: Scope, receive: Receive, send: Send) -> None:
    """The end of the hot stack: call the endpoint :func:`match` found (in ``scope["route"]``); any
    failure answers as a problem, as in FastAPI."""
    request = HotRequest(scope, receive)
    try:
        response = await scope["route"].endpoint(request)
    except Exception as exc:  # noqa: BLE001 - every failure answers as a problem, as in FastAPI
        response = problem_for(exc)
    await response(scope, receive, send)


class TetherAPI(FastAPI):
    """FastAPI, with the hot routes served in front of it.

    A request of a hot shape goes through the app's own middleware (request ids, spans, metrics,
    the body limit: everything added with ``add_middleware``, in the same order) straight to its
    endpoint, not through FastAPI's outer layers (telemetry checks, exception middleware, router,
    dependency resolution), which cost as much CPU as the broker's work on these paths. Anything
    else is FastAPI's, unchanged.
    """

    _hot_stack: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = match(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await super().__call__(scope, receive, send)
            return
        stack = self._hot_stack
        if stack is None:
            stack = self._hot_stack = self._build_hot_stack()
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        scope["route"], scope["path_params"] = found
        await stack(scope, receive, send)

    def _build_hot_stack(self) -> ASGIApp:
        app: ASGIApp = serve_hot
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app
