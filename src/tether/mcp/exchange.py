"""One JSON-RPC request in, one JSON body out: the front's path for a request whose answer needs
no event stream, of either era.

**Handshake era** (``MCP-Protocol-Version`` absent or 2024-11-05 … 2025-11-25): :func:`answer`.

The SDK's stateless streamable HTTP transport builds, for every such POST, a transport, a
dispatcher, a server session, memory streams and a task in its task group, only to route one
message to one handler and back. Here the body is parsed once, checked against the SDK's own
JSON-RPC message types, and the request goes to the SDK's single-exchange kernel
(:func:`mcp.server.runner.serve_one`) with a born-ready connection, as the SDK's stateless path
does: the handlers registered on the SDK's ``Server``, its per-method parameter validation, its
result serialization and its error mapping all still run. Only the plumbing around them is gone.

What the transport answered and how, kept: ``406`` when the client does not accept JSON, ``415``
when the body is not declared JSON, ``400`` with ``-32700`` (parse error) or ``-32600`` (not a
JSON-RPC 2.0 message, a batch: batching left MCP in 2025-06-18 and the SDK's transport never took
one), ``202`` and no body for a notification or a response (stateless: there is nothing for them to
act on), and ``200`` with the JSON-RPC response or error otherwise. Never a crash: an exception no
handler mapped is logged (its type) and answered ``-32603``.

**2026-07-28** (a self-contained request, no handshake): :func:`answer_modern`. The SDK's own entry
(``StreamableHTTPSessionManager`` → its modern handler) re-reads and re-parses the body and wraps
the answer in ASGI plumbing. Here the request takes the same ladder with the SDK's own public
checks — accepted media types, the envelope (``JSONRPCRequest``), duplicated routing headers,
:func:`~mcp.shared.inbound.classify_inbound_request` (version, ``_meta`` envelope, ``Mcp-Method``
and ``Mcp-Name`` against the body), ``Mcp-Param-*`` headers against the tool's pinned schema — and
goes to the same kernel, its errors mapped as the SDK's ``modern_error_data`` maps them (the shared
``handler_exception_to_error_data``, else an internal error, logged here by its type only) and given
the SDK's HTTP statuses (``ERROR_CODE_HTTP_STATUS``). Anything else — a request the ladder rejects, a
notification, a batch, ``subscriptions/listen`` — is not answered here (``None``): the front hands it
to the SDK's transport, which gives the SDK's exact answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pydantic_core
from mcp.server.connection import Connection
from mcp.server.lowlevel.server import Server
from mcp.server.runner import serve_one
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    X_MCP_HEADER_KEY,
    InboundLadderRejection,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
    DEFAULT_NEGOTIATED_VERSION,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCRequest,
    JSONRPCResponse,
    RequestId,
    jsonrpc_message_adapter,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from tether.mcp._context import OneWay

__all__ = ["NOT_JSON", "PROTOCOL_VERSION_HEADER", "answer", "answer_modern", "handshake_era", "parse"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION_HEADER = "mcp-protocol-version"
_JSON = "application/json"
_PARAM_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()
#: What :func:`parse` returns for a body that is not JSON.
NOT_JSON: Any = object()


def parse(body: bytes) -> Any:
    """The request body as JSON values, parsed once for the whole request; :data:`NOT_JSON` if
    it is not JSON."""
    try:
        return pydantic_core.from_json(body)
    except ValueError:
        return NOT_JSON


def handshake_era(request: Request) -> bool:
    """Whether the request belongs to a handshake-era protocol version (the header absent counts
    as 2025-03-26, as the specification says); any other value is the SDK's to judge."""
    version = request.headers.get(PROTOCOL_VERSION_HEADER)
    return version is None or version in HANDSHAKE_PROTOCOL_VERSIONS


def _error(status: int, code: int, message: str, request_id: RequestId | None = None) -> Response:
    body = JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message))
    return Response(body.model_dump_json(by_alias=True, exclude_unset=True), status, media_type=_JSON)


def _declares_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return any(part.strip() == _JSON for part in content_type.split(";")[0].split(","))


