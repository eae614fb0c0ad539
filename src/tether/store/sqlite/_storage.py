"""SQLite storage: the hot paths on stdlib ``sqlite3``, everything else on the SQLAlchemy store.

Token, activation, egress and issuance call the methods overridden here: each is one query on the
caller's thread (reads) or one function on the writer thread (writes; see
:class:`~tether.store.sqlite._driver.SQLiteDriver`). Administration, migrations and the long tail of
queries keep the SQLAlchemy implementation, which writes to the same file through its own
connections; SQLite's lock orders the two kinds of writers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.domain.agents import AgentRecord
from tether.domain.destinations import Destination
from tether.domain.events import GENESIS_HASH, Event, event_body_json
from tether.domain.secrets import SecretRecord
from tether.domain.tasks import Grant, Task, TaskStatus
from tether.errors import ConflictError, StorageError
from tether.mcp.servers import McpServer
from tether.store import _hot as q
from tether.store import _parsed
from tether.store._sql import JTI_SWEEP_LIMIT, SQLStorage
from tether.store._sqlbase import to_us
from tether.store._tasks import _grant, _grant_values, _task_values
from tether.store.base import (
    AuditConflictError,
    ConsumeGrantUse,
    CreateGrant,
    CreateTask,
    Effect,
    EffectFailedError,
    GrantInUse,
    PutSnapshots,
    RememberJti,
    ToolCallState,
)
from tether.store.sqlite._driver import SQLiteDriver

__all__ = ["SQLiteStorage"]

#: Seals a batch of drafts on top of the head it is given: ``(seq, hash)`` of the stored newest event.
Sealer = Callable[[tuple[int, bytes]], list[Event]]


def _remember(conn: sqlite3.Connection, key: bytes, expires_us: int, now_us: int) -> bool:
    """Insert a replay record unless a live one exists (an expired one is replaced)."""
    key = q.jti_key(key)
    if conn.execute(q.INSERT_JTI.sql, (key, expires_us)).rowcount == 1:
        return True
    return bool(conn.execute(q.REPLACE_EXPIRED_JTI.sql, (expires_us, key, now_us)).rowcount == 1)


def _consume(conn: sqlite3.Connection, grant_id: str, task_id: str, now_us: int) -> int | None:
    row = conn.execute(q.CONSUME_GRANT_USE.sql, (grant_id, task_id, now_us, now_us)).fetchall()
    return None if not row else int(row[0][0])


def _task_active(conn: sqlite3.Connection, task_id: str, at_us: int) -> bool:
    row = conn.execute(q.TASK_STATE_FOR_UPDATE.sql, (task_id,)).fetchall()
    return bool(row) and row[0][0] == TaskStatus.ACTIVE.value and row[0][1] > at_us


def _insert_task(conn: sqlite3.Connection, task: Task) -> bool:
    if task.parent_id is not None and not _task_active(conn, task.parent_id, to_us(task.created_at)):
        return False
    values = _task_values(task)
    conn.execute(q.INSERT_TASK.sql, [values[name] for name in q.TASK_COLUMNS])
    return True


def _insert_grant(conn: sqlite3.Connection, grant: Grant, now: datetime) -> bool:
    if not _task_active(conn, grant.task_id, to_us(now)):
        return False
    values = _grant_values(grant)
    conn.execute(q.INSERT_GRANT.sql, [values[name] for name in q.GRANT_COLUMNS])
    return True


def _apply(conn: sqlite3.Connection, effect: Effect) -> object:
    if isinstance(effect, RememberJti):
        return _remember(conn, effect.key, to_us(effect.expires_at), to_us(effect.now))
    if isinstance(effect, ConsumeGrantUse):
        return _consume(conn, effect.grant_id, effect.task_id, to_us(effect.now))
    if isinstance(effect, CreateTask):
        return _insert_task(conn, effect.task)
    if isinstance(effect, CreateGrant):
        return _insert_grant(conn, effect.grant, effect.now)
    if isinstance(effect, PutSnapshots):
        conn.executemany(q.INSERT_SNAPSHOT.sql, effect.snapshots)
        return True
    raise StorageError(f"unknown audited effect {type(effect).__name__}")


def _apply_effects(
    conn: sqlite3.Connection, effects: Sequence[Sequence[Effect]], count: int
) -> list[list[object]]:
    """Every event's effects in order; :class:`EffectFailedError` (rolling back) if any fails."""
    if not effects:
        return [[] for _ in range(count)]
    results: list[list[object]] = []
    failed: dict[int, Effect] = {}
    for index, batch in enumerate(effects):
        done: list[object] = []
        for effect in batch:
            ok = _apply(conn, effect)
            if ok is None or ok is False:
                failed[index] = effect
                break
            done.append(ok)
        results.append(done)
    if failed:
        raise EffectFailedError(failed)
    return results


