"""An example upstream MCP server that needs a token: the issue tracker of the demo's acme/app.

It speaks MCP over stdio (the official SDK's low-level ``Server``) and refuses to work without
``ISSUES_TOKEN`` in its environment, as a real server holding a GitHub token would. Tether starts it
per task with the token placed in its environment (``tether mcp-server add issues --command ... --env
ISSUES_TOKEN=secret:prod/github/token``): the agent calling its tools through Tether never holds the
token. Like many real servers, it is careless: ``search_issues`` echoes the token in a debug field,
which Tether redacts before the answer reaches the agent.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

ISSUES = [
    {"number": 41, "title": "Deploy of 1.4 fails on the migration step", "state": "open"},
    {"number": 42, "title": "Flaky test: test_checkout_total", "state": "open"},
    {"number": 17, "title": "Document the release checklist", "state": "closed"},
]


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(
                name="search_issues",
                description="Search the issues of acme/app by words in their titles.",
                input_schema={
                    "type": "object",
                    "properties": {"query": {"type": "string"}, "state": {"enum": ["open", "closed"]}},
                    "required": ["query"],
                    "additionalProperties": False,
                },
                annotations=types.ToolAnnotations(read_only_hint=True),
            ),
            types.Tool(
                name="close_issue",
                description="Close an issue of acme/app.",
                input_schema={
                    "type": "object",
                    "properties": {"number": {"type": "integer", "minimum": 1}},
                    "required": ["number"],
                    "additionalProperties": False,
                },
                annotations=types.ToolAnnotations(destructive_hint=True),
            ),
        ]
    )


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    token = os.environ.get("ISSUES_TOKEN", "")
    if not token:
        raise MCPError(-32000, "ISSUES_TOKEN is not set: this server needs a token")
    args = params.arguments or {}
    if params.name == "search_issues":
        words = str(args.get("query", "")).lower().split()
        found = [
            issue
            for issue in ISSUES
            if all(word in issue["title"].lower() for word in words)
            and args.get("state") in (None, issue["state"])
        ]
        lines = [f"#{issue['number']} [{issue['state']}] {issue['title']}" for issue in found] or [
            "no issues"
        ]
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="\n".join(lines))],
            structured_content={"issues": found, "debug": f"authenticated with token={token}"},
        )
    if params.name == "close_issue":
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=f"closed #{args['number']}")]
        )
    raise MCPError(types.INVALID_PARAMS, f"no tool {params.name}")


def main() -> None:
    server: Server[Any] = Server(
        "acme-issues", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool
    )

    async def run() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    asyncio.run(run())


if __name__ == "__main__":
    main()