def _request(request: Request, raw: Any) -> JSONRPCRequest | Response:  # noqa: PLR0911 - one answer per refusal
    """The JSON-RPC request in ``raw``, or the HTTP answer the transport would have given."""
    has_json, _ = check_accept_headers(request)
    if not has_json:
        return _error(406, INVALID_REQUEST, "Not Acceptable: Client must accept application/json")
    if not _declares_json(request):
        return _error(415, INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json")
    if raw is NOT_JSON:
        return _error(400, PARSE_ERROR, "Parse error: the body is not JSON")
    if isinstance(raw, list):
        return _error(400, INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported")
    try:
        message = jsonrpc_message_adapter.validate_python(raw, by_name=False)
    except ValidationError:
        return _error(400, INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message")
    if isinstance(message, JSONRPCRequest):
        return message
    if "method" in raw and "id" in raw:  # a request whose id is neither a string nor a number
        return _error(400, INVALID_REQUEST, "Invalid Request: the id must be a string or a number")
    return Response(status_code=202)  # a notification or a response: nothing to act on


async def answer(server: Server[Any], request: Request, raw: Any) -> Response:
    """Answer one POST of a handshake-era client with one JSON body (see the module docstring).

    ``raw`` is the body as :func:`parse` returned it; ``request`` is what the handlers find in
    ``ctx.request`` (its scope carries the authenticated call)."""
    message = _request(request, raw)
    if isinstance(message, Response):
        return message
    version = request.headers.get(PROTOCOL_VERSION_HEADER, DEFAULT_NEGOTIATED_VERSION)
    reply = await _served(server, request, message, Connection.from_envelope(version, None, None))
    return Response(reply.model_dump_json(by_alias=True, exclude_unset=True), 200, media_type=_JSON)


async def _served(
    server: Server[Any], request: Request, message: JSONRPCRequest, connection: Connection
) -> JSONRPCResponse | JSONRPCError:
    """The SDK's kernel's answer to ``message``: its result, or its error as the SDK maps it (an
    exception no handler mapped is an internal error, logged by its type only: its text, or a
    traceback's locals, could hold a secret). Never raises but for cancellation."""
    context = OneWay(message.id, ServerMessageMetadata(request_context=request))
    try:
        result = await serve_one(
            server, context, message.method, message.params, connection=connection, lifespan_state={}
        )
    except Exception as exc:  # noqa: BLE001 - every failure is a JSON-RPC error, never a crash
        error = handler_exception_to_error_data(exc)
        if error is None:
            log.error("MCP front: %s escaped a handler", type(exc).__name__)  # noqa: TRY400
            error = ErrorData(code=INTERNAL_ERROR, message="Internal server error")
        return JSONRPCError(jsonrpc="2.0", id=message.id, error=error)
    return JSONRPCResponse(jsonrpc="2.0", id=message.id, result=result)


async def answer_modern(server: Server[Any], request: Request, raw: Any) -> Response | None:
    """Answer one 2026-07-28 request with one JSON body, or None where the SDK's transport must
    answer (see the module docstring). ``raw`` and ``request`` as for :func:`answer`."""
    admitted = _admitted(server, request, raw)
    if admitted is None:
        return None
    message, verdict = admitted
    connection = Connection.from_envelope(
        verdict.protocol_version, verdict.client_info, verdict.client_capabilities
    )
    reply = await _served(server, request, message, connection)
    if isinstance(reply, JSONRPCError):
        status = ERROR_CODE_HTTP_STATUS.get(reply.error.code, 200)
        body = reply.model_dump(mode="json", by_alias=True, exclude_none=True)
    else:
        # The SDK's dump of a response, field for field, without dumping the result again: the
        # kernel returns it as wire data already (its result shape dumped in JSON mode).
        status, body = 200, {"jsonrpc": reply.jsonrpc, "id": reply.id, "result": reply.result}
    return Response(json.dumps(body, separators=(",", ":")), status, media_type=_JSON)


def _admitted(
    server: Server[Any], request: Request, raw: Any
) -> tuple[JSONRPCRequest, InboundModernRoute] | None:
    """The request and its classification when it passes the SDK's whole ladder; None when any
    step would refuse it or it is not a plain request (the SDK's transport then answers)."""
    if not isinstance(raw, dict) or "id" not in raw:
        return None  # not JSON, a batch, or a notification
    content_type = request.headers.get("content-type")
    if (
        content_type is None
        or not content_type.lower().startswith(_JSON)
        or not check_accept_headers(request)[0]
    ):
        return None
    try:
        message = JSONRPCRequest.model_validate(raw)
    except ValidationError:
        return None
    if (
        message.method == "subscriptions/listen"
        or find_duplicated_routing_header(request.headers.items()) is not None
    ):
        return None
    verdict = classify_inbound_request(raw, headers=dict(request.headers))
    if isinstance(verdict, InboundLadderRejection) or _param_headers_rejected(server, message, request):
        return None
    return message, verdict


def _param_headers_rejected(server: Server[Any], message: JSONRPCRequest, request: Request) -> bool:
    """Whether a ``tools/call``'s ``Mcp-Param-*`` headers contradict its arguments under the tool's
    schema (as the server's ``get_tool_input_schema`` gives it; the SDK answers a rejection)."""
    lookup = server.get_tool_input_schema
    if message.method != "tools/call" or lookup is None:
        return False
    params = message.params or {}
    name, arguments = params.get("name"), params.get("arguments")
    if not isinstance(name, str) or (arguments is not None and not isinstance(arguments, Mapping)):
        return False
    arguments = arguments or {}
    if not arguments and not any(header.startswith(_PARAM_PREFIX) for header in request.headers):
        return False
    try:
        schema = lookup(name)
    except Exception:  # noqa: BLE001 - the SDK's transport decides what a failing lookup means
        return True
    if schema is None or not _annotates_headers(schema):
        return False  # no x-mcp-header anywhere: the SDK's check has nothing to compare
    return validate_mcp_param_headers(schema, arguments, request.headers) is not None


#: Whether an input schema holds an ``x-mcp-header`` key anywhere, by the schema's identity (each
#: entry holds its schema, so no other object can take its id while it is remembered). A pinned
#: schema is one object for as long as its record is unchanged; bounded like the registry's memory.
_ANNOTATED: dict[int, tuple[Any, bool]] = {}
_ANNOTATED_MAX = 1024


def _annotates_headers(schema: Any) -> bool:
    """Whether ``schema`` has an ``x-mcp-header`` key in any object at any depth: a superset of
    the positions the SDK's ``validate_mcp_param_headers`` compares (without any, it finds no
    mismatch whatever the headers and arguments are), found once per schema."""
    remembered = _ANNOTATED.get(id(schema))
    if remembered is not None and remembered[0] is schema:
        return remembered[1]
    found = False
    stack = [schema]
    while stack and not found:
        node = stack.pop()
        if isinstance(node, Mapping):
            found = X_MCP_HEADER_KEY in node
            stack.extend(node.values())
        elif isinstance(node, list | tuple):
            stack.extend(node)
    if len(_ANNOTATED) >= _ANNOTATED_MAX:
        _ANNOTATED.clear()
    _ANNOTATED[id(schema)] = (schema, found)
    return found
