"""The hot paths' SQL, written once as text and shared by the raw-driver stores.

Activation, egress, tokens and issuance run on every use of every secret, so their queries skip the
SQL toolkit: each is a plain string prepared once per connection by the driver (stdlib ``sqlite3``'s
statement cache, ``asyncpg``'s prepared statements) and its rows come back as named tuples, which the
row mappers of the SQLAlchemy store (``getattr`` by column name) read unchanged. Column lists come
from ``tether.store.schema``, so the schema stays the one source of truth.

Placeholders are written ``?`` (SQLite); :attr:`Query.pg` renumbers them ``$1, $2, …`` for PostgreSQL.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table

from tether.domain.events import Event
from tether.errors import InvalidInputError, StorageError
from tether.store import schema as t
from tether.store._sqlbase import to_us

__all__ = [
    "ACTIVE_POLICY_VERSION",
    "AGENT_BY_ID",
    "AGENT_BY_NAME",
    "AUDIT_HEAD",
    "CONSUME_GRANT_USE",
    "DESTINATION_BY_NAME",
    "GRANT_BY_ID",
    "GRANT_FOR_USE",
    "INJECT_GRANT_FOR_USE",
    "INJECT_GRANT_FOR_USE_ANY_KEY",
    "INSERT_AUDIT_EVENT",
    "INSERT_GRANT",
    "INSERT_JTI",
    "INSERT_SNAPSHOT",
    "INSERT_TASK",
    "JTI_SWEEP",
    "LIVE_SECRET",
    "MCP_SERVER_BY_NAME",
    "REPLACE_EXPIRED_JTI",
    "TASK_BY_ID",
    "TASK_STATE_FOR_UPDATE",
    "TOOL_CALL_STATE",
    "USE_PARTS",
    "Query",
    "UseParts",
    "check_audit_batch",
    "jti_key",
    "replay_record",
]

_PLACEHOLDER = re.compile(r"\?")


@dataclass(frozen=True)
class Query:
    """One statement: its SQL (``?`` placeholders) and the named tuple its rows become."""

    sql: str
    columns: tuple[str, ...] = ()
    row: Any = field(init=False, repr=False, compare=False)
    pg: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "row", namedtuple("Row", self.columns) if self.columns else None)
        counter = iter(range(1, 1000))
        object.__setattr__(self, "pg", _PLACEHOLDER.sub(lambda _: f"${next(counter)}", self.sql))

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[Any]:
        make = self.row._make
        return [make(values) for values in raw]


def _columns(table: Table, alias: str, prefix: str = "") -> list[tuple[str, str]]:
    """``(sql expression, label)`` for every column of ``table`` under ``alias``."""
    return [(f"{alias}.{c.name}", prefix + c.name) for c in table.c]


def _select(columns: list[tuple[str, str]], rest: str) -> Query:
    listed = ", ".join(
        expr if expr.endswith("." + label) else f"{expr} AS {label}" for expr, label in columns
    )
    return Query(f"SELECT {listed} {rest}", tuple(label for _, label in columns))


# -- identity --------------------------------------------------------------------------------------
_AGENT_COLUMNS = [
    *_columns(t.agents, "a"),
    ("k.kid", "kid"),
    ("k.jwk", "jwk"),
    ("k.added_at_us", "added_at_us"),
    ("k.removed_at_us", "removed_at_us"),
]
_AGENT_FROM = "FROM agents a LEFT JOIN agent_keys k ON k.agent_id = a.id"
#: The agent with all its keys: one round trip, primary-key lookups on both sides.
AGENT_BY_ID = _select(_AGENT_COLUMNS, f"{_AGENT_FROM} WHERE a.id = ? ORDER BY k.added_at_us, k.kid")
AGENT_BY_NAME = _select(_AGENT_COLUMNS, f"{_AGENT_FROM} WHERE a.name = ? ORDER BY k.added_at_us, k.kid")

#: Replay keys longer than this are stored as their hash, so the index stays small.
MAX_JTI_KEY_BYTES = 64


def jti_key(key: bytes) -> bytes:
    """The stored form of a replay key (callers pass a hash; a longer key is hashed here)."""
    return hashlib.sha256(b"tether-jti\0" + key).digest() if len(key) > MAX_JTI_KEY_BYTES else key


#: Longest replay key a caller may pass (it is hashed down to MAX_JTI_KEY_BYTES).
MAX_JTI_INPUT_BYTES = 8192


def replay_record(key: bytes, expires_at: datetime, now: datetime) -> tuple[bytes, int, int]:
    """A ``remember_jti`` call checked: the stored key, ``now`` and the expiry in µs."""
    if not isinstance(key, bytes) or not 0 < len(key) <= MAX_JTI_INPUT_BYTES:
        raise InvalidInputError(f"a replay key is 1-{MAX_JTI_INPUT_BYTES} bytes", field="jti")
    now_us, expires_us = to_us(now), to_us(expires_at)
    if expires_us <= now_us:
        raise InvalidInputError("a replay record must expire in the future", field="expires_at")
    return jti_key(key), now_us, expires_us


def check_audit_batch(events: Sequence[Event], effects: Sequence[Sequence[object]]) -> None:
    """Refuse a batch that is not one contiguous run of the chain, or whose effects do not pair
    one list per event."""
    if effects and len(effects) != len(events):
        raise StorageError("an audit batch needs one list of effects per event")
    for before, after in itertools.pairwise(events):
        if after.seq != before.seq + 1 or after.prev_hash != before.hash:
            raise StorageError("an audit batch must be one contiguous run of the chain")


INSERT_JTI = Query("INSERT INTO jti_replay (key, expires_at_us) VALUES (?, ?) ON CONFLICT (key) DO NOTHING")
REPLACE_EXPIRED_JTI = Query("UPDATE jti_replay SET expires_at_us = ? WHERE key = ? AND expires_at_us <= ?")
JTI_SWEEP = Query(
    "DELETE FROM jti_replay WHERE key IN (SELECT key FROM jti_replay WHERE expires_at_us <= ? AND key != ?"
    " ORDER BY expires_at_us LIMIT ?) AND expires_at_us <= ?"
)

# -- the activation read: grant ⋈ task ⟕ live secret ⟕ its current version ⟕ destination ------------
_USE_COLUMNS = [
    *_columns(t.grants, "g", "g_"),
    *_columns(t.tasks, "t", "t_"),
    *_columns(t.secrets, "s", "s_"),
    ("v.version", "v_version"),
    ("v.kek_version", "v_kek_version"),
    ("v.wrapped_dek", "v_wrapped_dek"),
    ("v.ciphertext", "v_ciphertext"),
    *_columns(t.destinations, "d", "d_"),
    ("(SELECT version FROM policy_active WHERE id = 1)", "policy_version"),
]
_USE_FROM = (
    "FROM grants g JOIN tasks t ON t.id = g.task_id"
    " LEFT JOIN secrets s ON s.path = g.secret AND s.deleted_at_us IS NULL"
    " LEFT JOIN secret_versions v ON v.path = s.path AND v.version = s.current_version"
    " LEFT JOIN destinations d ON d.name = g.destination"
)
GRANT_FOR_USE = _select(_USE_COLUMNS, f"{_USE_FROM} WHERE g.id = ?")


@dataclass(frozen=True)
class UseParts:
    """Where each table's columns sit in a :data:`GRANT_FOR_USE` row."""

    grant: slice
    task: slice
    secret: slice
    destination: slice


