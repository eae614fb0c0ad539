"""SQL storage for upstream MCP servers; mixed into :class:`~tether.store._sql.SQLStorage`.

A row holds the server's name and a JSON ``body`` (see :class:`tether.mcp.servers.McpServer`),
with a ``version`` that every change bumps: a quarantine recorded by one worker and an approval
by an operator never overwrite each other (compare-and-set). A row is validated again when it is
read (pins are re-hashed), so a tampered row is refused rather than served.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, select, update

from tether.errors import ConflictError, InvalidInputError, StorageError
from tether.mcp.servers import McpServer
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, to_us
from tether.store._tasks import _task
from tether.store.base import ToolCallState

__all__ = ["McpServerStore", "parse_server"]

#: Rows already parsed and their pins re-hashed, by their exact content (a value is immutable, so
#: reusing it is the same as parsing it again).
MAX_PARSED = 256
_PARSED: dict[tuple[str, int, str], McpServer] = {}


def parse_server(name: str, version: int, body: str) -> McpServer:
    """A stored row's server, parsed and its pins re-hashed once per exact content."""
    key = (name, version, body)
    parsed = _PARSED.get(key)
    if parsed is not None:
        return parsed
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or data.get("name") != name:
            raise TypeError("body")
        parsed = McpServer.from_json({**data, "version": version})
    except (InvalidInputError, ValueError, TypeError, KeyError) as exc:
        raise StorageError(f"a stored MCP server is invalid: {type(exc).__name__}") from None
    if len(_PARSED) >= MAX_PARSED:
        _PARSED.clear()
    _PARSED[key] = parsed
    return parsed


class McpServerStore(SQLBase):
    """Storage methods for upstream MCP servers."""

    @staticmethod
    def _server(row: Any) -> McpServer:
        return parse_server(row.name, row.version, row.body)

    async def put_mcp_server(self, server: McpServer) -> None:
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"an MCP server named {server.name!r} already exists")
        ) as conn:
            await conn.execute(
                t.mcp_servers.insert().values(
                    name=server.name,
                    body=json.dumps(server.to_json(), sort_keys=True),
                    version=server.version,
                    created_at_us=to_us(server.created_at),
                )
            )

    async def replace_mcp_server(self, server: McpServer, *, expected_version: int) -> bool:
        c = t.mcp_servers.c
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.mcp_servers)
                .where(and_(c.name == server.name, c.version == expected_version))
                .values(body=json.dumps(server.to_json(), sort_keys=True), version=server.version)
            )
        return bool(result.rowcount == 1)

    async def get_mcp_server(self, name: str) -> McpServer | None:
        c = t.mcp_servers.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.mcp_servers).where(c.name == name))).first()
        return None if row is None else self._server(row)

    async def tool_call_state(self, task_id: str, server: str) -> ToolCallState | None:
        # The raw-driver stores answer in one query (_hot.TOOL_CALL_STATE); this is the portable
        # form: three reads in one transaction, so they see one state of the store.
        async with self._tx(write=False) as conn:
            task_row = (await conn.execute(select(t.tasks).where(t.tasks.c.id == task_id))).first()
            if task_row is None:
                return None
            version = (
                await conn.execute(select(t.policy_active.c.version).where(t.policy_active.c.id == 1))
            ).scalar_one_or_none()
            row = (await conn.execute(select(t.mcp_servers).where(t.mcp_servers.c.name == server))).first()
        return ToolCallState(
            task=_task(task_row),
            policy_version=None if version is None else int(version),
            server=None if row is None else self._server(row),
        )

    async def list_mcp_servers(self) -> list[McpServer]:
        c = t.mcp_servers.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(select(t.mcp_servers).order_by(c.name.collate(self._binary_collation)))
            ).all()
        return [self._server(row) for row in rows]

    async def delete_mcp_server(self, name: str) -> bool:
        c = t.mcp_servers.c
        async with self._tx() as conn:
            result = await conn.execute(t.mcp_servers.delete().where(c.name == name))
        return bool(result.rowcount == 1)
