"""Tasks: open one (the intent is decided with ``open_task``), read it, change its context (decided
again at once, with every live grant), end it, and delegate narrower sub-tasks to other agents.

Every step decides with the active policy set against the task as it is *now* (read from the store
on each call; nothing about authorization is cached), records the decision in the audit log before
acting, and fails closed: a policy error, a store error or an audit failure is a denial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from tether.audit import Actor, AuditLog
from tether.broker._decisions import (
    MAX_LIST_LIMIT,
    DecisionPoint,
    agent_entity,
    approval_message,
    secret_entity,
    summary,
)
from tether.broker.access import authorize
from tether.broker.activation import Activation, EgressAuthorization
from tether.broker.auth import AgentCaller
from tether.broker.revocation import RevocationService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.agents import AgentRecord
from tether.domain.commands import Delegate, OpenTask, UpdateTask
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import Sensitivity
from tether.domain.tasks import (
    LIVE_STATUSES,
    ApprovalStatus,
    Ended,
    Grant,
    Intent,
    Task,
    TaskStatus,
    decision_context,
    new_id,
    validate_id,
)
from tether.errors import ConflictError, InvalidInputError, NotFoundError
from tether.store.base import Storage

__all__ = [
    "Activation",
    "EgressAuthorization",
    "TaskService",
    "agent_entity",
    "secret_entity",
]

ENDING_STATUSES = {"complete": TaskStatus.COMPLETED, "fail": TaskStatus.FAILED, "revoke": TaskStatus.REVOKED}


class TaskService:
    """Opening, reading, changing, ending and delegating tasks."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        decisions: DecisionPoint,
        revocation: RevocationService,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._decisions = decisions
        self._revocation = revocation

    # -- opening -------------------------------------------------------------------------------
    def intent(self, intent: Intent) -> Intent:
        """``intent`` if its purpose is in the deployment's vocabulary."""
        if intent.purpose not in self._settings.task_purposes:
            allowed = "|".join(self._settings.task_purposes)
            raise InvalidInputError(f"purpose must be one of {allowed}", field="purpose")
        return intent

    def _intent_of(self, fields: Mapping[str, Any]) -> Intent:
        purpose = fields.get("purpose")
        if purpose not in self._settings.task_purposes:
            allowed = "|".join(self._settings.task_purposes)
            raise InvalidInputError(f"purpose must be one of {allowed}", field="purpose")
        return Intent(
            purpose=str(purpose),
            objective=fields.get("objective", ""),
            sensitivity=Sensitivity.parse(fields.get("sensitivity", "internal")),
            secrets=frozenset(fields.get("secrets") or ()),
            destinations=frozenset(fields.get("destinations") or ()),
            tools=frozenset(fields.get("tools") or ()),
        )

    async def check_exists(self, intent: Intent) -> None:
        """Every declared secret and destination exists (422 naming the first that does not)."""
        for path in sorted(intent.secrets):
            if await self._storage.get_secret(path) is None:
                raise InvalidInputError(f"secrets: no secret {path!r}", field="secrets")
        for name in sorted(intent.destinations):
            if await self._storage.get_destination(name) is None:
                raise InvalidInputError(f"destinations: no destination {name!r}", field="destinations")

    def ttl(self, ttl_seconds: int | None, *, limit_seconds: int | None = None) -> int:
        ttl = self._settings.task_default_ttl_seconds if ttl_seconds is None else ttl_seconds
        maximum = self._settings.task_max_ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= maximum:
            raise InvalidInputError(f"ttl_seconds must be between 1 and {maximum}", field="ttl_seconds")
        return ttl if limit_seconds is None else min(ttl, limit_seconds)

    async def open(self, caller: AgentCaller, command: OpenTask) -> Task:
        """Open a task for ``caller`` with the declared intent (``open_task`` is decided)."""
        intent = self.intent(command.intent)
        await self.check_exists(intent)
        return await self._open(caller.agent, intent, command.ttl_seconds, Actor.agent(caller.agent.id))

    def _new_task(
        self, agent: AgentRecord, intent: Intent, ttl_seconds: int | None, now: datetime, parent: Task | None
    ) -> Task:
        limit = None if parent is None else parent.remaining_seconds(now)
        ttl = self.ttl(ttl_seconds, limit_seconds=limit)
        if ttl < 1:
            raise ConflictError("the parent task has no time left")
        task_id = new_id("tsk")
        chain = () if parent is None else (*parent.chain, parent.id)
        return Task(
            id=task_id,
            agent_id=agent.id,
            intent=intent,
            status=TaskStatus.ACTIVE,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl),
            parent_id=None if parent is None else parent.id,
            root_id=task_id if parent is None else parent.root_id,
            depth=len(chain),
            chain=chain,
        )

    async def _open(
        self,
        agent: AgentRecord,
        intent: Intent,
        ttl_seconds: int | None,
        actor: Actor,
        *,
        parent: Task | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Task:
        now = self._clock.now()
        task = self._new_task(agent, intent, ttl_seconds, now, parent)
        principal = agent_entity(agent)
        path = "/v1/tasks" if parent is None else f"/v1/tasks/{parent.id}/delegate"
        context = decision_context(task, now, method="POST", path=path)
        decision = await self._decisions.decide("open_task", principal, principal, context)
        needs_approval = not decision.allowed and decision.missing == ("approval",)
        resource = f"task:{task.id}"
        if not decision.allowed and not needs_approval:
            raise await self._decisions.refuse(
                agent.id, resource, task, "policy denies opening this task", decision=decision
            )
        if needs_approval:  # a new task has no approval yet: it waits for one
            task = replace(task, status=TaskStatus.PENDING_APPROVAL, approval_id=new_id("apr"))
        await self._audit.record(
            "task.open",
            actor,
            resource=resource,
            task_id=task.id,
            chain=task.chain,
            decision=summary(decision),
            data={**self.task_data(task), **(extra or {})},
        )
        await self._storage.create_task(task)
        if needs_approval:
            await self._decisions.request_approval(
                task, "open_task", principal, decision, now, task.approval_id
            )
        return task

    @staticmethod
    def task_data(task: Task) -> dict[str, Any]:
        """A task's intent and state, as its events carry them."""
        intent = task.intent
        return {
            "purpose": intent.purpose,
            "objective_sha256": intent.objective_sha256,
            "sensitivity": intent.sensitivity.label,
            "secrets": sorted(intent.secrets),
            "destinations": sorted(intent.destinations),
            "tools": sorted(intent.tools),
            "status": task.status.value,
            "expires_at": task.expires_at.isoformat(),
            "context_hash": task.context_hash,
            **({"approval_id": task.approval_id} if task.approval_id else {}),
        }

    # -- delegation ----------------------------------------------------------------------------
    async def delegate(self, caller: AgentCaller, task_id: str, command: Delegate) -> Task:
        """Hand a narrower sub-task of the caller's task to another agent.

        Each hop is its own trust decision: ``delegate`` is decided for the delegator (principal)
        and the delegate (resource) with the child task's context — its depth and the whole chain
        — and then ``open_task`` is decided for the delegate. The child can only narrow its parent
        (secrets, destinations, tools, sensitivity, lifetime) and inherits its purpose; nothing of
        the delegator's identity is handed over. Ending the parent ends the child.
        """
        now = self._clock.now()
        parent = await self._decisions.agent_task(caller, task_id)
        status = parent.effective_status(now)
        delegator = caller.agent.id
        if status is not TaskStatus.ACTIVE:
            raise await self._decisions.refuse(
                delegator, f"task:{parent.id}", parent, f"task is {status.value}"
            )
        target = command.agent
        delegate_id = self._agent_id_of(target)
        delegate = await self._storage.get_agent(delegate_id)
        if delegate is None or delegate.disabled:
            raise InvalidInputError(f"agent: no active agent {target[:100]!r}", field="agent")
        if delegate.id == delegator:
            raise InvalidInputError("an agent cannot delegate to itself", field="agent")
        if parent.depth + 1 > self._settings.max_delegation_depth:
            raise await self._decisions.refuse(
                delegator,
                f"agent:{delegate.id}",
                parent,
                f"delegation deeper than {self._settings.max_delegation_depth} is not allowed",
            )
        parent_intent = parent.intent
        child_intent = self._intent_of(
            {
                "purpose": parent_intent.purpose,  # a sub-task serves its parent's purpose
                "objective": command.objective,
                "sensitivity": parent_intent.sensitivity
                if command.sensitivity is None
                else command.sensitivity,
                "secrets": command.secrets,
                "destinations": command.destinations,
                "tools": command.tools,
            }
        )
        ttl = command.ttl_seconds
        problems = child_intent.widening(parent_intent)
        if ttl is not None and ttl > parent.remaining_seconds(now):
            problems.append(f"ttl_seconds exceeds the parent's remaining {parent.remaining_seconds(now)} s")
        if problems:
            raise await self._decisions.refuse(
                delegator,
                f"agent:{delegate.id}",
                parent,
                "a sub-task can only narrow: " + "; ".join(problems),
            )
        # The decision sees the child as it would be: depth and chain include the parent.
        chain = (*parent.chain, parent.id)
        preview = Task(
            id=new_id("tsk"),
            agent_id=delegate.id,
            intent=child_intent,
            status=TaskStatus.ACTIVE,
            created_at=now,
            expires_at=parent.expires_at,
            parent_id=parent.id,
            root_id=parent.root_id,
            depth=len(chain),
            chain=chain,
        )
        resource = agent_entity(delegate)
        context = decision_context(preview, now, method="POST", path=f"/v1/tasks/{parent.id}/delegate")
        decision = await self._decisions.decide("delegate", agent_entity(caller.agent), resource, context)
        # An approval is for this hop: this delegate and exactly this narrowed scope.
        asked = {
            "delegate": delegate.id,
            "secrets": sorted(child_intent.secrets),
            "destinations": sorted(child_intent.destinations),
            "tools": sorted(child_intent.tools),
            "sensitivity": child_intent.sensitivity.label,
            "ttl_seconds": ttl,
        }
        decision, approval = await self._decisions.allowed_or_refuse(
            decision,
            parent,
            "delegate",
            resource,
            now,
            asked,
            agent_id=delegator,
            label=f"agent:{delegate.id}",
            denied="policy denies this delegation",
        )
        await self._audit.record(
            "delegation",
            Actor.agent(delegator),
            resource=f"agent:{delegate.id}",
            task_id=parent.id,
            chain=parent.chain,
            decision=summary(decision),
            data={
                "delegate": delegate.id,
                "depth": len(chain),
                "secrets": sorted(child_intent.secrets),
                "destinations": sorted(child_intent.destinations),
                "tools": sorted(child_intent.tools),
                "sensitivity": child_intent.sensitivity.label,
                **({"approval_id": approval.id} if approval is not None else {}),
            },
        )
        await self.check_exists(child_intent)
        return await self._open(
            delegate,
            child_intent,
            ttl,
            Actor.agent(delegator),
            parent=parent,
            extra={"delegated_by": delegator, "delegate": delegate.id},
        )

    def _agent_id_of(self, name_or_id: str) -> str:
        if name_or_id.startswith("spiffe://"):
            return name_or_id
        return f"spiffe://{self._settings.trust_domain}/agent/{name_or_id}"

    # -- reading -------------------------------------------------------------------------------
    async def tree(self, actor: OperatorRecord, task_id: str) -> list[Task]:
        """Every task in the delegation tree ``task_id`` belongs to, root first (operators)."""
        task = await self.get_for_operator(actor, task_id)
        tasks = await self._storage.list_tasks(root_id=task.root_id, limit=MAX_LIST_LIMIT)
        return sorted(tasks, key=lambda item: (item.depth, item.created_at, item.id))

    async def get_for_agent(self, caller: AgentCaller, task_id: str) -> Task:
        return await self._decisions.agent_task(caller, task_id)

    async def get_for_operator(self, actor: OperatorRecord, task_id: str) -> Task:
        validate_id(task_id, "tsk", "task_id")
        await authorize(self._audit, actor, Permission.TASK_READ, f"task:{task_id}")
        task = await self._storage.get_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id}")
        return task

    async def list_for_operator(
        self,
        actor: OperatorRecord,
        *,
        agent_id: str | None = None,
        statuses: Sequence[str] = (),
        root_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_LIST_LIMIT}", field="limit")
        for status in statuses:
            if status not in TaskStatus.__members__.values():
                raise InvalidInputError("status must be a task status", field="status")
        await authorize(self._audit, actor, Permission.TASK_READ, "task:*")
        return await self._storage.list_tasks(
            agent_id=agent_id, statuses=statuses, root_id=root_id, after=after, limit=limit
        )

    async def grants_of(self, task: Task) -> list[Grant]:
        return await self._storage.list_grants(task.id)

    # -- changing and ending -------------------------------------------------------------------
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
        new_intent = self._intent_of(merged)
        await self.check_exists(new_intent)
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
        decision = await self._decisions.decide("open_task", principal, principal, context)
        decision, approval = await self._decisions.with_approval(
            decision, changed, "open_task", principal, now
        )
        if not decision.allowed and (approval is None or approval.status is ApprovalStatus.DENIED):
            raise await self._decisions.refuse(
                caller.agent.id,
                f"task:{task.id}",
                task,
                approval_message(approval, "policy denies the changed task context"),
                decision=decision,
                approval=approval,
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
                **self.task_data(changed),
                "grants_revoked": revoke[:50],
                "revoked_count": len(revoke),
                "sub_tasks_ended": children[:50],
            },
        )
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

    async def end_by_agent(self, caller: AgentCaller, task_id: str, how: str, reason: str = "") -> Ended:
        """The task's agent completes, fails or revokes its task: everything issued for it (and for
        its sub-tasks) is revoked in one transaction."""
        status = ENDING_STATUSES[how]
        task = await self._decisions.agent_task(caller, task_id)
        return await self._revocation.end(Actor.agent(caller.agent.id), task, status, reason.strip() or how)