def _parts() -> UseParts:
    sizes = [len(t.grants.c), len(t.tasks.c), len(t.secrets.c), 4, len(t.destinations.c)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return UseParts(
        grant=slice(starts[0], starts[0] + sizes[0]),
        task=slice(starts[1], starts[1] + sizes[1]),
        secret=slice(starts[2], starts[2] + sizes[2]),
        destination=slice(starts[4], starts[4] + sizes[4]),
    )


USE_PARTS = _parts()
_INJECT_WHERE = (
    "g.destination = ? AND g.mode = 'inject' AND g.revoked_at_us IS NULL AND g.expires_at_us > ?"
    " AND (g.max_uses IS NULL OR g.uses < g.max_uses)"
)
_NEWEST = "ORDER BY g.created_at_us DESC, g.id LIMIT 1"
#: Parameters: task id, key thumbprint, destination, now (µs).
INJECT_GRANT_FOR_USE = _select(
    _USE_COLUMNS, f"{_USE_FROM} WHERE g.task_id = ? AND g.jkt = ? AND {_INJECT_WHERE} {_NEWEST}"
)
#: Parameters: task id, destination, now (µs).
INJECT_GRANT_FOR_USE_ANY_KEY = _select(
    _USE_COLUMNS, f"{_USE_FROM} WHERE g.task_id = ? AND {_INJECT_WHERE} {_NEWEST}"
)

#: Count one use if the grant is usable and its task active. Parameters: grant id, task id, now, now.
CONSUME_GRANT_USE = Query(
    "UPDATE grants SET uses = uses + 1 WHERE id = ?"
    " AND task_id = (SELECT id FROM tasks WHERE id = ? AND status = 'active' AND expires_at_us > ?)"
    " AND revoked_at_us IS NULL AND expires_at_us > ? AND (max_uses IS NULL OR uses < max_uses)"
    " RETURNING uses",
    ("uses",),
)

# -- tasks, grants, secrets, destinations, policy -----------------------------------------------------
TASK_BY_ID = _select(_columns(t.tasks, "t"), "FROM tasks t WHERE t.id = ?")
#: A task's state, locked on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises writers).
TASK_STATE_FOR_UPDATE = Query(
    "SELECT status, expires_at_us FROM tasks WHERE id = ?", ("status", "expires_at_us")
)
GRANT_BY_ID = _select(_columns(t.grants, "g"), "FROM grants g WHERE g.id = ?")
LIVE_SECRET = _select(_columns(t.secrets, "s"), "FROM secrets s WHERE s.path = ? AND s.deleted_at_us IS NULL")
DESTINATION_BY_NAME = _select(_columns(t.destinations, "d"), "FROM destinations d WHERE d.name = ?")
ACTIVE_POLICY_VERSION = Query("SELECT version FROM policy_active WHERE id = 1", ("version",))

# -- the tool-call read: task, active policy version ⟕ the upstream MCP server it names --------------
MCP_SERVER_BY_NAME = _select(_columns(t.mcp_servers, "m"), "FROM mcp_servers m WHERE m.name = ?")
#: Parameters: the server's name, the task id. The task's columns first, then the policy version,
#: then the server's (all NULL when no server has that name).
TOOL_CALL_STATE = _select(
    [
        *_columns(t.tasks, "t"),
        ("(SELECT version FROM policy_active WHERE id = 1)", "policy_version"),
        *_columns(t.mcp_servers, "m", "m_"),
    ],
    "FROM tasks t LEFT JOIN mcp_servers m ON m.name = ? WHERE t.id = ?",
)


def _insert(table: Table) -> Query:
    names = [c.name for c in table.c]
    # Identifiers come from the schema module at import, never from input.
    return Query(f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", ())  # noqa: S608


#: Column order of the inserts below: the table's, as in ``tether.store.schema``.
TASK_COLUMNS = tuple(c.name for c in t.tasks.c)
GRANT_COLUMNS = tuple(c.name for c in t.grants.c)
AUDIT_COLUMNS = tuple(c.name for c in t.audit_events.c)
INSERT_TASK = _insert(t.tasks)
INSERT_GRANT = _insert(t.grants)
INSERT_AUDIT_EVENT = _insert(t.audit_events)
#: A decision-input snapshot, once per hash (content-addressed: an existing row is already right).
INSERT_SNAPSHOT = Query(
    "INSERT INTO decision_snapshots (hash, kind, body) VALUES (?, ?, ?) ON CONFLICT (hash) DO NOTHING"
)

# -- audit ----------------------------------------------------------------------------------------
AUDIT_HEAD = Query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", ("seq", "hash"))
