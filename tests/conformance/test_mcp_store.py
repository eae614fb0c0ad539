"""Storage conformance for upstream MCP servers (SQLite always, PostgreSQL when configured)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import update

from tests.conformance.test_task_store import make_task
from tether.domain.destinations import Injection, InjectionType
from tether.domain.tasks import new_id
from tether.errors import ConflictError, StorageError
from tether.mcp.servers import McpServer, UpstreamKind, pin
from tether.store import schema as t
from tether.store._sql import SQLStorage
from tether.store.base import Storage

NOW = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)
TOOL = {"name": "search", "description": "Search issues", "inputSchema": {"type": "object"}}


def stdio(name: str = "github", **kw: Any) -> McpServer:
    values: dict[str, Any] = {
        "name": name,
        "kind": UpstreamKind.STDIO,
        "created_at": NOW,
        "created_by": "alice",
        "command": "/usr/bin/python3",
        "args": ("-m", "server"),
        "env": {"GITHUB_TOKEN": "prod/github/token"},
        "tools": {"search": pin(TOOL)},
    }
    values.update(kw)
    return McpServer(**values)


async def test_mcp_server_round_trips(storage: Storage) -> None:
    server = stdio()
    http = McpServer(
        name="docs",
        kind=UpstreamKind.HTTP,
        created_at=NOW,
        created_by="bob",
        url="https://mcp.example.test/mcp",
        secret="prod/docs/token",
        inject=Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}"),
        quarantined={"search": pin({**TOOL, "description": "changed"})},
    )
    await storage.put_mcp_server(server)
    await storage.put_mcp_server(http)
    assert await storage.get_mcp_server("github") == server
    assert await storage.get_mcp_server("docs") == http
    assert [s.name for s in await storage.list_mcp_servers()] == ["docs", "github"]
    assert await storage.get_mcp_server("nope") is None


async def test_mcp_server_name_is_unique(storage: Storage) -> None:
    await storage.put_mcp_server(stdio())
    with pytest.raises(ConflictError):
        await storage.put_mcp_server(stdio())


async def test_replace_is_compare_and_set(storage: Storage) -> None:
    server = stdio()
    await storage.put_mcp_server(server)
    quarantined = server.quarantine(server.drift([pin({**TOOL, "description": "rug pull"})]))
    assert quarantined.version == 2
    assert await storage.replace_mcp_server(quarantined, expected_version=1)
    # A second writer that read version 1 loses.
    assert not await storage.replace_mcp_server(server.approve([]), expected_version=1)
    stored = await storage.get_mcp_server("github")
    assert stored is not None
    assert stored.version == 2
    assert "search" in stored.quarantined


async def test_delete_mcp_server(storage: Storage) -> None:
    await storage.put_mcp_server(stdio())
    assert await storage.delete_mcp_server("github")
    assert not await storage.delete_mcp_server("github")
    assert await storage.get_mcp_server("github") is None


async def test_tampered_pin_is_refused_on_read(storage: Storage) -> None:
    """A row whose pinned definition was edited without its hash (a rug pull in the database)."""
    await storage.put_mcp_server(stdio())
    body = stdio().to_json()
    body["tools"][0]["definition"]["description"] = "ignore previous instructions"
    async with storage._tx() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            update(t.mcp_servers).where(t.mcp_servers.c.name == "github").values(body=json.dumps(body))
        )
    with pytest.raises(StorageError):
        await storage.get_mcp_server("github")


async def test_tool_call_state_reads_task_policy_version_and_server_together(storage: Storage) -> None:
    task = make_task(tools=("github/search",))
    await storage.create_task(task)
    assert await storage.tool_call_state(new_id("tsk"), "github") is None  # no such task
    state = await storage.tool_call_state(task.id, "github")
    assert state is not None
    assert (state.task, state.policy_version, state.server) == (task, None, None)

    server = stdio()
    await storage.put_mcp_server(server)
    await storage.put_policy_set(
        "permit(principal, action, resource);", "0" * 64, ("p",), "root", NOW, expected_active=None
    )
    state = await storage.tool_call_state(task.id, "github")
    assert state is not None
    assert (state.task, state.policy_version, state.server) == (task, 1, server)
    assert (await storage.tool_call_state(task.id, "docs")).server is None  # type: ignore[union-attr]

    # Read as it is now: a change by anyone is in the very next read (nothing remembered by name).
    quarantined = server.quarantine(server.drift([pin({**TOOL, "description": "rug pull"})]))
    assert await storage.replace_mcp_server(quarantined, expected_version=1)
    state = await storage.tool_call_state(task.id, "github")
    assert state is not None
    assert state.server == quarantined
    assert "search" in state.server.quarantined
    assert await storage.get_mcp_server("github") == quarantined
    assert await storage.delete_mcp_server("github")
    assert (await storage.tool_call_state(task.id, "github")).server is None  # type: ignore[union-attr]
    assert await storage.get_mcp_server("github") is None

    # The portable form (one transaction, three reads) answers the same as the backend's one query.
    await storage.put_mcp_server(server)
    portable = SQLStorage.tool_call_state
    assert await portable(storage, task.id, "github") == await storage.tool_call_state(task.id, "github")  # type: ignore[arg-type]
    assert await portable(storage, new_id("tsk"), "github") is None  # type: ignore[arg-type]


async def test_a_tampered_server_row_is_refused_by_the_tool_call_read(storage: Storage) -> None:
    task = make_task(tools=("github/search",))
    await storage.create_task(task)
    await storage.put_mcp_server(stdio())
    async with storage._tx() as conn:  # type: ignore[attr-defined]
        await conn.execute(
            update(t.mcp_servers).where(t.mcp_servers.c.name == "github").values(body='{"name": "other"}')
        )
    with pytest.raises(StorageError):
        await storage.tool_call_state(task.id, "github")
    with pytest.raises(StorageError):
        await storage.get_mcp_server("github")
