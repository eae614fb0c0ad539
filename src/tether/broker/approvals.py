"""Approvals, the approver's side: list, read, approve or deny (with a reason, audited).

The agent's side (an approval derived from a decision, opened and bound to the exact request) is
:class:`~tether.broker._decisions.DecisionPoint`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from tether.audit import AuditLog
from tether.broker._decisions import MAX_LIST_LIMIT, MAX_REASON_CHARS
from tether.broker.access import authorize, operator_actor
from tether.clock import Clock
from tether.config import Settings
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.tasks import Approval, ApprovalStatus, Task, validate_id
from tether.errors import InvalidInputError, NotFoundError
from tether.store.base import Storage

__all__ = ["ApprovalService"]


class ApprovalService:
    """Task-scoped approvals, for approvers."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock, settings: Settings) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings

    async def list_approvals(
        self,
        actor: OperatorRecord,
        *,
        statuses: Sequence[str] = (),
        after: str | None = None,
        limit: int = 100,
    ) -> list[Approval]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        for status in statuses:
            if status not in ApprovalStatus.__members__.values():
                raise InvalidInputError("status must be an approval status", field="status")
        await authorize(self._audit, actor, Permission.APPROVAL_DECIDE, "approval:*")
        return await self._storage.list_approvals(statuses=statuses, after=after, limit=limit)

    async def get_approval(self, actor: OperatorRecord, approval_id: str) -> Approval:
        validate_id(approval_id, "apr", "approval_id")
        await authorize(self._audit, actor, Permission.APPROVAL_DECIDE, f"approval:{approval_id}")
        approval = await self._storage.get_approval(approval_id)
        if approval is None:
            raise NotFoundError(f"no approval {approval_id}")
        return approval

    async def decide_approval(
        self, actor: OperatorRecord, approval_id: str, *, approve: bool, reason: str
    ) -> tuple[Approval, Task | None]:
        """An approver approves or denies a pending approval, with a reason."""
        validate_id(approval_id, "apr", "approval_id")
        await authorize(self._audit, actor, Permission.APPROVAL_DECIDE, f"approval:{approval_id}")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
            raise InvalidInputError(
                f"a reason of 1-{MAX_REASON_CHARS} characters is required", field="reason"
            )
        approval = await self._storage.get_approval(approval_id)
        if approval is None:
            raise NotFoundError(f"no approval {approval_id}")
        now = self._clock.now()
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        task = await self._storage.get_task(approval.task_id)
        expires_at = now + timedelta(seconds=self._settings.approval_ttl_seconds)
        await self._audit.record(
            "approval.decide",
            operator_actor(actor),
            resource=f"approval:{approval_id}",
            task_id=approval.task_id,
            chain=() if task is None else task.chain,
            reason=reason[:MAX_REASON_CHARS],
            data={
                "status": status.value,
                "action": approval.action,
                "target": approval.resource[:400],
                "context_hash": approval.context_hash,
                "expires_at": expires_at.isoformat(),
            },
        )
        return await self._storage.decide_approval(
            approval_id, status.value, decided_by=actor.name, reason=reason, now=now, expires_at=expires_at
        )
