"""The MCP gateway's HTTP surface: ``/mcp`` (agents), ``/v1/mcp-servers`` (operators) and the OAuth
discovery documents a standard MCP client reads (RFC 9728 protected resource, RFC 8414 server).

Thin: parse, hand to :class:`tether.mcp.front.McpFront` / :class:`tether.mcp.gateway.McpGateway`
(its registry: :class:`tether.mcp.registry.McpRegistry`), render.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from tether.api.deps import OperatorDep
from tether.api.problems import Problem
from tether.api.routes_auth import public_base_url
from tether.domain.destinations import SECRET_PLACEHOLDER, Injection, InjectionType
from tether.mcp.discovery import MCP_PATH, protected_resource_metadata
from tether.mcp.servers import MAX_ARG_CHARS, MAX_ARGS, MAX_ENV, MAX_TIMEOUT_SECONDS, McpServer

if TYPE_CHECKING:
    from tether.mcp.front import McpFront

__all__ = ["close_mcp", "mcp_front", "router"]


async def close_mcp(app: FastAPI) -> None:
    """Close the gateway: its upstream sessions (stdio process trees killed) and the SDK's manager."""
    front: McpFront | None = getattr(app.state, "mcp", None)
    if front is not None:
        app.state.mcp = None
        await front.aclose()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await close_mcp(app)


router = APIRouter(tags=["mcp"], lifespan=_lifespan)

NameParam = Annotated[str, Path(min_length=1, max_length=32)]


def mcp_front(app: Any) -> McpFront:
    """The app's MCP front, created on first use: the MCP SDK is imported then, not by every
    server process (its imports take about half a second). A node with an upstream registered
    creates it at startup (see :func:`tether.api.app.create_node_app`)."""
    front: McpFront | None = getattr(app.state, "mcp", None)
    if front is None:
        from tether.mcp.front import McpFront

        front = McpFront(app.state.broker)
        app.state.mcp = front
        if not _sdk_frozen.is_set() and gc.get_freeze_count():
            # A served process froze its start (tether.api.server.freeze_startup_heap): the SDK's
            # modules, imported since, are kept out too. Once per process, like the imports, and
            # on the event loop like them (a collection of some 50 ms beside ~0.5 s of imports).
            from tether.api.server import freeze_startup_heap

            _sdk_frozen.set()
            freeze_startup_heap()
    return front


#: Whether this process has kept the MCP SDK out of garbage collection (see :func:`mcp_front`).
_sdk_frozen = threading.Event()


# -- /mcp ------------------------------------------------------------------------------------
async def mcp_endpoint(request: Request) -> Response:
    """MCP over streamable HTTP (stateless). ``Authorization: DPoP <token>``, a fresh ``DPoP`` proof
    for ``POST <public URL>/mcp`` and ``Tether-Task`` on every request."""
    try:
        return await mcp_front(request.app).handle(request)
    except Problem as problem:
        if problem.status == 401:  # point standard clients at the metadata (RFC 9728 §5.1)
            metadata = public_base_url(request) + "/.well-known/oauth-protected-resource" + MCP_PATH
            challenge = problem.headers.get("WWW-Authenticate", "DPoP")
            problem.headers["WWW-Authenticate"] = f'{challenge}, resource_metadata="{metadata}"'
        raise


for _method in ("POST", "GET", "DELETE"):
    router.add_api_route(
        MCP_PATH,
        mcp_endpoint,
        methods=[_method],
        response_model=None,
        operation_id=f"mcp_{_method.lower()}",
        summary="The MCP gateway (streamable HTTP; POST only, stateless)",
    )


@router.get("/.well-known/oauth-protected-resource", include_in_schema=False)
@router.get("/.well-known/oauth-protected-resource/mcp")
async def protected_resource(request: Request) -> JSONResponse:
    """RFC 9728 metadata of ``/mcp``: Tether is its authorization server; tokens are DPoP-bound."""
    return JSONResponse(protected_resource_metadata(public_base_url(request)))


