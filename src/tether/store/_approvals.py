"""Approval storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, update

from tether.domain.lifecycle import task_after_approval
from tether.domain.tasks import (
    Approval,
    ApprovalStatus,
    Task,
)
from tether.domain.tasks import request_hash as request_hash_of
from tether.errors import ConflictError, NotFoundError, StorageError
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, from_us, to_us
from tether.store._tasks import (
    _LIVE_APPROVALS,
    _approval,
    _task,
    _us,
)

__all__ = ["ApprovalStore"]


class ApprovalStore(SQLBase):
    """Approvals: opened once per task context and request, decided once, voided by change; an
    ``open_task`` decision applies :func:`~tether.domain.lifecycle.task_after_approval` to its task."""

    # -- approvals ---------------------------------------------------------------------------
    async def open_approval(self, approval: Approval, now: datetime) -> Approval:
        a, c = t.approvals.c, t.tasks.c
        async with self._tx() as conn:
            # Lock the task row: identical concurrent requests queue here and the second finds the first.
            await conn.execute(select(c.id).where(c.id == approval.task_id).with_for_update())
            existing = (
                await conn.execute(
                    select(t.approvals)
                    .where(
                        and_(
                            a.task_id == approval.task_id,
                            a.action == approval.action,
                            a.resource == approval.resource,
                            a.context_hash == approval.context_hash,
                            a.request_hash == approval.request_hash,
                            a.status.in_([*_LIVE_APPROVALS, ApprovalStatus.DENIED.value]),
                            a.expires_at_us > to_us(now),
                        )
                    )
                    .order_by(a.requested_at_us.desc())
                    .limit(1)
                )
            ).first()
            if existing is not None:
                return _approval(existing)
            await conn.execute(
                t.approvals.insert().values(
                    id=approval.id,
                    task_id=approval.task_id,
                    agent_id=approval.agent_id,
                    action=approval.action,
                    resource=approval.resource,
                    context_hash=approval.context_hash,
                    status=approval.status.value,
                    policies=json.dumps(list(approval.policies)),
                    requested_at_us=to_us(approval.requested_at),
                    expires_at_us=to_us(approval.expires_at),
                    decided_at_us=None,
                    decided_by=None,
                    reason=approval.reason,
                    request=json.dumps(dict(approval.request), sort_keys=True),
                    request_hash=approval.request_hash,
                )
            )
        return approval

    async def get_approval(self, approval_id: str) -> Approval | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.approvals).where(t.approvals.c.id == approval_id))).first()
        return None if row is None else _approval(row)

    async def find_approval(
        self,
        task_id: str,
        action: str,
        resource: str,
        context_hash: str,
        now: datetime,
        *,
        statuses: Sequence[str] = (ApprovalStatus.APPROVED.value,),
        request_hash: str | None = None,
    ) -> Approval | None:
        a = t.approvals.c
        query = (
            select(t.approvals)
            .where(
                and_(
                    a.task_id == task_id,
                    a.action == action,
                    a.resource == resource,
                    a.context_hash == context_hash,
                    a.request_hash == (request_hash if request_hash is not None else request_hash_of({})),
                    a.status.in_(list(statuses)),
                    a.expires_at_us > to_us(now),
                )
            )
            .order_by(a.requested_at_us.desc())
            .limit(1)
        )
        async with self._tx(write=False) as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _approval(row)

    async def list_approvals(
        self, *, statuses: Sequence[str] = (), after: str | None = None, limit: int = 100
    ) -> list[Approval]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        a = t.approvals.c
        query = select(t.approvals).order_by(a.requested_at_us, a.id).limit(limit)
        if statuses:
            query = query.where(a.status.in_(list(statuses)))
        if after is not None:
            # Keyset paging on (requested_at, id), the cursor being the last approval's id.
            cursor = select(a.requested_at_us).where(a.id == after).scalar_subquery()
            query = query.where(
                or_(a.requested_at_us > cursor, and_(a.requested_at_us == cursor, a.id > after))
            )
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [_approval(row) for row in rows]

    async def decide_approval(
        self,
        approval_id: str,
        status: str,
        *,
        decided_by: str,
        reason: str,
        now: datetime,
        expires_at: datetime,
    ) -> tuple[Approval, Task | None]:
        a, c = t.approvals.c, t.tasks.c
        now_us = to_us(now)
        async with self._tx() as conn:
            row = (
                await conn.execute(select(t.approvals).where(a.id == approval_id).with_for_update())
            ).first()
            if row is None:
                raise NotFoundError(f"no approval {approval_id}")
            current = _approval(row)
            effective = current.effective_status(now)
            if effective is not ApprovalStatus.PENDING:
                raise ConflictError(f"approval {approval_id} is {effective.value}, not pending")
            await conn.execute(
                update(t.approvals)
                .where(and_(a.id == approval_id, a.status == ApprovalStatus.PENDING.value))
                .values(
                    status=status,
                    decided_at_us=now_us,
                    decided_by=decided_by,
                    reason=reason,
                    expires_at_us=to_us(expires_at),
                )
            )
            task: Task | None = None
            if current.action == "open_task":
                task_row = (
                    await conn.execute(select(t.tasks).where(c.id == current.task_id).with_for_update())
                ).first()
                if task_row is not None:
                    task = task_after_approval(_task(task_row), current, ApprovalStatus(status), now)
                if task is not None:
                    await conn.execute(
                        update(t.tasks)
                        .where(c.id == task.id)
                        .values(
                            status=task.status.value,
                            ended_at_us=_us(task.ended_at),
                            end_reason=task.end_reason,
                        )
                    )
        decided = Approval(
            id=current.id,
            task_id=current.task_id,
            agent_id=current.agent_id,
            action=current.action,
            resource=current.resource,
            context_hash=current.context_hash,
            status=ApprovalStatus(status),
            policies=current.policies,
            requested_at=current.requested_at,
            expires_at=from_us(to_us(expires_at)),
            decided_at=from_us(now_us),
            decided_by=decided_by,
            reason=reason,
            request=current.request,
        )
        return decided, task
