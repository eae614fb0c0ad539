"""One SQLAlchemy Core implementation of :class:`~tether.store.base.Storage`.

The SQLite and PostgreSQL backends differ only in how they connect (see
``tether.store.sqlite`` and ``tether.store.postgres``); the queries are the same.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.envelope import EncryptedValue
from tether.domain.agents import MAX_ACTIVE_KEYS, AgentAttributes, AgentKey, AgentRecord, TrustedIssuer
from tether.domain.events import (
    GENESIS_HASH,
    Event,
    MalformedEventError,
    event_body_json,
    event_from_body,
    time_us,
)
from tether.domain.operators import OperatorRecord, Role
from tether.domain.secrets import SecretMetadata, SecretRecord, SecretVersionInfo, Sensitivity
from tether.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    StorageError,
)
from tether.store import schema as t
from tether.store._destinations import DestinationStore
from tether.store._hot import check_audit_batch, jti_key, replay_record
from tether.store._sqlbase import from_us, like_escape, to_us
from tether.store._tasks import TaskStore
from tether.store.base import (
    AuditConflictError,
    AuditCorruptionError,
    ConsumeGrantUse,
    CreateTask,
    Effect,
    EffectFailedError,
    PolicySetRecord,
    RememberJti,
    StoredAuditRow,
    StoredCheckpoint,
    StoredValue,
    VersionConflictError,
)

__all__ = ["SQLStorage", "from_us", "to_us"]

#: How many expired replay records one ``remember_jti`` call deletes at most.
JTI_SWEEP_LIMIT = 100


class SQLStorage(TaskStore, DestinationStore):
    """Storage on a SQLAlchemy async engine."""

    async def migrate(self) -> None:
        from tether.store.migrations import upgrade

        async with self._tx() as conn:
            if self._migrate_hook is not None:
                await self._migrate_hook(conn)
            await conn.run_sync(upgrade)

    async def ping(self) -> None:
        async with self._tx(write=False) as conn:
            await conn.execute(select(1))

    async def close(self) -> None:
        await self._engine.dispose()

    # -- meta ---------------------------------------------------------------------------
    async def get_meta(self, key: str) -> bytes | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.meta.c.value).where(t.meta.c.key == key))).first()
        return None if row is None else bytes(row[0])

    async def put_meta(self, key: str, value: bytes, *, expected: bytes | None) -> None:
        async with self._tx(on_duplicate=lambda: ConflictError(f"meta {key!r} already exists")) as conn:
            if expected is None:
                await conn.execute(t.meta.insert().values(key=key, value=value))
                return
            result = await conn.execute(
                update(t.meta)
                .where(and_(t.meta.c.key == key, t.meta.c.value == expected))
                .values(value=value)
            )
            if result.rowcount != 1:
                raise ConflictError(f"meta {key!r} changed concurrently")

    async def delete_meta(self, key: str, *, expected: bytes) -> bool:
        async with self._tx() as conn:
            result = await conn.execute(
                t.meta.delete().where(and_(t.meta.c.key == key, t.meta.c.value == expected))
            )
        return bool(result.rowcount == 1)

    # -- secrets ------------------------------------------------------------------------
    @staticmethod
    def _secret(row: Any, versions: tuple[SecretVersionInfo, ...] = ()) -> SecretRecord:
        try:
            return SQLStorage._build_secret(row, versions)
        except (InvalidInputError, ValueError, TypeError) as exc:
            # A row that fails the domain's validation is corrupted storage, not bad input.
            raise StorageError(f"stored metadata of a secret is invalid: {type(exc).__name__}") from None

    @staticmethod
    def _build_secret(row: Any, versions: tuple[SecretVersionInfo, ...]) -> SecretRecord:
        return SecretRecord(
            path=row.path,
            metadata=SecretMetadata(
                sensitivity=Sensitivity(row.sensitivity),
                purposes=frozenset(json.loads(row.purposes)),
                destinations=frozenset(json.loads(row.destinations)),
                owner=row.owner,
                rotation_period_seconds=row.rotation_period_seconds,
            ),
            current_version=row.current_version,
            created_at=from_us(row.created_at_us),
            updated_at=from_us(row.updated_at_us),
            deleted_at=None if row.deleted_at_us is None else from_us(row.deleted_at_us),
            versions=versions,
        )

    async def get_secret(
        self, path: str, *, include_deleted: bool = False, with_versions: bool = False
    ) -> SecretRecord | None:
        async with self._tx(write=False) as conn:
            query = select(t.secrets).where(t.secrets.c.path == path)
            if not include_deleted:
                query = query.where(t.secrets.c.deleted_at_us.is_(None))
            row = (await conn.execute(query)).first()
            if row is None:
                return None
            versions: tuple[SecretVersionInfo, ...] = ()
            if with_versions:
                v = t.secret_versions.c
                rows = await conn.execute(
                    select(v.version, v.created_at_us, v.created_by, v.kek_version)
                    .where(v.path == path)
                    .order_by(v.version)
                )
                versions = tuple(
                    SecretVersionInfo(r.version, from_us(r.created_at_us), r.created_by, r.kek_version)
                    for r in rows
                )
        return self._secret(row, versions)

    async def list_secrets(
        self, prefix: str, *, include_deleted: bool = False, after: str | None = None, limit: int = 100
    ) -> list[SecretRecord]:
        c = t.secrets.c
        # Byte-wise order and comparison on every backend (PostgreSQL's default collation may
        # be linguistic; SQLite's LIKE ignores case), so pages and prefixes mean the same
        # everywhere. Paths are ASCII, so the prefix range ends at its last character + 1.
        path = c.path.collate(self._binary_collation)
        query = select(t.secrets).order_by(path).limit(limit)
        if prefix:
            upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            query = query.where(path >= prefix, path < upper)
        if after is not None:
            query = query.where(path > after)
        if not include_deleted:
            query = query.where(c.deleted_at_us.is_(None))
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [self._secret(row) for row in rows]

    async def append_secret_version(
        self,
        path: str,
        value: EncryptedValue,
        *,
        expected_version: int,
        metadata: SecretMetadata | None,
        actor: str,
        now: datetime,
    ) -> SecretRecord:
        now_us = to_us(now)
        new_version = expected_version + 1
        meta_values: dict[str, Any] = {}
        if metadata is not None:
            meta_values = {
                "sensitivity": int(metadata.sensitivity),
                "purposes": json.dumps(sorted(metadata.purposes)),
                "destinations": json.dumps(sorted(metadata.destinations)),
                "owner": metadata.owner,
                "rotation_period_seconds": metadata.rotation_period_seconds,
            }
        async with self._tx(on_duplicate=lambda: VersionConflictError(path, expected_version, None)) as conn:
            c = t.secrets.c
            if expected_version == 0:
                if metadata is None:
                    raise StorageError("a new secret needs metadata")
                await conn.execute(
                    t.secrets.insert().values(
                        path=path,
                        current_version=1,
                        created_at_us=now_us,
                        updated_at_us=now_us,
                        deleted_at_us=None,
                        **meta_values,
                    )
                )
            else:
                result = await conn.execute(
                    update(t.secrets)
                    .where(and_(c.path == path, c.current_version == expected_version))
                    .values(
                        current_version=new_version,
                        updated_at_us=now_us,
                        deleted_at_us=None,
                        **meta_values,
                    )
                )
                if result.rowcount != 1:
                    actual = (
                        await conn.execute(select(c.current_version).where(c.path == path))
                    ).scalar_one_or_none()
                    raise VersionConflictError(path, expected_version, actual)
            await conn.execute(
                t.secret_versions.insert().values(
                    path=path,
                    version=new_version,
                    kek_version=value.kek_version,
                    wrapped_dek=value.wrapped_dek,
                    ciphertext=value.ciphertext,
                    created_at_us=now_us,
                    created_by=actor,
                )
            )
            row = (await conn.execute(select(t.secrets).where(c.path == path))).one()
        return self._secret(row)

    @staticmethod
    def _metadata_columns(metadata: SecretMetadata) -> dict[str, Any]:
        return {
            "sensitivity": int(metadata.sensitivity),
            "purposes": json.dumps(sorted(metadata.purposes)),
            "destinations": json.dumps(sorted(metadata.destinations)),
            "owner": metadata.owner,
            "rotation_period_seconds": metadata.rotation_period_seconds,
        }

    async def replace_secret_metadata(
        self, path: str, metadata: SecretMetadata, *, expected: SecretMetadata, now: datetime
    ) -> SecretRecord | None:
        c = t.secrets.c
        # The metadata columns are written in one canonical form (sorted JSON), so comparing
        # them to ``expected``'s is a check-and-set on the whole metadata.
        matches = [
            c.rotation_period_seconds.is_(None) if value is None else getattr(c, name) == value
            for name, value in self._metadata_columns(expected).items()
        ]
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.secrets)
                .where(and_(c.path == path, c.deleted_at_us.is_(None), *matches))
                .values(updated_at_us=to_us(now), **self._metadata_columns(metadata))
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(t.secrets).where(c.path == path))).one()
        return self._secret(row)

    async def read_secret_value(self, path: str, version: int | None = None) -> StoredValue | None:
        s, v = t.secrets.c, t.secret_versions.c
        query = (
            select(v.version, v.kek_version, v.wrapped_dek, v.ciphertext)
            .join_from(t.secret_versions, t.secrets, v.path == s.path)
            .where(and_(s.path == path, s.deleted_at_us.is_(None)))
        )
        query = query.where(v.version == (s.current_version if version is None else version))
        async with self._tx(write=False) as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return StoredValue(
            path, row.version, EncryptedValue(row.kek_version, bytes(row.wrapped_dek), bytes(row.ciphertext))
        )

    async def delete_secret(self, path: str, *, now: datetime) -> bool:
        c = t.secrets.c
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.secrets)
                .where(and_(c.path == path, c.deleted_at_us.is_(None)))
                .values(deleted_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)

    async def values_wrapped_below(self, kek_version: int, *, limit: int) -> list[StoredValue]:
        v = t.secret_versions.c
        async with self._tx(write=False) as conn:
            rows = await conn.execute(
                select(v.path, v.version, v.kek_version, v.wrapped_dek, v.ciphertext)
                .where(v.kek_version < kek_version)
                .order_by(v.path, v.version)
                .limit(limit)
            )
            return [
                StoredValue(
                    r.path,
                    r.version,
                    EncryptedValue(r.kek_version, bytes(r.wrapped_dek), bytes(r.ciphertext)),
                )
                for r in rows
            ]

    async def replace_wrapped_keys(self, updates: Sequence[tuple[StoredValue, EncryptedValue]]) -> int:
        v = t.secret_versions.c
        changed = 0
        async with self._tx() as conn:
            for old, new in updates:
                if new.ciphertext != old.value.ciphertext:
                    raise StorageError("rewrap must not change a value's ciphertext")
                result = await conn.execute(
                    update(t.secret_versions)
                    .where(
                        and_(
                            v.path == old.path,
                            v.version == old.version,
                            v.kek_version == old.value.kek_version,
                            v.wrapped_dek == old.value.wrapped_dek,
                        )
                    )
                    .values(kek_version=new.kek_version, wrapped_dek=new.wrapped_dek)
                )
                changed += result.rowcount
        return changed

    # -- operators ----------------------------------------------------------------------
    @staticmethod
    def _operator(row: Any) -> OperatorRecord:
        return OperatorRecord(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            token_hash=bytes(row.token_hash),
            created_at=from_us(row.created_at_us),
            created_by=row.created_by,
            revoked_at=None if row.revoked_at_us is None else from_us(row.revoked_at_us),
        )

    async def create_operator(self, operator: OperatorRecord) -> None:
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"an operator named {operator.name!r} already exists")
        ) as conn:
            await conn.execute(
                t.operators.insert().values(
                    id=operator.id,
                    name=operator.name,
                    role=operator.role.value,
                    token_hash=operator.token_hash,
                    created_at_us=to_us(operator.created_at),
                    created_by=operator.created_by,
                    revoked_at_us=None if operator.revoked_at is None else to_us(operator.revoked_at),
                )
            )

    async def operator_by_token_hash(self, token_hash: bytes) -> OperatorRecord | None:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(select(t.operators).where(t.operators.c.token_hash == token_hash))
            ).first()
        return None if row is None else self._operator(row)

    async def get_operator(self, operator_id: str) -> OperatorRecord | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.operators).where(t.operators.c.id == operator_id))).first()
        return None if row is None else self._operator(row)

    async def list_operators(self) -> list[OperatorRecord]:
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(t.operators).order_by(t.operators.c.created_at_us))).all()
        return [self._operator(row) for row in rows]

    async def revoke_operator(self, operator_id: str, *, now: datetime, keep_an_admin: bool = True) -> bool:
        c = t.operators.c
        async with self._tx() as conn:
            if keep_an_admin:
                # Lock the active admins (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises).
                active_admins = select(c.id).where(and_(c.role == "admin", c.revoked_at_us.is_(None)))
                admins = (await conn.execute(active_admins.with_for_update())).scalars().all()
                if operator_id in admins and len(admins) == 1:
                    raise ConflictError("refusing to revoke the last active admin")
            result = await conn.execute(
                update(t.operators)
                .where(and_(c.id == operator_id, c.revoked_at_us.is_(None)))
                .values(revoked_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)

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
                    ok = await self._consume(conn, effect.grant_id, effect.task_id, effect.now)
                elif isinstance(effect, CreateTask):
                    ok = await self._insert_task(conn, effect.task)
                else:
                    ok = await self._insert_grant(conn, effect.grant, effect.now)
                if ok is None or ok is False:
                    failed[index] = effect
                    break
                done.append(ok)
            results.append(done)
        if failed:
            raise EffectFailedError(failed)
        return results

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

    # -- agents -----------------------------------------------------------------------------
    @staticmethod
    def _agent_columns(source: Any) -> list[Any]:
        k = t.agent_keys.c
        return [
            source.id,
            source.name,
            source.trust_domain,
            source.attributes,
            source.created_at_us,
            source.created_by,
            source.disabled_at_us,
            k.kid,
            k.jwk,
            k.added_at_us,
            k.removed_at_us,
        ]

    @staticmethod
    def _agents(rows: Sequence[Any]) -> list[AgentRecord]:
        """Fold joined (agent, key) rows, grouped by agent, into records."""
        grouped: dict[str, tuple[Any, list[AgentKey]]] = {}
        try:
            for row in rows:
                _, keys = grouped.setdefault(row.id, (row, []))
                if row.kid is not None:
                    keys.append(
                        AgentKey(
                            kid=row.kid,
                            jwk=json.loads(row.jwk),
                            added_at=from_us(row.added_at_us),
                            removed_at=None if row.removed_at_us is None else from_us(row.removed_at_us),
                        )
                    )
            records = []
            for row, keys in grouped.values():
                attributes = json.loads(row.attributes)
                if not isinstance(attributes, dict):
                    raise TypeError("attributes")
                records.append(
                    AgentRecord(
                        id=row.id,
                        name=row.name,
                        trust_domain=row.trust_domain,
                        attributes=AgentAttributes(
                            team=attributes["team"],
                            environment=attributes["environment"],
                            owner=attributes["owner"],
                            labels=frozenset(attributes["labels"]),
                        ),
                        keys=tuple(keys),
                        created_at=from_us(row.created_at_us),
                        created_by=row.created_by,
                        disabled_at=None if row.disabled_at_us is None else from_us(row.disabled_at_us),
                    )
                )
        except (InvalidInputError, ValueError, TypeError, KeyError) as exc:
            raise StorageError(f"a stored agent is invalid: {type(exc).__name__}") from None
        return records

    async def _one_agent(self, condition: Any) -> AgentRecord | None:
        a, k = t.agents.c, t.agent_keys.c
        # One round trip: the agent LEFT JOIN its keys (primary-key lookups on both sides).
        query = (
            select(*self._agent_columns(a))
            .select_from(t.agents.outerjoin(t.agent_keys, k.agent_id == a.id))
            .where(condition)
            .order_by(k.added_at_us, k.kid)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        records = self._agents(rows)
        return records[0] if records else None

    @staticmethod
    def _key_row(agent_id: str, key: AgentKey) -> dict[str, Any]:
        return {
            "agent_id": agent_id,
            "kid": key.kid,
            "jwk": json.dumps(dict(key.jwk), sort_keys=True),
            "added_at_us": to_us(key.added_at),
            "removed_at_us": None if key.removed_at is None else to_us(key.removed_at),
        }

    async def create_agent(self, record: AgentRecord) -> None:
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"an agent named {record.name!r} already exists")
        ) as conn:
            await conn.execute(
                t.agents.insert().values(
                    id=record.id,
                    name=record.name,
                    trust_domain=record.trust_domain,
                    attributes=json.dumps(record.attributes.to_json(), sort_keys=True),
                    created_at_us=to_us(record.created_at),
                    created_by=record.created_by,
                    disabled_at_us=None if record.disabled_at is None else to_us(record.disabled_at),
                )
            )
            if record.keys:
                await conn.execute(
                    t.agent_keys.insert(), [self._key_row(record.id, key) for key in record.keys]
                )

    async def get_agent(self, agent_id: str) -> AgentRecord | None:
        return await self._one_agent(t.agents.c.id == agent_id)

    async def get_agent_by_name(self, name: str) -> AgentRecord | None:
        return await self._one_agent(t.agents.c.name == name)

    async def list_agents(self, *, after: str | None = None, limit: int = 100) -> list[AgentRecord]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        k = t.agent_keys.c
        name = t.agents.c.name.collate(self._binary_collation)
        page_query = select(t.agents).order_by(name).limit(limit)
        if after is not None:
            page_query = page_query.where(name > after)
        page = page_query.subquery()
        query = (
            select(*self._agent_columns(page.c))
            .select_from(page.outerjoin(t.agent_keys, k.agent_id == page.c.id))
            .order_by(page.c.name.collate(self._binary_collation), k.added_at_us, k.kid)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return self._agents(rows)

    async def set_agent_disabled(self, agent_id: str, now: datetime) -> bool:
        c = t.agents.c
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.agents)
                .where(and_(c.id == agent_id, c.disabled_at_us.is_(None)))
                .values(disabled_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)

    async def _lock_agent_keys(self, conn: AsyncConnection, agent_id: str) -> list[Any]:
        """Lock the agent's row (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises) and
        return its key rows, so that key-count rules hold under concurrent changes."""
        a, k = t.agents.c, t.agent_keys.c
        found = (await conn.execute(select(a.id).where(a.id == agent_id).with_for_update())).first()
        if found is None:
            raise NotFoundError(f"no agent {agent_id!r}")
        return list((await conn.execute(select(k.kid, k.removed_at_us).where(k.agent_id == agent_id))).all())

    async def add_agent_key(self, agent_id: str, key: AgentKey) -> None:
        if not key.active:
            raise InvalidInputError("only an active key can be added", field="public_key")
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"the agent already has (or had) key {key.kid!r}")
        ) as conn:
            keys = await self._lock_agent_keys(conn, agent_id)
            if any(row.kid == key.kid for row in keys):
                raise ConflictError(f"the agent already has (or had) key {key.kid!r}")
            if sum(row.removed_at_us is None for row in keys) >= MAX_ACTIVE_KEYS:
                raise ConflictError(f"the agent already has {MAX_ACTIVE_KEYS} active keys; remove one first")
            await conn.execute(t.agent_keys.insert().values(**self._key_row(agent_id, key)))

    async def remove_agent_key(self, agent_id: str, kid: str, now: datetime) -> bool:
        k = t.agent_keys.c
        async with self._tx() as conn:
            try:
                keys = await self._lock_agent_keys(conn, agent_id)
            except NotFoundError:
                return False
            active = [row.kid for row in keys if row.removed_at_us is None]
            if kid not in active:
                return False
            if len(active) == 1:
                raise ConflictError("refusing to remove the agent's last active key; add another first")
            await conn.execute(
                update(t.agent_keys)
                .where(and_(k.agent_id == agent_id, k.kid == kid, k.removed_at_us.is_(None)))
                .values(removed_at_us=to_us(now))
            )
        return True

    async def remember_jti(self, key: bytes, *, expires_at: datetime, now: datetime) -> bool:
        key, now_us, expires_us = replay_record(key, expires_at, now)
        c = t.jti_replay.c
        try:
            async with self._tx() as conn:
                current = (
                    await conn.execute(select(c.expires_at_us).where(c.key == key))
                ).scalar_one_or_none()
                if current is not None and current > now_us:
                    return False
                replaced = False
                if current is not None:
                    result = await conn.execute(
                        update(t.jti_replay)
                        .where(and_(c.key == key, c.expires_at_us <= now_us))
                        .values(expires_at_us=expires_us)
                    )
                    replaced = result.rowcount == 1
                if not replaced:
                    # A concurrent writer of the same key makes this a primary-key violation.
                    await conn.execute(t.jti_replay.insert().values(key=key, expires_at_us=expires_us))
                # Sweep a few expired records. SKIP LOCKED (PostgreSQL; ignored by SQLite, which
                # serialises writers anyway) keeps concurrent sweepers from waiting on each other.
                stale = (
                    select(c.key)
                    .where(and_(c.expires_at_us <= now_us, c.key != key))
                    .order_by(c.expires_at_us)
                    .limit(JTI_SWEEP_LIMIT)
                    .with_for_update(skip_locked=True)
                )
                await conn.execute(
                    t.jti_replay.delete().where(and_(c.key.in_(stale), c.expires_at_us <= now_us))
                )
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    # -- trusted issuers ------------------------------------------------------------------------
    @staticmethod
    def _issuer(row: Any) -> TrustedIssuer:
        try:
            body = json.loads(row.body)
            return TrustedIssuer(
                name=row.name,
                issuer=row.issuer,
                audience=body["audience"],
                jwks=body["jwks"],
                jwks_url=body["jwks_url"],
                subject_claim=body["subject_claim"],
                subject_pattern=body["subject_pattern"],
                created_at=from_us(row.created_at_us),
                created_by=body["created_by"],
            )
        except (InvalidInputError, ValueError, TypeError, KeyError) as exc:
            raise StorageError(f"a stored trusted issuer is invalid: {type(exc).__name__}") from None

    async def put_trusted_issuer(self, issuer: TrustedIssuer) -> None:
        body = {
            "audience": issuer.audience,
            "jwks": issuer.jwks_json(),
            "jwks_url": issuer.jwks_url,
            "subject_claim": issuer.subject_claim,
            "subject_pattern": issuer.subject_pattern,
            "created_by": issuer.created_by,
        }
        async with self._tx(
            on_duplicate=lambda: ConflictError(
                f"a trusted issuer named {issuer.name!r} or for {issuer.issuer!r} already exists"
            )
        ) as conn:
            await conn.execute(
                t.trusted_issuers.insert().values(
                    name=issuer.name,
                    issuer=issuer.issuer,
                    body=json.dumps(body, sort_keys=True),
                    created_at_us=to_us(issuer.created_at),
                )
            )

    async def get_trusted_issuer_by_issuer(self, issuer: str) -> TrustedIssuer | None:
        c = t.trusted_issuers.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.trusted_issuers).where(c.issuer == issuer))).first()
        return None if row is None else self._issuer(row)

    async def list_trusted_issuers(self) -> list[TrustedIssuer]:
        c = t.trusted_issuers.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(select(t.trusted_issuers).order_by(c.name.collate(self._binary_collation)))
            ).all()
        return [self._issuer(row) for row in rows]

    async def delete_trusted_issuer(self, name: str) -> bool:
        c = t.trusted_issuers.c
        async with self._tx() as conn:
            result = await conn.execute(t.trusted_issuers.delete().where(c.name == name))
        return bool(result.rowcount == 1)

    # -- policy sets ------------------------------------------------------------------------------
    @staticmethod
    def _policy_set(row: Any) -> PolicySetRecord:
        try:
            ids = json.loads(row.policy_ids)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise TypeError("policy_ids")
            return PolicySetRecord(
                version=int(row.version),
                text=row.text,
                sha256=row.sha256,
                policy_ids=tuple(ids),
                created_at=from_us(row.created_at_us),
                created_by=row.created_by,
                comment=row.comment,
            )
        except (ValueError, TypeError) as exc:
            raise StorageError(f"a stored policy set is invalid: {type(exc).__name__}") from None

    @staticmethod
    async def _locked_active(conn: AsyncConnection) -> int | None:
        a = t.policy_active.c
        value = (
            await conn.execute(select(a.version).where(a.id == 1).with_for_update())
        ).scalar_one_or_none()
        return None if value is None else int(value)

    @staticmethod
    async def _set_active(conn: AsyncConnection, version: int, expected_active: int | None) -> None:
        a = t.policy_active.c
        if expected_active is None:
            await conn.execute(t.policy_active.insert().values(id=1, version=version))
            return
        result = await conn.execute(
            update(t.policy_active)
            .where(and_(a.id == 1, a.version == expected_active))
            .values(version=version)
        )
        if result.rowcount != 1:
            raise ConflictError("the active policy set changed concurrently")

    async def put_policy_set(
        self,
        text: str,
        sha256: str,
        policy_ids: Sequence[str],
        created_by: str,
        now: datetime,
        *,
        comment: str = "",
        expected_active: int | None,
    ) -> PolicySetRecord:
        p = t.policy_sets.c
        async with self._tx(
            on_duplicate=lambda: ConflictError("another policy set was deployed concurrently")
        ) as conn:
            active = await self._locked_active(conn)
            if active != expected_active:
                raise ConflictError(
                    f"the active policy set is version {active}, not {expected_active}"
                    if active is not None
                    else "no policy set is active yet"
                )
            newest = (await conn.execute(select(func.max(p.version)))).scalar_one_or_none()
            version = int(newest or 0) + 1
            values = {
                "version": version,
                "text": text,
                "sha256": sha256,
                "policy_ids": json.dumps(list(policy_ids)),
                "created_at_us": to_us(now),
                "created_by": created_by,
                "comment": comment,
            }
            await conn.execute(t.policy_sets.insert().values(**values))
            await self._set_active(conn, version, expected_active)
        return PolicySetRecord(
            version=version,
            text=text,
            sha256=sha256,
            policy_ids=tuple(policy_ids),
            created_at=from_us(to_us(now)),
            created_by=created_by,
            comment=comment,
        )

    async def get_policy_set(self, version: int) -> PolicySetRecord | None:
        p = t.policy_sets.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.policy_sets).where(p.version == version))).first()
        return None if row is None else self._policy_set(row)

    async def active_policy_set(self) -> PolicySetRecord | None:
        p, a = t.policy_sets.c, t.policy_active.c
        query = select(t.policy_sets).join_from(t.policy_active, t.policy_sets, a.version == p.version)
        async with self._tx(write=False) as conn:
            row = (await conn.execute(query.where(a.id == 1))).first()
        return None if row is None else self._policy_set(row)

    async def active_policy_version(self) -> int | None:
        a = t.policy_active.c
        async with self._tx(write=False) as conn:
            value = (await conn.execute(select(a.version).where(a.id == 1))).scalar_one_or_none()
        return None if value is None else int(value)

    async def list_policy_sets(self, *, limit: int = 100, after: int | None = None) -> list[PolicySetRecord]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        p = t.policy_sets.c
        query = select(t.policy_sets).order_by(p.version.desc()).limit(limit)
        if after is not None:
            query = query.where(p.version < after)
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [self._policy_set(row) for row in rows]

    async def activate_policy_version(self, version: int, *, expected_active: int | None) -> None:
        p = t.policy_sets.c
        async with self._tx(
            on_duplicate=lambda: ConflictError("the active policy set changed concurrently")
        ) as conn:
            active = await self._locked_active(conn)
            if active != expected_active:
                raise ConflictError("the active policy set changed concurrently")
            found = (await conn.execute(select(p.version).where(p.version == version))).first()
            if found is None:
                raise NotFoundError(f"no policy set version {version}")
            await self._set_active(conn, version, expected_active)