@router.get("/.well-known/oauth-authorization-server")
async def authorization_server(request: Request) -> JSONResponse:
    """RFC 8414 metadata: the token endpoint and how agents authenticate to it."""
    base = public_base_url(request)
    return JSONResponse(
        {
            "issuer": base,
            "token_endpoint": base + "/v1/auth/token",
            "grant_types_supported": [
                "client_credentials",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["Ed25519", "EdDSA", "ES256"],
            "dpop_signing_alg_values_supported": ["Ed25519", "EdDSA", "ES256"],
            "response_types_supported": [],
        }
    )


# -- /v1/mcp-servers -------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class HeaderInjectionIn(_Request):
    type: Annotated[str, Field(pattern="^header$")] = "header"
    name: Annotated[str, Field(min_length=1, max_length=64, description="The header, e.g. Authorization.")]
    template: Annotated[
        str | None, Field(max_length=256, description="With {secret} once, e.g. `Bearer {secret}`.")
    ] = None


class McpServerCreate(_Request):
    name: Annotated[str, Field(min_length=1, max_length=32)]
    command: Annotated[
        str | None, Field(max_length=4096, description="stdio: an absolute path, run without a shell.")
    ] = None
    args: Annotated[list[Annotated[str, Field(max_length=MAX_ARG_CHARS)]], Field(max_length=MAX_ARGS)] = []
    env: Annotated[
        dict[str, str],
        Field(max_length=MAX_ENV, description="stdio: VAR → secret path, placed in the child's environment."),
    ] = {}
    url: Annotated[str | None, Field(max_length=2048, description="http: its MCP endpoint.")] = None
    secret: Annotated[str | None, Field(max_length=256, description="http: the secret injected.")] = None
    inject: HeaderInjectionIn | None = None
    timeout_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_TIMEOUT_SECONDS)] = 30


class PinnedToolOut(BaseModel):
    name: str
    sha256: str
    definition: dict[str, Any]


class McpServerOut(BaseModel):
    name: str
    kind: str
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    url: str | None = None
    secret: str | None = None
    inject: dict[str, str] | None = None
    timeout_seconds: int
    tools: list[PinnedToolOut]
    quarantined: list[PinnedToolOut]
    version: int
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, record: McpServer) -> McpServerOut:
        return cls.model_validate(record.to_json())


class McpServerList(BaseModel):
    servers: list[McpServerOut]


class ApproveIn(_Request):
    tools: Annotated[
        list[str] | None,
        Field(max_length=256, description="The tools to approve (default: all)."),
    ] = None


@router.post("/v1/mcp-servers", status_code=201)
async def add_mcp_server(body: McpServerCreate, operator: OperatorDep, request: Request) -> McpServerOut:
    """Register an upstream MCP server: Tether opens it once and pins every tool it lists."""
    inject = None
    if body.inject is not None:
        inject = Injection(
            type=InjectionType.HEADER,
            name=body.inject.name,
            template=SECRET_PLACEHOLDER if body.inject.template is None else body.inject.template,
        )
    record = await mcp_front(request.app).gateway.registry.add(
        operator,
        name=body.name,
        command=body.command,
        args=body.args,
        env=body.env,
        url=body.url,
        secret=body.secret,
        inject=inject,
        timeout_seconds=body.timeout_seconds,
    )
    return McpServerOut.of(record)


@router.get("/v1/mcp-servers")
async def list_mcp_servers(operator: OperatorDep, request: Request) -> McpServerList:
    """Every upstream MCP server, by name."""
    servers = await mcp_front(request.app).gateway.registry.list(operator)
    return McpServerList(servers=[McpServerOut.of(record) for record in servers])


@router.get("/v1/mcp-servers/{name}")
async def show_mcp_server(name: NameParam, operator: OperatorDep, request: Request) -> McpServerOut:
    """One upstream, with its pinned and quarantined tool definitions."""
    return McpServerOut.of(await mcp_front(request.app).gateway.registry.show(operator, name))


@router.post("/v1/mcp-servers/{name}/check")
async def check_mcp_server(name: NameParam, operator: OperatorDep, request: Request) -> McpServerOut:
    """Open the upstream now; quarantine every tool definition that differs from its pin."""
    return McpServerOut.of(await mcp_front(request.app).gateway.registry.check(operator, name))


@router.post("/v1/mcp-servers/{name}/approve")
async def approve_mcp_server(
    name: NameParam, body: ApproveIn, operator: OperatorDep, request: Request
) -> McpServerOut:
    """Pin quarantined tool definitions (after reviewing them with ``GET``: the diff)."""
    return McpServerOut.of(await mcp_front(request.app).gateway.registry.approve(operator, name, body.tools))


@router.delete("/v1/mcp-servers/{name}", status_code=204, response_class=Response)
async def remove_mcp_server(name: NameParam, operator: OperatorDep, request: Request) -> Response:
    """Remove an upstream; its open sessions (here) close."""
    await mcp_front(request.app).gateway.registry.remove(operator, name)
    return Response(status_code=204)
