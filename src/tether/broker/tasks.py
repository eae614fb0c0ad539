"""Tasks: open one (the intent is decided with ``open_task``), read it, change its context (decided
again at once, with every live grant), end it, and delegate narrower sub-tasks to other agents.

Every step decides with the active policy set against the task as it is *now* (read from the store
on each call; nothing about authorization is cached), records the decision in the audit log before
acting, and fails closed: a policy error, a store error or an audit failure is a denial.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from tether.audit import Actor, AuditLog
from tether.broker._decisions import (
    MAX_LIST_LIMIT,
    DecisionPoint,
    agent_entity,
    secret_entity,
    summary,
)
from tether.broker.access import authorize
from tether.broker.activation import Activation, EgressAuthorization
from tether.broker.auth import AgentCaller
from tether.broker.grants import GrantOutcome, GrantService, PlannedEvent
from tether.broker.revocation import RevocationService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.agents import AgentRecord
from tether.domain.commands import IssueGrant, OpenTask
from tether.domain.decision import Decision
from tether.domain.destinations import Destination
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import SecretRecord, Sensitivity
from tether.domain.tasks import (
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
from tether.store.base import CreateTask, Effect, EffectFailedError, RememberJti, Storage

__all__ = [
    "Activation",
    "Declared",
    "EgressAuthorization",
    "OpenedTask",
    "TaskService",
    "agent_entity",
    "secret_entity",
]

ENDING_STATUSES = {"complete": TaskStatus.COMPLETED, "fail": TaskStatus.FAILED, "revoke": TaskStatus.REVOKED}


@dataclass(frozen=True, slots=True)
class Declared:
    """What a task declares, as read from the store once per request."""

    secrets: Mapping[str, SecretRecord]
    destinations: Mapping[str, Destination]


@dataclass(frozen=True, slots=True)
class OpenedTask:
    """A newly opened task and what became of each grant asked for with it (in request order)."""

    task: Task
    grants: tuple[GrantOutcome, ...] = ()

    @property
    def issued(self) -> tuple[Grant, ...]:
        return tuple(outcome.grant for outcome in self.grants if outcome.grant is not None)


class TaskService:
    """Opening (with the grants asked for alongside), reading, changing and ending tasks."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        decisions: DecisionPoint,
        grants: GrantService,
        revocation: RevocationService,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._decisions = decisions
        self._grants = grants
        self._revocation = revocation

    # -- opening -------------------------------------------------------------------------------
    def intent(self, intent: Intent) -> Intent:
        """``intent`` if its purpose is in the deployment's vocabulary."""
        if intent.purpose not in self._settings.task_purposes:
            allowed = "|".join(self._settings.task_purposes)
            raise InvalidInputError(f"purpose must be one of {allowed}", field="purpose")
        return intent

    def intent_of(self, fields: Mapping[str, Any]) -> Intent:
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

    async def read_declared(self, intent: Intent) -> Declared:
        """The declared secrets and destinations, each read once (a 422 names the first that does
        not exist); issuance with the task reuses them instead of reading them again."""
        secrets: dict[str, SecretRecord] = {}
        for path in sorted(intent.secrets):
            record = await self._storage.get_secret(path)
            if record is None:
                raise InvalidInputError(f"secrets: no secret {path!r}", field="secrets")
            secrets[path] = record
        destinations: dict[str, Destination] = {}
        for name in sorted(intent.destinations):
            destination = await self._storage.get_destination(name)
            if destination is None:
                raise InvalidInputError(f"destinations: no destination {name!r}", field="destinations")
            destinations[name] = destination
        return Declared(secrets, destinations)

    def ttl(self, ttl_seconds: int | None, *, limit_seconds: int | None = None) -> int:
        ttl = self._settings.task_default_ttl_seconds if ttl_seconds is None else ttl_seconds
        maximum = self._settings.task_max_ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= maximum:
            raise InvalidInputError(f"ttl_seconds must be between 1 and {maximum}", field="ttl_seconds")
        return ttl if limit_seconds is None else min(ttl, limit_seconds)

    async def open(self, caller: AgentCaller, command: OpenTask) -> OpenedTask:
        """Open a task for ``caller`` with the declared intent (``open_task`` is decided), and decide
        each grant asked for with it on its own (``issue``). The task, the grants and their events
        (and the proof's single use, if the caller deferred it) are one write."""
        intent = self.intent(command.intent)
        declared = await self.read_declared(intent)
        return await self.open_for(
            caller.agent,
            intent,
            command.ttl_seconds,
            Actor.agent(caller.agent.id),
            caller=caller,
            grants=tuple(command.grants),
            declared=declared,
        )

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

    async def open_for(
        self,
        agent: AgentRecord,
        intent: Intent,
        ttl_seconds: int | None,
        actor: Actor,
        *,
        parent: Task | None = None,
        extra: Mapping[str, Any] | None = None,
        caller: AgentCaller | None = None,
        grants: Sequence[IssueGrant] = (),
        declared: Declared | None = None,
    ) -> OpenedTask:
        """Open a task for ``agent`` (a sub-task of ``parent`` when delegated), with the grants
        ``caller`` asked for in the same request."""
        now = self._clock.now()
        task = self._new_task(agent, intent, ttl_seconds, now, parent)
        targets = self._grants.targets(task, grants, declared.destinations if declared else {})
        principal = agent_entity(agent)
        path = "/v1/tasks" if parent is None else f"/v1/tasks/{parent.id}/delegate"
        context = decision_context(task, now, method="POST", path=path)
        version = await self._decisions.active_policy_version()
        decision, inputs = await self._decisions.decide_recorded(
            "open_task", principal, principal, context, policy_version=version
        )
        needs_approval = not decision.allowed and decision.missing == ("approval",)
        resource = f"task:{task.id}"
        if not decision.allowed and not needs_approval:
            why = "policy denies opening this task" + ("; no grant was issued" if grants else "")
            raise await self._decisions.refuse(
                agent.id, resource, task, why, decision=decision, caller=caller, inputs=inputs
            )
        events: list[PlannedEvent] = []
        outcomes: list[GrantOutcome] = []
        if needs_approval:  # a new task has no approval yet: it waits for one, and issues nothing
            task = replace(task, status=TaskStatus.PENDING_APPROVAL, approval_id=new_id("apr"))
            approval = self._decisions.new_approval(
                task, "open_task", principal, decision, now, task.approval_id
            )
            events.append(
                PlannedEvent(
                    "approval.request",
                    self._decisions.approval_event(approval, task, decision),
                    approval=approval,
                )
            )
            why = f"the task awaits approval {task.approval_id}: no grant is issued before it is approved"
            outcomes = [
                GrantOutcome(index, command, "denied", decision=decision, reason=why)
                for index, command in enumerate(grants)
            ]
        elif grants:
            assert declared is not None  # read by open()
            assert caller is not None  # grants come with the caller's own task
            for outcome, planned in await self._grants.decide_for_new_task(
                caller, task, grants, targets, declared.secrets, version, now
            ):
                outcomes.append(outcome)
                events.extend(planned)
        data = {
            **self.task_data(task),
            **(extra or {}),
            **({"grants_asked": len(grants)} if grants else {}),
            **inputs.event_data(),
        }
        replay: tuple[Effect, ...] = () if caller is None or caller.replay is None else (caller.replay,)
        opened = PlannedEvent(
            "task.open",
            {
                "resource": resource,
                "task_id": task.id,
                "chain": task.chain,
                "decision": summary(decision),
                "data": data,
            },
            (*replay, *self._decisions.input_effects(inputs), CreateTask(task)),
        )
        outcomes = await self._record(actor, agent, task, opened, events, outcomes, caller)
        self._decisions.inputs_recorded(inputs)
        return OpenedTask(task, tuple(outcomes))

    async def _record(
        self,
        actor: Actor,
        agent: AgentRecord,
        task: Task,
        opened: PlannedEvent,
        events: Sequence[PlannedEvent],
        outcomes: list[GrantOutcome],
        caller: AgentCaller | None,
    ) -> list[GrantOutcome]:
        """Record the task's event and the grants' concurrently: the audit log commits them in one
        transaction (a grant's store change sees the task created before it in the same batch)."""
        results = await asyncio.gather(
            self._audit.record_with(opened.kind, actor, effects=opened.effects, **opened.fields),
            *(
                self._audit.record_with(
                    event.kind, Actor.agent(agent.id), effects=event.effects, **event.fields
                )
                for event in events
            ),
            return_exceptions=True,
        )
        first = results[0]
        if isinstance(first, EffectFailedError):
            if caller is not None and any(isinstance(e, RememberJti) for e in first.failed.values()):
                raise await self._decisions.replayed(caller, "POST /v1/tasks") from None
            raise ConflictError(f"parent task {task.parent_id} is not active") from None
        if isinstance(first, BaseException):
            raise first
        failed = {
            event.fields["data"].get("grant_id")
            for event, result in zip(events, results[1:], strict=True)
            if isinstance(result, BaseException)
        }
        for event, result in zip(events, results[1:], strict=True):
            if isinstance(result, BaseException) and not isinstance(result, EffectFailedError):
                raise result
            if isinstance(result, BaseException):
                continue
            self._decisions.effects_recorded(event.effects)  # its decision's snapshots are stored
            if event.approval is not None:
                await self._decisions.store_approval(event.approval, task, task.created_at)
        return [
            replace(
                outcome,
                status="denied",
                grant=None,
                decision=Decision.deny(errors=(f"task {task.id} is not active",)),
                reason=f"task {task.id} is not active",
            )
            if outcome.grant is not None and outcome.grant.id in failed
            else outcome
            for outcome in outcomes
        ]

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

    # -- ending -------------------------------------------------------------------
    async def end_by_agent(self, caller: AgentCaller, task_id: str, how: str, reason: str = "") -> Ended:
        """The task's agent completes, fails or revokes its task: everything issued for it (and for
        its sub-tasks) is revoked in one transaction."""
        status = ENDING_STATUSES[how]
        task = await self._decisions.agent_task(caller, task_id)
        return await self._revocation.end(Actor.agent(caller.agent.id), task, status, reason.strip() or how)
