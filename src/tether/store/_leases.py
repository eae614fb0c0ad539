"""Lease storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from tether.domain.tasks import (
    Lease,
    TaskStatus,
)
from tether.errors import ConflictError
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, to_us
from tether.store._tasks import (
    _lease,
    _us,
)

__all__ = ["LeaseStore"]


class LeaseStore(SQLBase):
    """Leases of dynamic credentials: recorded before the engine issues, revoked with their task."""

    # -- leases ------------------------------------------------------------------------------
    async def create_lease(self, lease: Lease) -> None:
        c, g = t.tasks.c, t.grants.c
        async with self._tx(on_duplicate=lambda: ConflictError(f"lease {lease.id} already exists")) as conn:
            # Locked, so that ending the task waits for this row and then revokes it with the rest.
            task = (
                await conn.execute(
                    select(c.status, c.expires_at_us).where(c.id == lease.task_id).with_for_update()
                )
            ).first()
            grant = (await conn.execute(select(g.revoked_at_us).where(g.id == lease.grant_id))).first()
            if (
                task is None
                or task.status != TaskStatus.ACTIVE.value
                or task.expires_at_us <= to_us(lease.created_at)
                or grant is None
                or grant.revoked_at_us is not None
            ):
                raise ConflictError(f"task {lease.task_id} or its grant is no longer active")
            await conn.execute(
                t.leases.insert().values(
                    id=lease.id,
                    grant_id=lease.grant_id,
                    task_id=lease.task_id,
                    engine=lease.engine,
                    handle=json.dumps(dict(lease.handle), sort_keys=True),
                    created_at_us=to_us(lease.created_at),
                    expires_at_us=to_us(lease.expires_at),
                    revoked_at_us=_us(lease.revoked_at),
                    engine_revoked_at_us=None,
                )
            )

    async def set_lease_handle(self, lease_id: str, handle: Mapping[str, Any], expires_at: datetime) -> bool:
        lc = t.leases.c
        async with self._tx() as conn:
            revoked = (
                await conn.execute(select(lc.revoked_at_us).where(lc.id == lease_id))
            ).scalar_one_or_none()
            values: dict[str, Any] = {
                "handle": json.dumps(dict(handle), sort_keys=True),
                "expires_at_us": to_us(expires_at),
            }
            if revoked is not None:
                # Revoked while the engine was issuing: whatever revocation ran did not know this
                # credential, so it is pending again (the caller revokes now; the sweeper retries).
                values["engine_revoked_at_us"] = None
            await conn.execute(update(t.leases).where(lc.id == lease_id).values(**values))
        return revoked is None

    async def leases_to_revoke(self, now: datetime, *, limit: int = 100) -> list[Lease]:
        lc = t.leases.c
        query = (
            select(t.leases)
            .where(
                and_(
                    lc.engine_revoked_at_us.is_(None),
                    or_(lc.revoked_at_us.is_not(None), lc.expires_at_us <= to_us(now)),
                )
            )
            .order_by(lc.expires_at_us)
            .limit(limit)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [_lease(row) for row in rows]

    async def mark_lease_revoked(self, lease_id: str, now: datetime) -> None:
        lc = t.leases.c
        async with self._tx() as conn:
            await conn.execute(
                update(t.leases)
                .where(lc.id == lease_id)
                .values(
                    engine_revoked_at_us=to_us(now),
                    revoked_at_us=func.coalesce(lc.revoked_at_us, to_us(now)),
                )
            )

    async def get_leases(self, lease_ids: Sequence[str]) -> list[Lease]:
        lc = t.leases.c
        ids = list(dict.fromkeys(lease_ids))[:1000]
        if not ids:
            return []
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(t.leases).where(lc.id.in_(ids)))).all()
        return [_lease(row) for row in rows]

    async def list_leases(
        self, now: datetime, *, state: str | None = None, task_id: str | None = None, limit: int = 100
    ) -> list[Lease]:
        lc = t.leases.c
        ended = or_(lc.revoked_at_us.is_not(None), lc.expires_at_us <= to_us(now))
        query = select(t.leases)
        if state == "active":
            query = query.where(and_(lc.revoked_at_us.is_(None), lc.expires_at_us > to_us(now)))
        elif state == "revoking":
            query = query.where(and_(lc.engine_revoked_at_us.is_(None), ended))
        elif state == "revoked":
            query = query.where(lc.engine_revoked_at_us.is_not(None))
        elif state is not None:
            raise ValueError(f"unknown lease state {state!r}")
        if task_id is not None:
            query = query.where(lc.task_id == task_id)
        query = query.order_by(lc.created_at_us.desc(), lc.id).limit(limit)
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [_lease(row) for row in rows]

    async def incomplete_leases(self, created_before: datetime, *, limit: int = 100) -> list[Lease]:
        lc = t.leases.c
        query = (
            select(t.leases)
            .where(
                and_(
                    lc.revoked_at_us.is_(None),
                    lc.engine_revoked_at_us.is_(None),
                    lc.handle == "{}",
                    lc.created_at_us <= to_us(created_before),
                )
            )
            .order_by(lc.created_at_us)
            .limit(limit)
        )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [_lease(row) for row in rows]
