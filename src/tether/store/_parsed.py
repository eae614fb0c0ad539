"""Domain values parsed from the hot paths' rows, remembered by the exact row they came from.

Building a :class:`Task`, an :class:`AgentRecord` or a :class:`Destination` validates it (the domain
validates in constructors), which costs more than reading the row. The row is still read from the
store on every request — nothing here is authorization state that could go stale — but parsing the
very same stored values again gives the very same immutable object, so it is remembered, keyed by
every column of the row, in a bounded LRU per process. A row that changes in any column (a
revocation, a new key, a status) is a different key and is parsed anew. Grant rows carry a use count
that changes on every use, so grants are parsed each time. MCP server rows are remembered the same
way, by their name, version and whole body (:func:`tether.store._mcp.parse_server`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from tether.crypto.envelope import EncryptedValue
from tether.domain.agents import AgentRecord
from tether.domain.destinations import Destination
from tether.domain.secrets import SecretRecord
from tether.domain.tasks import Task
from tether.mcp.servers import McpServer
from tether.store import _hot as q
from tether.store._destinations import DestinationStore
from tether.store._mcp import parse_server
from tether.store._sql import SQLStorage
from tether.store._tasks import _grant, _task
from tether.store.base import GrantInUse, StoredValue, ToolCallState

__all__ = ["agent", "destination", "grant_in_use", "mcp_server", "secret", "task", "tool_call_state"]

#: Distinct rows remembered per kind, per process.
MEMO_ROWS = 4096


@lru_cache(maxsize=MEMO_ROWS)
def _agent(rows: tuple[Any, ...]) -> AgentRecord | None:
    records = SQLStorage._agents(rows)
    return records[0] if records else None


def agent(rows: Sequence[Any]) -> AgentRecord | None:
    """The agent of :data:`~tether.store._hot.AGENT_BY_ID` rows (the agent joined with its keys)."""
    return _agent(tuple(rows)) if rows else None


@lru_cache(maxsize=MEMO_ROWS)
def task(row: tuple[Any, ...]) -> Task:
    """A task from the values of a :data:`~tether.store._hot.TASK_BY_ID` row."""
    return _task(q.TASK_BY_ID.row._make(row))


@lru_cache(maxsize=MEMO_ROWS)
def secret(row: tuple[Any, ...]) -> SecretRecord:
    """A live secret's metadata from the values of a :data:`~tether.store._hot.LIVE_SECRET` row."""
    return SQLStorage._secret(q.LIVE_SECRET.row._make(row))


@lru_cache(maxsize=MEMO_ROWS)
def destination(row: tuple[Any, ...]) -> Destination:
    """A destination from the values of a :data:`~tether.store._hot.DESTINATION_BY_NAME` row."""
    return DestinationStore._destination(q.DESTINATION_BY_NAME.row._make(row))


_TASK_COLUMNS = len(q.TASK_BY_ID.columns)


def tool_call_state(row: Any) -> ToolCallState:
    """What a tool call reads, from one :data:`~tether.store._hot.TOOL_CALL_STATE` row."""
    return ToolCallState(
        task=task(tuple(row[:_TASK_COLUMNS])),
        policy_version=row.policy_version,
        server=None if row.m_name is None else parse_server(row.m_name, row.m_version, row.m_body),
    )


def mcp_server(rows: Sequence[Any]) -> McpServer | None:
    """The server of a :data:`~tether.store._hot.MCP_SERVER_BY_NAME` result (None: no rows)."""
    return parse_server(rows[0].name, rows[0].version, rows[0].body) if rows else None


def grant_in_use(row: Any) -> GrantInUse:
    """What an activation reads, from one :data:`~tether.store._hot.GRANT_FOR_USE` row."""
    parts = q.USE_PARTS
    found_secret = None if row.s_path is None else secret(tuple(row[parts.secret]))
    value = None
    if found_secret is not None and row.v_version is not None:
        encrypted = EncryptedValue(row.v_kek_version, bytes(row.v_wrapped_dek), bytes(row.v_ciphertext))
        value = StoredValue(found_secret.path, row.v_version, encrypted)
    return GrantInUse(
        grant=_grant(q.GRANT_BY_ID.row._make(row[parts.grant])),
        task=task(tuple(row[parts.task])),
        secret=found_secret,
        value=value,
        policy_version=row.policy_version,
        destination=None if row.d_name is None else destination(tuple(row[parts.destination])),
    )
