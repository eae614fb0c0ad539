"""The front's ``Mcp-Param-*`` check on the 2026-07-28 wire answers as the SDK's own
(``validate_mcp_param_headers``), also where it skips the SDK's walk (a schema without any
``x-mcp-header``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from mcp.shared.inbound import validate_mcp_param_headers
from mcp_types import JSONRPCRequest
from starlette.requests import Request

from tether.mcp import exchange

ANNOTATED = {
    "type": "object",
    "properties": {"region": {"type": "string", "x-mcp-header": "Region"}, "query": {"type": "string"}},
}
NESTED = {
    "type": "object",
    "properties": {
        "where": {"type": "object", "properties": {"zone": {"type": "integer", "x-mcp-header": "Zone"}}}
    },
}
PLAIN = {"type": "object", "properties": {"query": {"type": "string"}}}
# A property *named* x-mcp-header is data, not an annotation: the front asks the SDK all the same.
NAMED = {"type": "object", "properties": {"x-mcp-header": {"type": "string"}}}

CASES = [
    (ANNOTATED, {"region": "eu", "query": "q"}, {"Mcp-Param-Region": "eu"}),
    (ANNOTATED, {"region": "eu", "query": "q"}, {"Mcp-Param-Region": "us"}),
    (ANNOTATED, {"region": "eu", "query": "q"}, {}),
    (ANNOTATED, {"query": "q"}, {"Mcp-Param-Region": "eu"}),
    (ANNOTATED, {"query": "q"}, {}),
    (NESTED, {"where": {"zone": 3}}, {"Mcp-Param-Zone": "3"}),
    (NESTED, {"where": {"zone": 3}}, {"Mcp-Param-Zone": "4"}),
    (NESTED, {"where": {"zone": 3}}, {}),
    (PLAIN, {"query": "q"}, {}),
    (PLAIN, {"query": "q"}, {"Mcp-Param-Query": "other"}),
    (NAMED, {"x-mcp-header": "v"}, {"Mcp-Param-X": "v"}),
]


def _request(headers: dict[str, str]) -> Request:
    raw = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    return Request({"type": "http", "method": "POST", "path": "/mcp", "headers": raw})


@pytest.mark.parametrize(("schema", "arguments", "headers"), CASES)
def test_the_front_refuses_exactly_what_the_sdk_refuses(
    schema: dict[str, Any], arguments: dict[str, Any], headers: dict[str, str]
) -> None:
    server: Any = SimpleNamespace(get_tool_input_schema=lambda name: schema)
    message = JSONRPCRequest(
        jsonrpc="2.0", id=1, method="tools/call", params={"name": "s__t", "arguments": arguments}
    )
    request = _request(headers)
    expected = validate_mcp_param_headers(schema, arguments, request.headers) is not None
    assert exchange._param_headers_rejected(server, message, request) is expected
    assert exchange._param_headers_rejected(server, message, request) is expected  # remembered, same


def test_only_schemas_with_an_annotation_are_walked_by_the_sdk() -> None:
    assert exchange._annotates_headers(ANNOTATED)
    assert exchange._annotates_headers(NESTED)
    assert exchange._annotates_headers(NAMED)
    assert not exchange._annotates_headers(PLAIN)
    assert not exchange._annotates_headers({"type": "object", "anyOf": [{"type": "string"}, [1, {"a": 2}]]})
    # Remembered by identity: an equal schema that is another object is looked at afresh.
    copy = {**PLAIN, "properties": {"query": {"type": "string", "x-mcp-header": "Query"}}}
    assert exchange._annotates_headers(copy)