def _insert_events(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    conn.executemany(
        q.INSERT_AUDIT_EVENT.sql,
        [
            (
                e.seq,
                e.time_us,
                e.kind,
                e.actor.id,
                e.task_id,
                e.resource,
                e.allowed,
                event_body_json(e),
                e.hash,
            )
            for e in events
        ],
    )


def _head(conn: sqlite3.Connection) -> tuple[int, bytes]:
    row = conn.execute(q.AUDIT_HEAD.sql).fetchall()
    return (0, GENESIS_HASH) if not row else (int(row[0][0]), bytes(row[0][1]))


class SQLiteStorage(SQLStorage):
    """:class:`~tether.store._sql.SQLStorage` with the hot paths on stdlib ``sqlite3``."""

    def __init__(self, engine: AsyncEngine, driver: SQLiteDriver, *, unavailable_hint: str) -> None:
        super().__init__(engine, backend="sqlite", unavailable_hint=unavailable_hint)
        self._driver = driver

    async def close(self) -> None:
        self._driver.close()
        await super().close()

    # -- reads (one query on the caller's thread) -------------------------------------------------
    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return _parsed.agent(self._driver.read(q.AGENT_BY_ID, (agent_id,)))

    async def get_agent_by_name(self, name: str) -> AgentRecord | None:
        return _parsed.agent(self._driver.read(q.AGENT_BY_NAME, (name,)))

    async def grant_for_use(self, grant_id: str) -> GrantInUse | None:
        rows = self._driver.read(q.GRANT_FOR_USE, (grant_id,))
        return _parsed.grant_in_use(rows[0]) if rows else None

    async def inject_grant_for_use(
        self, task_id: str, destination: str, now: datetime, *, jkt: str | None = None
    ) -> GrantInUse | None:
        if jkt is None:
            rows = self._driver.read(q.INJECT_GRANT_FOR_USE_ANY_KEY, (task_id, destination, to_us(now)))
        else:
            rows = self._driver.read(q.INJECT_GRANT_FOR_USE, (task_id, jkt, destination, to_us(now)))
        return _parsed.grant_in_use(rows[0]) if rows else None

    async def get_task(self, task_id: str) -> Task | None:
        rows = self._driver.read(q.TASK_BY_ID, (task_id,))
        return _parsed.task(tuple(rows[0])) if rows else None

    async def get_grant(self, grant_id: str) -> Grant | None:
        rows = self._driver.read(q.GRANT_BY_ID, (grant_id,))
        return _grant(rows[0]) if rows else None

    async def get_secret(
        self, path: str, *, include_deleted: bool = False, with_versions: bool = False
    ) -> SecretRecord | None:
        if include_deleted or with_versions:
            return await super().get_secret(
                path, include_deleted=include_deleted, with_versions=with_versions
            )
        rows = self._driver.read(q.LIVE_SECRET, (path,))
        return _parsed.secret(tuple(rows[0])) if rows else None

    async def get_destination(self, name: str) -> Destination | None:
        rows = self._driver.read(q.DESTINATION_BY_NAME, (name,))
        return _parsed.destination(tuple(rows[0])) if rows else None

    async def get_mcp_server(self, name: str) -> McpServer | None:
        return _parsed.mcp_server(self._driver.read(q.MCP_SERVER_BY_NAME, (name,)))

    async def tool_call_state(self, task_id: str, server: str) -> ToolCallState | None:
        rows = self._driver.read(
            q.TOOL_CALL_STATE,
            (
                server,
                task_id,
            ),
        )
        return _parsed.tool_call_state(rows[0]) if rows else None

    async def active_policy_version(self) -> int | None:
        rows = self._driver.read(q.ACTIVE_POLICY_VERSION)
        return int(rows[0].version) if rows else None

    async def audit_head(self) -> tuple[int, bytes] | None:
        rows = self._driver.read(q.AUDIT_HEAD)
        return (int(rows[0].seq), bytes(rows[0].hash)) if rows else None

    # -- writes (one function on the writer thread) -------------------------------------------------
    async def append_audit_events(
        self, events: Sequence[Event], effects: Sequence[Sequence[Effect]] = ()
    ) -> list[list[object]]:
        if not events:
            return []
        q.check_audit_batch(events, effects)
        first = events[0]

        def work(conn: sqlite3.Connection) -> list[list[object]]:
            # BEGIN IMMEDIATE holds every writer off, so the head read here is the head.
            if _head(conn) != (first.seq - 1, first.prev_hash):
                raise AuditConflictError(f"audit event {first.seq} does not continue the stored chain")
            results = _apply_effects(conn, effects, len(events))
            _insert_events(conn, events)
            return results

        return await self._driver.write(work)

    async def append_sealed(
        self, seal: Sealer, effects: Sequence[Sequence[Effect]] = ()
    ) -> tuple[list[Event], list[list[object]]]:
        """Seal a batch on top of the head read inside the write transaction, then append it with
        its effects: writers of several processes never conflict, they queue (see
        :class:`~tether.store.base.SealingStorage`)."""

        def work(conn: sqlite3.Connection) -> tuple[list[Event], list[list[object]]]:
            events = seal(_head(conn))
            if effects and len(effects) != len(events):
                raise StorageError("an audit batch needs one list of effects per event")
            results = _apply_effects(conn, effects, len(events))
            _insert_events(conn, events)
            return events, results

        return await self._driver.write(work)

    async def remember_jti(self, key: bytes, *, expires_at: datetime, now: datetime) -> bool:
        key, now_us, expires_us = q.replay_record(key, expires_at, now)

        def work(conn: sqlite3.Connection) -> bool:
            if not _remember(conn, key, expires_us, now_us):
                return False
            conn.execute(q.JTI_SWEEP.sql, (now_us, q.jti_key(key), JTI_SWEEP_LIMIT, now_us))
            return True

        return await self._driver.write(work)

    async def consume_grant_use(self, grant_id: str, task_id: str, now: datetime) -> int | None:
        return await self._driver.write(lambda conn: _consume(conn, grant_id, task_id, to_us(now)))

    async def create_task(self, task: Task) -> None:
        if not await self._driver.write(lambda conn: self._unique(conn, _insert_task, task, what="task")):
            raise ConflictError(f"parent task {task.parent_id} is not active")

    async def create_grant(self, grant: Grant, *, now: datetime) -> None:
        if not await self._driver.write(
            lambda conn: self._unique(conn, _insert_grant, grant, now, what="grant")
        ):
            raise ConflictError(f"task {grant.task_id} is not active")

    @staticmethod
    def _unique(
        conn: sqlite3.Connection, insert: Callable[..., bool], item: Any, *args: Any, what: str
    ) -> bool:
        try:
            return insert(conn, item, *args)
        except sqlite3.IntegrityError:
            raise ConflictError(f"{what} {item.id} already exists") from None
