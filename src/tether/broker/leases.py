"""Leases for operators: which engine-issued credentials are live, being revoked, failed to be
revoked, or revoked (``GET /v1/leases``, ``tether lease list``).

A lease's state is a function of its timestamps (:func:`lease_state`): the store records when a
lease ended (``revoked_at``, or its expiry) and when its engine confirmed the revocation
(``engine_revoked_at``). Ending a task asks the engine at once and the sweeper retries every few
seconds, so a lease still unconfirmed :data:`FAILED_AFTER_SECONDS` after it ended has failed at
least once: it is shown as ``failed`` (and is still retried, never forgotten).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from tether.audit import AuditLog
from tether.broker.access import authorize
from tether.clock import Clock
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.tasks import Lease, validate_id
from tether.errors import InvalidInputError
from tether.store.base import Storage

__all__ = ["FAILED_AFTER_SECONDS", "LeaseService", "LeaseState", "lease_state"]

FAILED_AFTER_SECONDS = 30
MAX_LIST = 1000


class LeaseState(StrEnum):
    ACTIVE = "active"
    REVOKING = "revoking"
    FAILED = "failed"
    REVOKED = "revoked"


def lease_state(lease: Lease, now: datetime) -> LeaseState:
    """Where ``lease`` stands at ``now`` (see the module's docstring)."""
    if lease.engine_revoked_at is not None:
        return LeaseState.REVOKED
    ended = lease.revoked_at if lease.revoked_at is not None else lease.expires_at
    if ended > now:
        return LeaseState.ACTIVE
    if now - ended >= timedelta(seconds=FAILED_AFTER_SECONDS):
        return LeaseState.FAILED
    return LeaseState.REVOKING


class LeaseService:
    """Listing leases (operators with ``task.read``)."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock

    async def list_for_operator(
        self, actor: OperatorRecord, *, state: str | None, task_id: str | None, limit: int
    ) -> list[tuple[Lease, LeaseState]]:
        """Leases newest first, with their state; ``state`` filters (``failed`` and ``revoking``
        split what the store calls revoking)."""
        await authorize(self._audit, actor, Permission.TASK_READ, "lease:*")
        if state is not None and state not in {s.value for s in LeaseState}:
            raise InvalidInputError(
                f"state must be one of {', '.join(s.value for s in LeaseState)}", field="state"
            )
        if task_id is not None:
            validate_id(task_id, "tsk", "task")
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInputError(f"limit must be 1 to {MAX_LIST}", field="limit")
        now = self._clock.now()
        stored = "revoking" if state in {LeaseState.FAILED, LeaseState.REVOKING} else state
        # ``failed`` and ``revoking`` are one stored state split by age: read enough to fill a page.
        leases = await self._storage.list_leases(
            now, state=stored, task_id=task_id, limit=MAX_LIST if stored != state else limit
        )
        listed = [(lease, lease_state(lease, now)) for lease in leases]
        if state is not None:
            listed = [item for item in listed if item[1] == state]
        return listed[:limit]
