"""Changing a task's context: ``open_task`` is decided again at once, every live grant is decided
again (``issue``) in the new context and those no longer allowed are revoked; approvals bound to
the old context are voided; sub-tasks the narrowed task no longer covers end."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from tether.audit import Actor, AuditLog
from tether.broker._decisions import (
    MAX_LIST_LIMIT,
    DecisionPoint,
    agent_entity,
    approval_message,
    secret_entity,
    summary,
)
from tether.broker.auth import AgentCaller
from tether.broker.revocation import RevocationService
from tether.broker.tasks import TaskService
from tether.clock import Clock
from tether.domain.agents import AgentRecord
from tether.domain.commands import UpdateTask
from tether.domain.tasks import LIVE_STATUSES, ApprovalStatus, Grant, Task, TaskStatus, decision_context
from tether.store.base import Storage

__all__ = ["ContextService"]


class ContextService:
    """Changes of a task's context."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        decisions: DecisionPoint,
        tasks: TaskService,
        revocation: RevocationService,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._decisions = decisions
        self._tasks = tasks
        self._revocation = revocation

    async def update(self, caller: AgentCaller, task_id: str, command: UpdateTask) -> tuple[Task, int]:
        """Change the task's context. ``open_task`` is decided again, and every live grant is
        decided again (``issue``) in the new context; those no longer allowed are revoked
        (``context_changed``). Approvals bound to the old context are voided. Returns the task
        and how many grants were revoked."""
        now = self._clock.now()
        task = await self._decisions.agent_task(caller, task_id)
        if task.effective_status(now) not in LIVE_STATUSES:
            raise await self._decisions.refuse(
                caller.agent.id, f"task:{task.id}", task, f"task is {task.effective_status(now).value}"
            )
        intent = task.intent
        merged = {
            "purpose": intent.purpose,
            "objective": intent.objective,
            "sensitivity": intent.sensitivity.label,
            "secrets": sorted(intent.secrets),
            "destinations": sorted(intent.destinations),
            "tools": sorted(intent.tools),
            **command.changes(),
        }
        new_intent = self._tasks.intent_of(merged)
        await self._tasks.read_declared(new_intent)
        if task.parent_id is not None:
            # What the delegator handed over is the limit: a sub-task may only narrow itself further
            # (widening it again would be a new delegation, decided for the delegator).
            problems = new_intent.widening(task.intent)
            if new_intent.purpose != task.intent.purpose:
                problems.append("a sub-task keeps its parent's purpose")
            if problems:
                raise await self._decisions.refuse(
                    caller.agent.id,
                    f"task:{task.id}",
                    task,
                    "a sub-task can only narrow: " + "; ".join(problems),
                )
        changed = replace(task, intent=new_intent, context_version=task.context_version + 1, approval_id=None)
        principal = agent_entity(caller.agent)
        context = decision_context(changed, now, method="PATCH", path=f"/v1/tasks/{task.id}")
        decision, inputs = await self._decisions.decide_recorded("open_task", principal, principal, context)
        decision, approval = await self._decisions.with_approval(
            decision, changed, "open_task", principal, now
        )
        if decision.allowed and approval is not None:
            inputs = inputs.approved()
        if not decision.allowed and (approval is None or approval.status is ApprovalStatus.DENIED):
            raise await self._decisions.refuse(
                caller.agent.id,
                f"task:{task.id}",
                task,
                approval_message(approval, "policy denies the changed task context"),
                decision=decision,
                approval=approval,
                inputs=inputs,
            )
        if not decision.allowed and approval is not None:
            changed = replace(changed, status=TaskStatus.PENDING_APPROVAL, approval_id=approval.id)
        else:
            changed = replace(changed, status=TaskStatus.ACTIVE)
        # Every live grant, decided again in the new context.
        revoke: list[str] = []
        for grant in await self._storage.list_grants(task.id):
            if grant.unusable(now) is not None:
                continue
            if changed.status is not TaskStatus.ACTIVE or not await self._still_allowed(
                caller.agent, changed, grant, now
            ):
                revoke.append(grant.id)
        # A sub-task may never be wider than its parent: those the narrowed task no longer covers
        # end (with their own sub-tasks) in the same transaction.
        children = [
            child.id
            for child in await self._storage.list_tasks(
                root_id=task.root_id, statuses=[s.value for s in LIVE_STATUSES], limit=MAX_LIST_LIMIT
            )
            if child.parent_id == task.id
            and (child.intent.widening(new_intent) or child.intent.purpose != new_intent.purpose)
        ]
        await self._audit.record(
            "task.update",
            Actor.agent(caller.agent.id),
            resource=f"task:{task.id}",
            task_id=task.id,
            chain=task.chain,
            decision=summary(decision),
            reason="context changed",
            data={
                **self._tasks.task_data(changed),
                "grants_revoked": revoke[:50],
                "revoked_count": len(revoke),
                "sub_tasks_ended": children[:50],
                **inputs.event_data(),
            },
            effects=self._decisions.input_effects(inputs),
        )
        self._decisions.inputs_recorded(inputs)
        ended = await self._storage.update_task(
            changed,
            expected_version=task.context_version,
            revoke_grants=revoke,
            end_tasks=children,
            reason="context_changed",
            now=now,
        )
        if ended.task_ids:
            await self._revocation.after_end(
                ended, Actor.agent(caller.agent.id), "parent_narrowed", chain=changed.chain
            )
        return changed, len(revoke) + ended.grants_revoked

    async def _still_allowed(self, agent: AgentRecord, task: Task, grant: Grant, now: datetime) -> bool:
        """Would ``grant`` be issued in ``task`` as it is now? (Approvals of the old context are void,
        so a grant that needs one is not.)"""
        declared = (grant.secret is None or grant.secret in task.intent.secrets) and (
            grant.destination is None or grant.destination in task.intent.destinations
        )
        record = None if grant.secret is None else await self._storage.get_secret(grant.secret)
        if not declared or record is None:
            return declared and grant.secret is None
        context = decision_context(
            task,
            now,
            mode=self._decisions.policy_mode(grant.mode, grant.secret),
            destination=grant.destination or "",
            method="PATCH",
            path=f"/v1/tasks/{task.id}",
            uses=grant.uses,
        )
        decision = await self._decisions.decide("issue", agent_entity(agent), secret_entity(record), context)
        return bool(decision)
