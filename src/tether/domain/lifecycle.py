"""Which lifecycle transition follows from which event: pure functions the store applies.

The store makes transitions atomic (one transaction, rows locked); it never decides them. Ending a
task ends its live descendants; deciding the approval a pending task waits for opens or revokes it;
changing a task's context voids approvals bound to the old one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final

from tether.domain.tasks import Approval, ApprovalStatus, Task, TaskStatus

__all__ = [
    "LIVE_APPROVAL_STATUSES",
    "TreeEnding",
    "approval_voided",
    "task_after_approval",
    "tree_ending",
]

#: Approvals that still mean something (a decision pending, or an approval that may be used).
LIVE_APPROVAL_STATUSES: Final = frozenset({ApprovalStatus.PENDING, ApprovalStatus.APPROVED})


@dataclass(frozen=True, slots=True)
class TreeEnding:
    """The tasks one ending ends: ``direct`` (those asked for, with the status asked) and
    ``descendants`` (live tasks below them: revoked, ``parent_ended``)."""

    direct: tuple[str, ...]
    descendants: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return self.direct + self.descendants


def tree_ending(targets: Collection[str], live: Iterable[tuple[str, Sequence[str]]]) -> TreeEnding:
    """Given the live tasks ``(id, chain)`` of the trees ``targets`` belong to, which of them end:
    the live targets, and every live task with an ended target in its delegation chain."""
    wanted = set(targets)
    direct: list[str] = []
    descendants: list[str] = []
    for task_id, chain in live:
        if task_id in wanted:
            direct.append(task_id)
        elif wanted.intersection(chain):
            descendants.append(task_id)
    return TreeEnding(tuple(direct), tuple(descendants))


def task_after_approval(
    task: Task, approval: Approval, decision: ApprovalStatus, now: datetime
) -> Task | None:
    """The task after ``approval`` is decided ``decision``, or None when it does not change.

    Only an ``open_task`` approval changes a task, and only the one the task waits for, for the
    context the task has now, while it is pending and unexpired: approved opens it, denied revokes it.
    """
    if (
        approval.action != "open_task"
        or task.id != approval.task_id
        or task.status is not TaskStatus.PENDING_APPROVAL
        or task.approval_id != approval.id
        or task.context_hash != approval.context_hash
        or task.expires_at <= now
    ):
        return None
    if decision is ApprovalStatus.APPROVED:
        return replace(task, status=TaskStatus.ACTIVE)
    return replace(task, status=TaskStatus.REVOKED, ended_at=now, end_reason="approval_denied")


def approval_voided(status: ApprovalStatus, context_hash: str, *, keep_hash: str | None = None) -> bool:
    """Whether a task change (or its end) voids an approval: live approvals are voided unless they
    are bound to ``keep_hash``, the context the task has now."""
    return status in LIVE_APPROVAL_STATUSES and (keep_hash is None or context_hash != keep_hash)
