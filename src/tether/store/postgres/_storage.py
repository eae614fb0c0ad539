"""PostgreSQL storage: the hot paths on raw ``asyncpg``, everything else on the SQLAlchemy store.

Token, activation, egress and issuance call the methods overridden here. Each read is one prepared
statement on a pooled connection (``asyncpg`` prepares a statement once per connection and keeps it);
each write is one transaction on one connection, with no pre-ping and no toolkit in between. Audit
appends take a transaction-scoped advisory lock and read the chain head inside the transaction, so
several nodes queue on the lock instead of racing for sequence numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.domain.agents import AgentRecord
from tether.domain.destinations import Destination
from tether.domain.events import GENESIS_HASH, Event, event_body_json
from tether.domain.secrets import SecretRecord
from tether.domain.tasks import Grant, Task, TaskStatus
from tether.errors import ConflictError, StorageError, StorageUnavailableError, TetherError
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
from tether.tracing import inner_span

__all__ = ["PostgresStorage"]

T = TypeVar("T")

#: The advisory lock audit appends take (transaction-scoped): one appender at a time, every node.
_LOCK_AUDIT = "SELECT pg_advisory_xact_lock(7420002)"
_POSTGRES = {"db.system": "postgresql"}
_TASK_STATE_LOCKED = q.TASK_STATE_FOR_UPDATE.pg + " FOR UPDATE"


async def _remember(conn: Any, key: bytes, expires_us: int, now_us: int) -> bool:
    key = q.jti_key(key)
    if await conn.execute(q.INSERT_JTI.pg, key, expires_us) == "INSERT 0 1":
        return True
    return bool(await conn.execute(q.REPLACE_EXPIRED_JTI.pg, expires_us, key, now_us) == "UPDATE 1")


async def _consume(conn: Any, grant_id: str, task_id: str, now_us: int) -> int | None:
    value = await conn.fetchval(q.CONSUME_GRANT_USE.pg, grant_id, task_id, now_us, now_us)
    return None if value is None else int(value)


async def _task_active(conn: Any, task_id: str, at_us: int) -> bool:
    row = await conn.fetchrow(_TASK_STATE_LOCKED, task_id)
    return row is not None and row[0] == TaskStatus.ACTIVE.value and row[1] > at_us


async def _insert_task(conn: Any, task: Task) -> bool:
    if task.parent_id is not None and not await _task_active(conn, task.parent_id, to_us(task.created_at)):
        return False
    values = _task_values(task)
    try:
        await conn.execute(q.INSERT_TASK.pg, *[values[name] for name in q.TASK_COLUMNS])
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"task {task.id} already exists") from None
    return True


async def _insert_grant(conn: Any, grant: Grant, now: datetime) -> bool:
    if not await _task_active(conn, grant.task_id, to_us(now)):
        return False
    values = _grant_values(grant)
    try:
        await conn.execute(q.INSERT_GRANT.pg, *[values[name] for name in q.GRANT_COLUMNS])
    except asyncpg.UniqueViolationError:
        raise ConflictError(f"grant {grant.id} already exists") from None
    return True


async def _apply(conn: Any, effect: Effect) -> object:
    if isinstance(effect, RememberJti):
        return await _remember(conn, effect.key, to_us(effect.expires_at), to_us(effect.now))
    if isinstance(effect, ConsumeGrantUse):
        return await _consume(conn, effect.grant_id, effect.task_id, to_us(effect.now))
    if isinstance(effect, CreateTask):
        return await _insert_task(conn, effect.task)
    if isinstance(effect, CreateGrant):
        return await _insert_grant(conn, effect.grant, effect.now)
    if isinstance(effect, PutSnapshots):
        await conn.executemany(q.INSERT_SNAPSHOT.pg, effect.snapshots)
        return True
    raise StorageError(f"unknown audited effect {type(effect).__name__}")


async def _apply_effects(conn: Any, effects: Sequence[Sequence[Effect]], count: int) -> list[list[object]]:
    if not effects:
        return [[] for _ in range(count)]
    results: list[list[object]] = []
    failed: dict[int, Effect] = {}
    for index, batch in enumerate(effects):
        done: list[object] = []
        for effect in batch:
            ok = await _apply(conn, effect)
            if ok is None or ok is False:
                failed[index] = effect
                break
            done.append(ok)
        results.append(done)
    if failed:
        raise EffectFailedError(failed)
    return results


async def _insert_events(conn: Any, events: Sequence[Event]) -> None:
    await conn.executemany(
        q.INSERT_AUDIT_EVENT.pg,
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


async def _head(conn: Any) -> tuple[int, bytes]:
    row = await conn.fetchrow(q.AUDIT_HEAD.pg)
    return (0, GENESIS_HASH) if row is None else (int(row[0]), bytes(row[1]))


class PostgresStorage(SQLStorage):
    """:class:`~tether.store._sql.SQLStorage` with the hot paths on raw ``asyncpg``."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dsn: str,
        server_settings: dict[str, str],
        pool_size: int,
        migrate_hook: Callable[[AsyncConnection], Any] | None,
        unavailable_hint: str,
    ) -> None:
        super().__init__(
            engine, backend="postgresql", migrate_hook=migrate_hook, unavailable_hint=unavailable_hint
        )
        self._dsn = dsn
        self._server_settings = server_settings
        self._pool_size = pool_size
        self._pools: dict[asyncio.AbstractEventLoop, asyncio.Task[asyncpg.Pool]] = {}

    async def _pool(self) -> asyncpg.Pool:
        # A pool belongs to one event loop (tests run several, one after another). Concurrent first
        # callers share one creation, so no pool is made twice and leaked.
        loop = asyncio.get_running_loop()
        pending = self._pools.get(loop)
        if pending is None:
            for stale in [other for other in self._pools if other.is_closed()]:
                del self._pools[stale]
            pending = self._pools[loop] = loop.create_task(self._new_pool())
        try:
            return await asyncio.shield(pending)
        except BaseException:
            if pending.done() and self._pools.get(loop) is pending:
                del self._pools[loop]  # failed (store down): try again next time
            raise

    async def _new_pool(self) -> asyncpg.Pool:
        return await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._pool_size, timeout=10, server_settings=self._server_settings
        )

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        pools, self._pools = self._pools, {}
        for owner, pending in pools.items():
            if not pending.done() or pending.cancelled() or pending.exception() is not None:
                pending.cancel()
            elif owner is loop:
                await pending.result().close()
            else:
                pending.result().terminate()  # its loop is gone: close the sockets without it
        await super().close()

    def _translate_pg(self, exc: BaseException) -> StorageError:
        if isinstance(exc, asyncpg.UndefinedTableError):
            return StorageError(f"postgresql store has no Tether schema{self._hint}: run `tether migrate`")
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        if sqlstate[:2] in {"08", "28", "3D", "57"} or isinstance(
            exc, OSError | asyncpg.InterfaceError | asyncio.TimeoutError
        ):
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            return StorageUnavailableError(f"postgresql store unavailable{self._hint}: {first}")
        return StorageError(f"postgresql store error: {type(exc).__name__}")

    async def _guard(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except TetherError:
            raise
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise self._translate_pg(exc) from None

    async def _fetch(self, query: q.Query, *params: Any) -> list[Any]:
        async def work() -> list[Any]:
            pool = await self._pool()
            return query.rows(await pool.fetch(query.pg, *params))

        with inner_span("tether.store.read", _POSTGRES):
            return await self._guard(work())

    async def _write(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async def run() -> T:
            pool = await self._pool()
            async with pool.acquire() as conn, conn.transaction():
                return await work(conn)

        with inner_span("tether.store.write", _POSTGRES):
            return await self._guard(run())

    # -- reads ------------------------------------------------------------------------------------
    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return _parsed.agent(await self._fetch(q.AGENT_BY_ID, agent_id))

    async def get_agent_by_name(self, name: str) -> AgentRecord | None:
        return _parsed.agent(await self._fetch(q.AGENT_BY_NAME, name))

    async def grant_for_use(self, grant_id: str) -> GrantInUse | None:
        rows = await self._fetch(q.GRANT_FOR_USE, grant_id)
        return _parsed.grant_in_use(rows[0]) if rows else None

    async def inject_grant_for_use(
        self, task_id: str, destination: str, now: datetime, *, jkt: str | None = None
    ) -> GrantInUse | None:
        if jkt is None:
            rows = await self._fetch(q.INJECT_GRANT_FOR_USE_ANY_KEY, task_id, destination, to_us(now))
        else:
            rows = await self._fetch(q.INJECT_GRANT_FOR_USE, task_id, jkt, destination, to_us(now))
        return _parsed.grant_in_use(rows[0]) if rows else None

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._fetch(q.TASK_BY_ID, task_id)
        return _parsed.task(tuple(rows[0])) if rows else None

    async def get_grant(self, grant_id: str) -> Grant | None:
        rows = await self._fetch(q.GRANT_BY_ID, grant_id)
        return _grant(rows[0]) if rows else None

    async def get_secret(
        self, path: str, *, include_deleted: bool = False, with_versions: bool = False
    ) -> SecretRecord | None:
        if include_deleted or with_versions:
            return await super().get_secret(
                path, include_deleted=include_deleted, with_versions=with_versions
            )
        rows = await self._fetch(q.LIVE_SECRET, path)
        return _parsed.secret(tuple(rows[0])) if rows else None

    async def get_destination(self, name: str) -> Destination | None:
        rows = await self._fetch(q.DESTINATION_BY_NAME, name)
        return _parsed.destination(tuple(rows[0])) if rows else None

    async def get_mcp_server(self, name: str) -> McpServer | None:
        return _parsed.mcp_server(await self._fetch(q.MCP_SERVER_BY_NAME, name))

    async def tool_call_state(self, task_id: str, server: str) -> ToolCallState | None:
        rows = await self._fetch(q.TOOL_CALL_STATE, server, task_id)
        return _parsed.tool_call_state(rows[0]) if rows else None

    async def active_policy_version(self) -> int | None:
        rows = await self._fetch(q.ACTIVE_POLICY_VERSION)
        return int(rows[0].version) if rows else None

    async def audit_head(self) -> tuple[int, bytes] | None:
        rows = await self._fetch(q.AUDIT_HEAD)
        return (int(rows[0].seq), bytes(rows[0].hash)) if rows else None

    # -- writes ------------------------------------------------------------------------------------
    async def append_audit_events(
        self, events: Sequence[Event], effects: Sequence[Sequence[Effect]] = ()
    ) -> list[list[object]]:
        if not events:
            return []
        q.check_audit_batch(events, effects)
        first = events[0]

        async def work(conn: Any) -> list[list[object]]:
            await conn.execute(_LOCK_AUDIT)
            if await _head(conn) != (first.seq - 1, first.prev_hash):
                raise AuditConflictError(f"audit event {first.seq} does not continue the stored chain")
            results = await _apply_effects(conn, effects, len(events))
            await _insert_events(conn, events)
            return results

        return await self._write(work)

    async def append_sealed(
        self, seal: Callable[[tuple[int, bytes]], list[Event]], effects: Sequence[Sequence[Effect]] = ()
    ) -> tuple[list[Event], list[list[object]]]:
        """Seal on the head read under the audit lock, then append (see ``SealingStorage``)."""

        async def work(conn: Any) -> tuple[list[Event], list[list[object]]]:
            # The chain's lock first, then the effects: appenders of every node take turns for the whole
            # transaction. Effects first would let two batches take the same grants' row locks in
            # opposite orders and deadlock (PostgreSQL aborts one after deadlock_timeout: a refused use).
            await conn.execute(_LOCK_AUDIT)
            results = await _apply_effects(conn, effects, len(effects))
            events = seal(await _head(conn))
            if effects and len(effects) != len(events):
                raise StorageError("an audit batch needs one list of effects per event")
            await _insert_events(conn, events)
            return events, results or [[] for _ in events]

        return await self._write(work)

    async def remember_jti(self, key: bytes, *, expires_at: datetime, now: datetime) -> bool:
        key, now_us, expires_us = q.replay_record(key, expires_at, now)

        async def work(conn: Any) -> bool:
            if not await _remember(conn, key, expires_us, now_us):
                return False
            await conn.execute(q.JTI_SWEEP.pg, now_us, q.jti_key(key), JTI_SWEEP_LIMIT, now_us)
            return True

        return await self._write(work)

    async def consume_grant_use(self, grant_id: str, task_id: str, now: datetime) -> int | None:
        return await self._write(lambda conn: _consume(conn, grant_id, task_id, to_us(now)))

    async def create_task(self, task: Task) -> None:
        if not await self._write(lambda conn: _insert_task(conn, task)):
            raise ConflictError(f"parent task {task.parent_id} is not active")

    async def create_grant(self, grant: Grant, *, now: datetime) -> None:
        if not await self._write(lambda conn: _insert_grant(conn, grant, now)):
            raise ConflictError(f"task {grant.task_id} is not active")
