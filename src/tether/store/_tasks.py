"""SQL storage for tasks and grants; mixed into :class:`~tether.store._sql.SQLStorage` (approvals are in
``_approvals``, leases in ``_leases``).

Everything that ends authorization (ending a task tree, revoking grants, voiding approvals) is one
transaction, so a revocation is in force on every node as soon as it commits. Activation reads the
grant, its task and its secret in one indexed query and counts a use with one conditional UPDATE.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.crypto.envelope import EncryptedValue
from tether.domain.lifecycle import LIVE_APPROVAL_STATUSES, approval_voided, tree_ending
from tether.domain.secrets import SecretMetadata, SecretRecord, Sensitivity
from tether.domain.tasks import (
    LIVE_STATUSES,
    Approval,
    ApprovalStatus,
    Ended,
    Grant,
    Intent,
    Lease,
    Task,
    TaskStatus,
)
from tether.errors import ConflictError, InvalidInputError, StorageError
from tether.store import schema as t
from tether.store._destinations import DestinationStore
from tether.store._sqlbase import from_us, to_us
from tether.store.base import GrantInUse, StoredValue

__all__ = ["TaskStore"]

_LIVE = [status.value for status in LIVE_STATUSES]
_LIVE_APPROVALS = sorted(status.value for status in LIVE_APPROVAL_STATUSES)


def _us(value: datetime | None) -> int | None:
    return None if value is None else to_us(value)


def _dt(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _list(text: str) -> list[str]:
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError("expected a list of strings")
    return value


def _corrupt(what: str, exc: Exception) -> StorageError:
    return StorageError(f"a stored {what} is invalid: {type(exc).__name__}")


def _task_values(task: Task) -> dict[str, Any]:
    intent = task.intent
    return {
        "id": task.id,
        "agent_id": task.agent_id,
        "status": task.status.value,
        "purpose": intent.purpose,
        "objective": intent.objective,
        "objective_sha256": intent.objective_sha256,
        "sensitivity": int(intent.sensitivity),
        "secrets": json.dumps(sorted(intent.secrets)),
        "destinations": json.dumps(sorted(intent.destinations)),
        "tools": json.dumps(sorted(intent.tools)),
        "created_at_us": to_us(task.created_at),
        "expires_at_us": to_us(task.expires_at),
        "ended_at_us": _us(task.ended_at),
        "end_reason": task.end_reason,
        "parent_id": task.parent_id,
        "root_id": task.root_id,
        "depth": task.depth,
        "chain": json.dumps(list(task.chain)),
        "context_version": task.context_version,
        "approval_id": task.approval_id,
    }


def _task(row: Any, prefix: str = "") -> Task:
    def col(name: str) -> Any:
        return getattr(row, prefix + name)

    try:
        return Task(
            id=col("id"),
            agent_id=col("agent_id"),
            intent=Intent(
                purpose=col("purpose"),
                objective=col("objective"),
                sensitivity=Sensitivity(col("sensitivity")),
                secrets=frozenset(_list(col("secrets"))),
                destinations=frozenset(_list(col("destinations"))),
                tools=frozenset(_list(col("tools"))),
            ),
            status=TaskStatus(col("status")),
            created_at=from_us(col("created_at_us")),
            expires_at=from_us(col("expires_at_us")),
            ended_at=_dt(col("ended_at_us")),
            end_reason=col("end_reason"),
            parent_id=col("parent_id"),
            root_id=col("root_id"),
            depth=col("depth"),
            chain=tuple(_list(col("chain"))),
            context_version=col("context_version"),
            approval_id=col("approval_id"),
        )
    except (InvalidInputError, ValueError, TypeError) as exc:
        raise _corrupt("task", exc) from None


def _grant_values(grant: Grant) -> dict[str, Any]:
    return {
        "id": grant.id,
        "task_id": grant.task_id,
        "agent_id": grant.agent_id,
        "jkt": grant.jkt,
        "secret": grant.secret,
        "destination": grant.destination,
        "mode": grant.mode.value,
        "created_at_us": to_us(grant.created_at),
        "expires_at_us": to_us(grant.expires_at),
        "max_uses": grant.max_uses,
        "uses": grant.uses,
        "revoked_at_us": _us(grant.revoked_at),
        "revoke_reason": grant.revoke_reason,
    }


def _grant(row: Any, prefix: str = "") -> Grant:
    def col(name: str) -> Any:
        return getattr(row, prefix + name)

    try:
        return Grant(
            id=col("id"),
            task_id=col("task_id"),
            agent_id=col("agent_id"),
            jkt=col("jkt"),
            secret=col("secret"),
            destination=col("destination"),
            mode=col("mode"),
            created_at=from_us(col("created_at_us")),
            expires_at=from_us(col("expires_at_us")),
            max_uses=col("max_uses"),
            uses=col("uses"),
            revoked_at=_dt(col("revoked_at_us")),
            revoke_reason=col("revoke_reason"),
        )
    except (InvalidInputError, ValueError, TypeError) as exc:
        raise _corrupt("grant", exc) from None


def _approval(row: Any) -> Approval:
    try:
        return Approval(
            id=row.id,
            task_id=row.task_id,
            agent_id=row.agent_id,
            action=row.action,
            resource=row.resource,
            context_hash=row.context_hash,
            status=ApprovalStatus(row.status),
            policies=tuple(_list(row.policies)),
            requested_at=from_us(row.requested_at_us),
            expires_at=from_us(row.expires_at_us),
            decided_at=_dt(row.decided_at_us),
            decided_by=row.decided_by,
            reason=row.reason,
            request=_object(row.request),
        )
    except (InvalidInputError, ValueError, TypeError) as exc:
        raise _corrupt("approval", exc) from None


def _object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError("expected an object")
    return value


def _lease(row: Any) -> Lease:
    try:
        handle = json.loads(row.handle)
        if not isinstance(handle, dict):
            raise TypeError("handle")
        return Lease(
            id=row.id,
            grant_id=row.grant_id,
            task_id=row.task_id,
            engine=row.engine,
            handle=handle,
            created_at=from_us(row.created_at_us),
            expires_at=from_us(row.expires_at_us),
            revoked_at=_dt(row.revoked_at_us),
            engine_revoked_at=_dt(row.engine_revoked_at_us),
        )
    except (InvalidInputError, ValueError, TypeError) as exc:
        raise _corrupt("lease", exc) from None


# The activation read: grant ⋈ task ⟕ live secret, with prefixed labels so columns never clash.
_G, _T, _S, _V, _D = t.grants, t.tasks, t.secrets, t.secret_versions, t.destinations
_USE_QUERY = select(
    *[c.label("g_" + c.name) for c in _G.c],
    *[c.label("t_" + c.name) for c in _T.c],
    *[c.label("s_" + c.name) for c in _S.c],
    _V.c.version.label("v_version"),
    _V.c.kek_version.label("v_kek_version"),
    _V.c.wrapped_dek.label("v_wrapped_dek"),
    _V.c.ciphertext.label("v_ciphertext"),
    *[c.label("d_" + c.name) for c in _D.c],
    select(t.policy_active.c.version)
    .where(t.policy_active.c.id == 1)
    .scalar_subquery()
    .label("policy_version"),
).select_from(
    _G.join(_T, _T.c.id == _G.c.task_id)
    .outerjoin(_S, and_(_S.c.path == _G.c.secret, _S.c.deleted_at_us.is_(None)))
    .outerjoin(_V, and_(_V.c.path == _S.c.path, _V.c.version == _S.c.current_version))
    .outerjoin(_D, _D.c.name == _G.c.destination)
)


def _secret_from(row: Any) -> SecretRecord | None:
    if row.s_path is None:
        return None
    try:
        return SecretRecord(
            path=row.s_path,
            metadata=SecretMetadata(
                sensitivity=Sensitivity(row.s_sensitivity),
                purposes=frozenset(_list(row.s_purposes)),
                destinations=frozenset(_list(row.s_destinations)),
                owner=row.s_owner,
                rotation_period_seconds=row.s_rotation_period_seconds,
            ),
            current_version=row.s_current_version,
            created_at=from_us(row.s_created_at_us),
            updated_at=from_us(row.s_updated_at_us),
        )
    except (InvalidInputError, ValueError, TypeError) as exc:
        raise _corrupt("secret", exc) from None


class TaskStore(DestinationStore):
    """Storage methods for tasks, grants, approvals and leases."""

    # -- tasks -------------------------------------------------------------------------------
    async def create_task(self, task: Task) -> None:
        async with self._tx(on_duplicate=lambda: ConflictError(f"task {task.id} already exists")) as conn:
            if not await self._insert_task(conn, task):
                raise ConflictError(f"parent task {task.parent_id} is not active")

    @staticmethod
    async def _insert_task(conn: AsyncConnection, task: Task) -> bool:
        """Insert ``task``; False (nothing written) if it has a parent that is not active."""
        c = t.tasks.c
        if task.parent_id is not None:
            parent = (
                await conn.execute(
                    select(c.status, c.expires_at_us).where(c.id == task.parent_id).with_for_update()
                )
            ).first()
            if (
                parent is None
                or parent.status != TaskStatus.ACTIVE.value
                or parent.expires_at_us <= to_us(task.created_at)
            ):
                return False
        await conn.execute(t.tasks.insert().values(**_task_values(task)))
        return True

    async def get_task(self, task_id: str) -> Task | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.tasks).where(t.tasks.c.id == task_id))).first()
        return None if row is None else _task(row)

    async def list_tasks(
        self,
        *,
        agent_id: str | None = None,
        statuses: Sequence[str] = (),
        root_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        c = t.tasks.c
        query = select(t.tasks).order_by(c.id).limit(limit)
        if agent_id is not None:
            query = query.where(c.agent_id == agent_id)
        if statuses:
            query = query.where(c.status.in_(list(statuses)))
        if root_id is not None:
            query = query.where(c.root_id == root_id)
        if after is not None:
            query = query.where(c.id > after)
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [_task(row) for row in rows]

    async def update_task(
        self,
        task: Task,
        *,
        expected_version: int,
        revoke_grants: Sequence[str],
        reason: str,
        now: datetime,
        end_tasks: Sequence[str] = (),
    ) -> Ended:
        c = t.tasks.c
        values = _task_values(task)
        del values["id"]
        async with self._tx() as conn:
            result = await conn.execute(
                update(t.tasks)
                .where(
                    and_(
                        c.id == task.id,
                        c.context_version == expected_version,
                        c.status.in_(_LIVE),
                        c.expires_at_us > to_us(now),
                    )
                )
                .values(**values)
            )
            if result.rowcount != 1:
                raise ConflictError(f"task {task.id} changed or ended meanwhile; read it and try again")
            if revoke_grants:
                # Their engine leases too (dynamic credentials): the sweeper revokes them at the engine.
                lc = t.leases.c
                await conn.execute(
                    update(t.leases)
                    .where(and_(lc.grant_id.in_(list(revoke_grants)), lc.revoked_at_us.is_(None)))
                    .values(revoked_at_us=to_us(now))
                )
                await self._revoke_grant_rows(conn, t.grants.c.id.in_(list(revoke_grants)), reason, now)
            await self._void_approvals(conn, [task.id], now, keep_hash=task.context_hash)
            if end_tasks:
                return await self._end(
                    conn, list(end_tasks), TaskStatus.REVOKED.value, "parent_narrowed", now
                )
        return Ended()

    async def end_tasks(self, task_ids: Sequence[str], status: str, reason: str, now: datetime) -> Ended:
        async with self._tx() as conn:
            return await self._end(conn, list(task_ids), status, reason, now)

    async def expire_tasks(self, now: datetime, *, limit: int = 500) -> Ended:
        c = t.tasks.c
        async with self._tx() as conn:
            rows = (
                await conn.execute(
                    select(c.id)
                    .where(and_(c.status.in_(_LIVE), c.expires_at_us <= to_us(now)))
                    .order_by(c.expires_at_us)
                    .limit(limit)
                )
            ).all()
            if not rows:
                return Ended()
            return await self._end(conn, [row.id for row in rows], TaskStatus.EXPIRED.value, "expired", now)

    async def _end(
        self, conn: AsyncConnection, task_ids: list[str], status: str, reason: str, now: datetime
    ) -> Ended:
        c = t.tasks.c
        if not task_ids:
            return Ended()
        roots = (
            await conn.execute(select(c.id, c.root_id).where(c.id.in_(task_ids)).with_for_update())
        ).all()
        root_ids = sorted({row.root_id for row in roots})
        targets = {row.id for row in roots}
        if not root_ids:
            return Ended()
        # Every live task of the same trees; a descendant has an ended task in its chain.
        tree = (
            await conn.execute(
                select(c.id, c.chain, c.status).where(and_(c.root_id.in_(root_ids), c.status.in_(_LIVE)))
            )
        ).all()
        ending = tree_ending(targets, ((row.id, _list(row.chain)) for row in tree))
        direct, descendants = list(ending.direct), list(ending.descendants)
        if not direct and not descendants:
            return Ended()
        now_us = to_us(now)
        live = c.status.in_(_LIVE)
        if direct:
            await conn.execute(
                update(t.tasks)
                .where(and_(c.id.in_(direct), live))
                .values(status=status, ended_at_us=now_us, end_reason=reason)
            )
        if descendants:
            await conn.execute(
                update(t.tasks)
                .where(and_(c.id.in_(descendants), live))
                .values(status=TaskStatus.REVOKED.value, ended_at_us=now_us, end_reason="parent_ended")
            )
        ended = direct + descendants
        revoked = await self._revoke_grant_rows(conn, t.grants.c.task_id.in_(ended), reason, now)
        await self._void_approvals(conn, ended, now)
        lc = t.leases.c
        lease_rows = (
            await conn.execute(
                select(t.leases).where(and_(lc.task_id.in_(ended), lc.engine_revoked_at_us.is_(None)))
            )
        ).all()
        await conn.execute(
            update(t.leases)
            .where(and_(lc.task_id.in_(ended), lc.revoked_at_us.is_(None)))
            .values(revoked_at_us=now_us)
        )
        return Ended(tuple(ended), revoked, tuple(_lease(row) for row in lease_rows))

    @staticmethod
    async def _revoke_grant_rows(conn: AsyncConnection, condition: Any, reason: str, now: datetime) -> int:
        g = t.grants.c
        result = await conn.execute(
            update(t.grants)
            .where(and_(condition, g.revoked_at_us.is_(None)))
            .values(revoked_at_us=to_us(now), revoke_reason=reason[:64])
        )
        return int(result.rowcount or 0)

    @staticmethod
    async def _void_approvals(
        conn: AsyncConnection, task_ids: list[str], now: datetime, *, keep_hash: str | None = None
    ) -> None:
        """Void the approvals of ``task_ids`` that :func:`~tether.domain.lifecycle.approval_voided` says
        the change voids (``keep_hash``: the context the task has now)."""
        a = t.approvals.c
        rows = (
            await conn.execute(
                select(a.id, a.status, a.context_hash).where(
                    and_(a.task_id.in_(task_ids), a.status.in_(_LIVE_APPROVALS))
                )
            )
        ).all()
        voided = [
            row.id
            for row in rows
            if approval_voided(ApprovalStatus(row.status), row.context_hash, keep_hash=keep_hash)
        ]
        if voided:
            await conn.execute(
                update(t.approvals)
                .where(and_(a.id.in_(voided), a.status.in_(_LIVE_APPROVALS)))
                .values(status=ApprovalStatus.VOIDED.value, decided_at_us=to_us(now))
            )

    # -- grants ------------------------------------------------------------------------------
    async def create_grant(self, grant: Grant, *, now: datetime) -> None:
        async with self._tx(on_duplicate=lambda: ConflictError(f"grant {grant.id} already exists")) as conn:
            if not await self._insert_grant(conn, grant, now):
                raise ConflictError(f"task {grant.task_id} is not active")

    @staticmethod
    async def _insert_grant(conn: AsyncConnection, grant: Grant, now: datetime) -> bool:
        """Insert ``grant``; False (nothing written) if its task is not active at ``now``."""
        c = t.tasks.c
        task = (
            await conn.execute(
                select(c.status, c.expires_at_us).where(c.id == grant.task_id).with_for_update()
            )
        ).first()
        if task is None or task.status != TaskStatus.ACTIVE.value or task.expires_at_us <= to_us(now):
            return False
        await conn.execute(t.grants.insert().values(**_grant_values(grant)))
        return True

    async def get_grant(self, grant_id: str) -> Grant | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.grants).where(t.grants.c.id == grant_id))).first()
        return None if row is None else _grant(row)

    async def grant_for_use(self, grant_id: str) -> GrantInUse | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(_USE_QUERY.where(_G.c.id == grant_id))).first()
        return None if row is None else self._in_use(row)

    async def inject_grant_for_use(
        self, task_id: str, destination: str, now: datetime, *, jkt: str | None = None
    ) -> GrantInUse | None:
        g = _G.c
        query = (
            _USE_QUERY.where(
                and_(
                    g.task_id == task_id,
                    true() if jkt is None else g.jkt == jkt,
                    g.destination == destination,
                    g.mode == "inject",
                    g.revoked_at_us.is_(None),
                    g.expires_at_us > to_us(now),
                    or_(g.max_uses.is_(None), g.uses < g.max_uses),
                )
            )
            .order_by(g.created_at_us.desc(), g.id)
            .limit(1)
        )
        async with self._tx(write=False) as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else self._in_use(row)

    def _in_use(self, row: Any) -> GrantInUse:
        secret = _secret_from(row)
        value = None
        if secret is not None and row.v_version is not None:
            encrypted = EncryptedValue(row.v_kek_version, bytes(row.v_wrapped_dek), bytes(row.v_ciphertext))
            value = StoredValue(secret.path, row.v_version, encrypted)
        return GrantInUse(
            grant=_grant(row, "g_"),
            task=_task(row, "t_"),
            secret=secret,
            value=value,
            policy_version=row.policy_version,
            destination=None if row.d_name is None else self._destination(row, "d_"),
        )

    async def list_grants(self, task_id: str) -> list[Grant]:
        g = t.grants.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(t.grants).where(g.task_id == task_id).order_by(g.created_at_us, g.id)
                )
            ).all()
        return [_grant(row) for row in rows]

    async def consume_grant_use(self, grant_id: str, task_id: str, now: datetime) -> int | None:
        async with self._tx() as conn:
            return await self._consume(conn, grant_id, task_id, now)

    @staticmethod
    async def _consume(conn: AsyncConnection, grant_id: str, task_id: str, now: datetime) -> int | None:
        """Count one use if the grant is usable and its task active at ``now``: the new count."""
        g, c = t.grants.c, t.tasks.c
        now_us = to_us(now)
        live_task = (
            select(c.id)
            .where(and_(c.id == task_id, c.status == TaskStatus.ACTIVE.value, c.expires_at_us > now_us))
            .scalar_subquery()
        )
        row = (
            await conn.execute(
                update(t.grants)
                .where(
                    and_(
                        g.id == grant_id,
                        g.task_id == live_task,
                        g.revoked_at_us.is_(None),
                        g.expires_at_us > now_us,
                        or_(g.max_uses.is_(None), g.uses < g.max_uses),
                    )
                )
                .values(uses=g.uses + 1)
                .returning(g.uses)
            )
        ).first()
        return None if row is None else int(row[0])

    async def revoke_grants(
        self,
        *,
        grant_ids: Sequence[str] = (),
        secret: str | None = None,
        reason: str,
        now: datetime,
    ) -> int:
        g = t.grants.c
        conditions: list[Any] = []
        if grant_ids:
            conditions.append(g.id.in_(list(grant_ids)))
        if secret is not None:
            conditions.append(g.secret == secret)
        if not conditions:
            return 0
        async with self._tx() as conn:
            condition = or_(*conditions)
            # Their engine leases too: the sweeper then revokes the credentials at the engine.
            lc = t.leases.c
            affected = select(g.id).where(and_(condition, g.revoked_at_us.is_(None)))
            await conn.execute(
                update(t.leases)
                .where(and_(lc.grant_id.in_(affected), lc.revoked_at_us.is_(None)))
                .values(revoked_at_us=to_us(now))
            )
            return await self._revoke_grant_rows(conn, condition, reason, now)
