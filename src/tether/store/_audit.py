"""Audit storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.domain.event_records import event_from_body
from tether.domain.events import GENESIS_HASH, Event, MalformedEventError, event_body_json, time_us
from tether.errors import (
    ConflictError,
    StorageError,
)
from tether.store import schema as t
from tether.store._hot import check_audit_batch, jti_key
from tether.store._sqlbase import SQLBase, like_escape, to_us
from tether.store._tasks import TaskStore
from tether.store.base import (
    AuditConflictError,
    AuditCorruptionError,
    ConsumeGrantUse,
    CreateTask,
    Effect,
    EffectFailedError,
    PutSnapshots,
    RememberJti,
    StoredAuditRow,
    StoredCheckpoint,
)

__all__ = ["AuditStore"]


class AuditStore(SQLBase):
    """The audit chain (append-only) and its checkpoints; the effects that ride with events."""

    # -- audit ----------------------------------------------------------------------------
    async def append_audit_events(
        self, events: Sequence[Event], effects: Sequence[Sequence[Effect]] = ()
    ) -> list[list[object]]:
        if not events:
            return []
        check_audit_batch(events, effects)
        first = events[0]
        rows = [
            {
                "seq": e.seq,
                "time_us": e.time_us,
                "kind": e.kind,
                "actor_id": e.actor.id,
                "task_id": e.task_id,
                "resource": e.resource,
                "allowed": e.allowed,
                "body": event_body_json(e),
                "hash": e.hash,
            }
            for e in events
        ]
        c = t.audit_events.c
        async with self._tx(
            on_duplicate=lambda: AuditConflictError(
                f"audit seq {first.seq}..{events[-1].seq} was taken by another writer"
            )
        ) as conn:
            # The primary key stops two writers taking one seq; this read also stops a
            # writer whose idea of the head is stale from forking the chain.
            if first.seq == 1:
                linked = first.prev_hash == GENESIS_HASH
            else:
                previous = (
                    await conn.execute(select(c.hash).where(c.seq == first.seq - 1))
                ).scalar_one_or_none()
                linked = previous is not None and bytes(previous) == first.prev_hash
            if not linked:
                raise AuditConflictError(f"audit event {first.seq} does not continue the stored chain")
            results = await self._apply_effects(conn, effects) if effects else [[] for _ in events]
            await conn.execute(t.audit_events.insert(), rows)
        return results

    async def _apply_effects(
        self, conn: AsyncConnection, effects: Sequence[Sequence[Effect]]
    ) -> list[list[object]]:
        """Apply every event's effects; :class:`EffectFailedError` (rolling back) if any fails."""
        results: list[list[object]] = []
        failed: dict[int, Effect] = {}
        for index, batch in enumerate(effects):
            done: list[object] = []
            for effect in batch:
                ok: object
                if isinstance(effect, RememberJti):
                    ok = await self._remember(conn, effect.key, effect.expires_at, effect.now)
                elif isinstance(effect, ConsumeGrantUse):
                    ok = await TaskStore._consume(conn, effect.grant_id, effect.task_id, effect.now)
                elif isinstance(effect, CreateTask):
                    ok = await TaskStore._insert_task(conn, effect.task)
                elif isinstance(effect, PutSnapshots):
                    ok = await self._put_snapshots(conn, effect)
                else:
                    ok = await TaskStore._insert_grant(conn, effect.grant, effect.now)
                if ok is None or ok is False:
                    failed[index] = effect
                    break
                done.append(ok)
            results.append(done)
        if failed:
            raise EffectFailedError(failed)
        return results

    async def _put_snapshots(self, conn: AsyncConnection, effect: PutSnapshots) -> bool:
        """Store decision-input snapshots; a hash already stored keeps its (identical) row."""
        dialect_insert = sqlite_insert if self.backend == "sqlite" else pg_insert
        rows = [{"hash": h, "kind": kind, "body": body} for h, kind, body in effect.snapshots]
        statement = dialect_insert(t.decision_snapshots).on_conflict_do_nothing(index_elements=["hash"])
        await conn.execute(statement, rows)
        return True

    async def _remember(self, conn: AsyncConnection, key: bytes, expires_at: datetime, now: datetime) -> bool:
        """Insert a replay record unless a live one exists (an expired one is replaced). Never
        raises on a duplicate, so it can share a transaction with other writes."""
        key = jti_key(key)
        c = t.jti_replay.c
        now_us, expires_us = to_us(now), to_us(expires_at)
        dialect_insert = sqlite_insert if self.backend == "sqlite" else pg_insert
        inserted = await conn.execute(
            dialect_insert(t.jti_replay)
            .values(key=key, expires_at_us=expires_us)
            .on_conflict_do_nothing(index_elements=["key"])
        )
        if inserted.rowcount == 1:
            return True
        replaced = await conn.execute(
            update(t.jti_replay)
            .where(and_(c.key == key, c.expires_at_us <= now_us))
            .values(expires_at_us=expires_us)
        )
        return bool(replaced.rowcount == 1)

    async def audit_head(self) -> tuple[int, bytes] | None:
        c = t.audit_events.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(c.seq, c.hash).order_by(c.seq.desc()).limit(1))).first()
        return None if row is None else (int(row.seq), bytes(row.hash))

    @staticmethod
    def _audit_event(row: Any) -> Event:
        try:
            event = event_from_body(row.body, bytes(row.hash))
        except MalformedEventError as exc:
            raise AuditCorruptionError(int(row.seq), f"unreadable body: {exc}") from None
        index = (row.seq, row.time_us, row.kind, row.actor_id, row.task_id, row.resource, row.allowed)
        implied = (
            event.seq,
            event.time_us,
            event.kind,
            event.actor.id,
            event.task_id,
            event.resource,
            event.allowed,
        )
        if index != implied:
            # Queries filter on these columns: an index that lies could hide events.
            raise AuditCorruptionError(int(row.seq), "index columns disagree with the event body")
        return event

    async def read_audit_events(
        self,
        *,
        after_seq: int = 0,
        limit: int,
        kind: str | None = None,
        actor: str | None = None,
        task_id: str | None = None,
        resource: str | None = None,
        allowed: bool | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[Event]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        c = t.audit_events.c
        query = select(t.audit_events).where(c.seq > after_seq).order_by(c.seq).limit(limit)
        if kind is not None:
            if kind.endswith(".*"):
                query = query.where(c.kind.like(like_escape(kind[:-1]) + "%", escape="\\"))
            else:
                query = query.where(c.kind == kind)
        if actor is not None:
            query = query.where(c.actor_id == actor)
        if task_id is not None:
            query = query.where(c.task_id == task_id)
        if resource is not None:
            query = query.where(c.resource == resource)
        if allowed is not None:
            query = query.where(c.allowed.is_(allowed))
        if since is not None:
            query = query.where(c.time_us >= time_us(since))
        if until is not None:
            query = query.where(c.time_us < time_us(until))
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [self._audit_event(row) for row in rows]

    async def read_audit_rows(self, *, after_seq: int = 0, limit: int) -> list[StoredAuditRow]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        c = t.audit_events.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(t.audit_events).where(c.seq > after_seq).order_by(c.seq).limit(limit)
                )
            ).all()
        return [
            StoredAuditRow(
                seq=int(r.seq),
                time_us=int(r.time_us),
                kind=r.kind,
                actor_id=r.actor_id,
                task_id=r.task_id,
                resource=r.resource,
                allowed=r.allowed,
                body=r.body,
                hash=bytes(r.hash),
            )
            for r in rows
        ]

    async def put_audit_checkpoint(self, checkpoint: StoredCheckpoint) -> None:
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"an audit checkpoint at seq {checkpoint.seq} exists")
        ) as conn:
            await conn.execute(
                t.audit_checkpoints.insert().values(
                    seq=checkpoint.seq,
                    time_us=checkpoint.time_us,
                    head_hash=checkpoint.head_hash,
                    key_id=checkpoint.key_id,
                    signature=checkpoint.signature,
                    body=checkpoint.body,
                )
            )

    @staticmethod
    def _checkpoint(row: Any) -> StoredCheckpoint:
        return StoredCheckpoint(
            seq=int(row.seq),
            time_us=int(row.time_us),
            head_hash=bytes(row.head_hash),
            key_id=row.key_id,
            signature=bytes(row.signature),
            body=row.body,
        )

    async def list_audit_checkpoints(
        self, *, after_seq: int = 0, limit: int = 1000
    ) -> list[StoredCheckpoint]:
        c = t.audit_checkpoints.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(t.audit_checkpoints).where(c.seq > after_seq).order_by(c.seq).limit(limit)
                )
            ).all()
        return [self._checkpoint(row) for row in rows]

    async def latest_audit_checkpoint(self) -> StoredCheckpoint | None:
        c = t.audit_checkpoints.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.audit_checkpoints).order_by(c.seq.desc()).limit(1))).first()
        return None if row is None else self._checkpoint(row)
