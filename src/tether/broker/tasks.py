"""The governed path: open a task, issue a grant, decide again at every use, end everything at once.

Every step decides with the active policy set against the task as it is *now* (read from the store
on each call; nothing about authorization is cached), records the decision in the audit log before
acting, and fails closed: a policy error, a store error or an audit failure is a denial.

Approvals are derived from policy: when a request is denied but would be allowed with
``context.approval == true``, an approval bound to (task, context hash, action, resource) is opened
and the denial names it. Once an approver approves, the same request is allowed until the approval
expires or the task's context changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from tether.audit import Actor, AuditLog, DecisionSummary
from tether.broker.access import authorize, operator_actor
from tether.broker.auth import AgentCaller
from tether.broker.policies import PolicyService
from tether.broker.secrets import SecretService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.agents import AgentRecord
from tether.domain.decision import Decision
from tether.domain.destinations import Destination
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import SecretRecord, Sensitivity, validate_path
from tether.domain.tasks import (
    LIVE_STATUSES,
    Approval,
    ApprovalStatus,
    Ended,
    Grant,
    GrantMode,
    Intent,
    Lease,
    Task,
    TaskStatus,
    decision_context,
    new_id,
    request_hash,
    validate_id,
)
from tether.engines import EngineRegistry, LeaseRequest
from tether.errors import (
    AuthenticationError,
    ConflictError,
    DeniedError,
    InvalidInputError,
    NotFoundError,
    SealedError,
    TetherError,
)
from tether.policy import DecisionRequest, Entity
from tether.store.base import ConsumeGrantUse, Effect, EffectFailedError, GrantInUse, RememberJti, Storage

__all__ = ["Activation", "EgressAuthorization", "TaskService", "agent_entity", "secret_entity"]

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
MAX_REASON_CHARS = 500
ENDING_STATUSES = {"complete": TaskStatus.COMPLETED, "fail": TaskStatus.FAILED, "revoke": TaskStatus.REVOKED}


def agent_entity(agent: AgentRecord) -> Entity:
    attributes = agent.attributes
    return Entity(
        "Agent",
        agent.id,
        {
            "team": attributes.team,
            "environment": attributes.environment,
            "owner": attributes.owner,
            "labels": sorted(attributes.labels),
        },
    )


def secret_entity(record: SecretRecord) -> Entity:
    metadata = record.metadata
    return Entity(
        "Secret",
        record.path,
        {
            "path": record.path,
            "sensitivity": int(metadata.sensitivity),
            "purposes": sorted(metadata.purposes),
            "destinations": sorted(metadata.destinations),
            "owner": metadata.owner,
        },
    )


def _summary(decision: Decision) -> DecisionSummary:
    return DecisionSummary(allowed=decision.allowed, policies=decision.policies, missing=decision.missing)


def _decision_data(decision: Decision) -> dict[str, Any]:
    return {"errors": [error[:300] for error in decision.errors[:5]]} if decision.errors else {}


@dataclass(frozen=True, slots=True)
class Activation:
    """What a reveal or dynamic activation hands to the agent (once; never stored or logged)."""

    grant: Grant
    value: str | None = None
    version: int | None = None
    credential: Mapping[str, Any] | None = None
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return f"Activation(grant={self.grant.id}, mode={self.grant.mode.value})"


@dataclass(frozen=True, slots=True)
class EgressAuthorization:
    """An allowed, counted, recorded inject activation: what the egress proxy needs."""

    grant: Grant
    task: Task
    destination: Destination
    secret: bytes = field(repr=False)


class TaskService:
    """Tasks, grants, activation, approvals and revocation for one node."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        policies: PolicyService,
        secrets: SecretService,
        engines: EngineRegistry,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policies = policies
        self._secrets = secrets
        self._engines = engines
        self.webhook: Any = None  # set by the node: an ApprovalWebhook, or None
        # Set by the node: records a replayed (deferred) proof and returns the error to raise.
        self.on_replay: Callable[[AgentCaller, str], Awaitable[TetherError]] | None = None

    # -- deciding ----------------------------------------------------------------------------
    async def _decide(
        self,
        action: str,
        principal: Entity,
        resource: Entity,
        context: dict[str, Any],
        *,
        policy_version: int | Literal["read"] | None = "read",
    ) -> Decision:
        """One policy decision, failing closed on anything that goes wrong. ``policy_version`` is the
        active version when the caller already read it (activation reads it with the grant)."""
        try:
            if policy_version == "read":
                compiled = await self._policies.active()
            else:
                compiled = None if policy_version is None else await self._policies.compiled(policy_version)
            if compiled is None:
                return Decision.deny(errors=("no policy set is deployed (default deny)",))
            request = DecisionRequest(principal=principal, action=action, resource=resource, context=context)
            return compiled.decide(request, trusted_context=True)  # built by decision_context
        except TetherError:
            raise
        except Exception as exc:
            log.exception("policy decision failed")
            return Decision.deny(errors=(f"policy decision failed: {type(exc).__name__}",))

    async def _with_approval(
        self,
        decision: Decision,
        task: Task,
        action: str,
        resource: Entity,
        now: datetime,
        request: Mapping[str, Any] | None = None,
    ) -> tuple[Decision, Approval | None]:
        """If ``decision`` only lacks an approval: allowed when an approval of exactly this request
        (task context, action, resource and ``request``) exists, else open (or reuse) a pending one."""
        if decision.allowed or decision.missing != ("approval",):
            return decision, None
        request = dict(request or {})
        resource_key = f"{resource.type}::{resource.id}"
        found = await self._storage.find_approval(
            task.id, action, resource_key, task.context_hash, now, request_hash=request_hash(request)
        )
        if found is not None:
            return Decision(allowed=True, policies=decision.policies), found
        return decision, await self._request_approval(task, action, resource, decision, now, request=request)

    async def _allowed_or_refuse(
        self,
        decision: Decision,
        task: Task,
        action: str,
        resource: Entity,
        now: datetime,
        asked: Mapping[str, Any],
        *,
        agent_id: str,
        label: str,
        denied: str,
        data: Mapping[str, Any] | None = None,
        caller: AgentCaller | None = None,
    ) -> tuple[Decision, Approval | None]:
        """The decision once approvals are taken into account (and the approval that allows it, if
        any); a refusal (recorded, naming the approval it opened or the denial that stands) if it is
        still a deny."""
        decision, approval = await self._with_approval(decision, task, action, resource, now, asked)
        if decision.allowed:
            return decision, approval
        raise await self._refuse(
            agent_id,
            label,
            task,
            self._approval_message(approval, denied),
            decision=decision,
            approval=approval,
            data=data,
            caller=caller,
        )

    async def _request_approval(
        self,
        task: Task,
        action: str,
        resource: Entity,
        decision: Decision,
        now: datetime,
        approval_id: str | None = None,
        *,
        request: Mapping[str, Any] | None = None,
    ) -> Approval:
        """Open (or reuse) a pending approval for ``action`` on ``resource`` in ``task`` as it is now;
        the task must already be stored."""
        resource_key = f"{resource.type}::{resource.id}"
        if approval_id is None:
            # Asking again while a request is pending, or after a denial, gets that same answer.
            existing = await self._storage.find_approval(
                task.id,
                action,
                resource_key,
                task.context_hash,
                now,
                statuses=(ApprovalStatus.PENDING.value, ApprovalStatus.DENIED.value),
                request_hash=request_hash(dict(request or {})),
            )
            if existing is not None:
                return existing
        approval = Approval(
            id=approval_id or new_id("apr"),
            task_id=task.id,
            agent_id=task.agent_id,
            action=action,
            resource=resource_key,
            context_hash=task.context_hash,
            status=ApprovalStatus.PENDING,
            policies=decision.policies,
            requested_at=now,
            expires_at=now + timedelta(seconds=self._settings.approval_ttl_seconds),
            request=dict(request or {}),
        )
        await self._audit.record(
            "approval.request",
            Actor.agent(task.agent_id),
            resource=f"approval:{approval.id}",
            task_id=task.id,
            chain=task.chain,
            decision=_summary(decision),
            data={
                "action": action,
                "target": resource_key[:400],
                "context_hash": task.context_hash,
                "request": dict(approval.request),
            },
        )
        stored = await self._storage.open_approval(approval, now)
        if stored.id == approval.id and self.webhook is not None:
            self.webhook.notify(stored, task)
        return stored

    async def _replayed(self, caller: AgentCaller, context: str) -> TetherError:
        if self.on_replay is None:
            return AuthenticationError("DPoP proof replayed", code="invalid_dpop_proof")
        return await self.on_replay(caller, context)

    @staticmethod
    def _approval_message(approval: Approval | None, otherwise: str) -> str:
        if approval is None:
            return otherwise
        if approval.status is ApprovalStatus.DENIED:
            return f"an approver denied this ({approval.decided_by}: {approval.reason[:200]})"
        return "approval required"

    async def _refuse(
        self,
        agent_id: str,
        resource: str,
        task: Task | None,
        message: str,
        *,
        decision: Decision | None = None,
        approval: Approval | None = None,
        data: Mapping[str, Any] | None = None,
        caller: AgentCaller | None = None,
    ) -> TetherError:
        """Record a denial (a ``decision`` event) and return the error to raise. A caller whose
        proof's single use is still to be recorded has it recorded with the denial."""
        if decision is None:  # not a policy decision: the task or grant cannot be used
            decision = Decision.deny(errors=(message,))
        replay = None if caller is None else caller.replay
        try:
            await self._audit.record(
                "decision",
                Actor.agent(agent_id),
                resource=resource,
                task_id=None if task is None else task.id,
                chain=() if task is None else task.chain,
                decision=_summary(decision),
                reason=message[:MAX_REASON_CHARS],
                data={**_decision_data(decision), **(data or {})},
                effects=() if replay is None else (replay,),
            )
        except EffectFailedError:
            assert caller is not None
            return await self._replayed(caller, resource)
        return DeniedError(message, decision=decision, approval_id=None if approval is None else approval.id)

    # -- tasks -------------------------------------------------------------------------------
    def _intent(self, fields: Mapping[str, Any]) -> Intent:
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

    async def _check_exists(self, intent: Intent) -> None:
        for path in sorted(intent.secrets):
            record = await self._storage.get_secret(path)
            if record is None:
                raise InvalidInputError(f"secrets: no secret {path!r}", field="secrets")
        for name in sorted(intent.destinations):
            if await self._storage.get_destination(name) is None:
                raise InvalidInputError(f"destinations: no destination {name!r}", field="destinations")

    def _ttl(self, ttl_seconds: int | None, *, limit_seconds: int | None = None) -> int:
        ttl = self._settings.task_default_ttl_seconds if ttl_seconds is None else ttl_seconds
        maximum = self._settings.task_max_ttl_seconds
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= maximum:
            raise InvalidInputError(f"ttl_seconds must be between 1 and {maximum}", field="ttl_seconds")
        return ttl if limit_seconds is None else min(ttl, limit_seconds)

    async def open(self, caller: AgentCaller, fields: Mapping[str, Any]) -> Task:
        """Open a task for ``caller`` with the declared intent (``open_task`` is decided)."""
        return await self._open(caller.agent, fields, Actor.agent(caller.agent.id))

    async def _open(
        self,
        agent: AgentRecord,
        fields: Mapping[str, Any],
        actor: Actor,
        *,
        parent: Task | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Task:
        now = self._clock.now()
        intent = self._intent(fields)
        await self._check_exists(intent)
        limit = None if parent is None else parent.remaining_seconds(now)
        ttl = self._ttl(fields.get("ttl_seconds"), limit_seconds=limit)
        if ttl < 1:
            raise ConflictError("the parent task has no time left")
        task_id = new_id("tsk")
        chain = () if parent is None else (*parent.chain, parent.id)
        task = Task(
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
        principal = agent_entity(agent)
        path = "/v1/tasks" if parent is None else f"/v1/tasks/{parent.id}/delegate"
        context = decision_context(task, now, method="POST", path=path)
        decision = await self._decide("open_task", principal, principal, context)
        needs_approval = not decision.allowed and decision.missing == ("approval",)
        resource = f"task:{task.id}"
        if not decision.allowed and not needs_approval:
            raise await self._refuse(
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
            decision=_summary(decision),
            data={**self._task_data(task), **(extra or {})},
        )
        await self._storage.create_task(task)
        if needs_approval:
            await self._request_approval(task, "open_task", principal, decision, now, task.approval_id)
        return task

    async def delegate(self, caller: AgentCaller, task_id: str, fields: Mapping[str, Any]) -> Task:
        """Hand a narrower sub-task of the caller's task to another agent.

        Each hop is its own trust decision: ``delegate`` is decided for the delegator (principal)
        and the delegate (resource) with the child task's context — its depth and the whole chain
        — and then ``open_task`` is decided for the delegate. The child can only narrow its parent
        (secrets, destinations, tools, sensitivity, lifetime) and inherits its purpose; nothing of
        the delegator's identity is handed over. Ending the parent ends the child.
        """
        now = self._clock.now()
        parent = await self._agent_task(caller, task_id)
        status = parent.effective_status(now)
        delegator = caller.agent.id
        if status is not TaskStatus.ACTIVE:
            raise await self._refuse(delegator, f"task:{parent.id}", parent, f"task is {status.value}")
        target = fields.get("agent")
        if not isinstance(target, str) or not target:
            raise InvalidInputError("agent (the delegate's id or name) is required", field="agent")
        delegate_id = self._agent_id_of(target)
        delegate = await self._storage.get_agent(delegate_id)
        if delegate is None or delegate.disabled:
            raise InvalidInputError(f"agent: no active agent {target[:100]!r}", field="agent")
        if delegate.id == delegator:
            raise InvalidInputError("an agent cannot delegate to itself", field="agent")
        if parent.depth + 1 > self._settings.max_delegation_depth:
            raise await self._refuse(
                delegator,
                f"agent:{delegate.id}",
                parent,
                f"delegation deeper than {self._settings.max_delegation_depth} is not allowed",
            )
        parent_intent = parent.intent
        child_fields = {
            "purpose": parent_intent.purpose,  # a sub-task serves its parent's purpose
            "objective": fields.get("objective", ""),
            "sensitivity": fields.get("sensitivity") or parent_intent.sensitivity.label,
            "secrets": fields.get("secrets") or [],
            "destinations": fields.get("destinations") or [],
            "tools": fields.get("tools") or [],
            "ttl_seconds": fields.get("ttl_seconds"),
        }
        child_intent = self._intent(child_fields)
        problems = child_intent.widening(parent_intent)
        ttl = child_fields["ttl_seconds"]
        if isinstance(ttl, int) and ttl > parent.remaining_seconds(now):
            problems.append(f"ttl_seconds exceeds the parent's remaining {parent.remaining_seconds(now)} s")
        if problems:
            raise await self._refuse(
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
        decision = await self._decide("delegate", agent_entity(caller.agent), resource, context)
        # An approval is for this hop: this delegate and exactly this narrowed scope.
        asked = {
            "delegate": delegate.id,
            "secrets": sorted(child_intent.secrets),
            "destinations": sorted(child_intent.destinations),
            "tools": sorted(child_intent.tools),
            "sensitivity": child_intent.sensitivity.label,
            "ttl_seconds": child_fields["ttl_seconds"],
        }
        decision, approval = await self._allowed_or_refuse(
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
            decision=_summary(decision),
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
        return await self._open(
            delegate,
            child_fields,
            Actor.agent(delegator),
            parent=parent,
            extra={"delegated_by": delegator, "delegate": delegate.id},
        )

    def _agent_id_of(self, name_or_id: str) -> str:
        if name_or_id.startswith("spiffe://"):
            return name_or_id
        return f"spiffe://{self._settings.trust_domain}/agent/{name_or_id}"

    async def tree(self, actor: OperatorRecord, task_id: str) -> list[Task]:
        """Every task in the delegation tree ``task_id`` belongs to, root first (operators)."""
        task = await self.get_for_operator(actor, task_id)
        tasks = await self._storage.list_tasks(root_id=task.root_id, limit=MAX_LIST_LIMIT)
        return sorted(tasks, key=lambda item: (item.depth, item.created_at, item.id))

    @staticmethod
    def _task_data(task: Task) -> dict[str, Any]:
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

    async def _agent_task(self, caller: AgentCaller, task_id: str) -> Task:
        """The caller's own task; another agent's task is 'not found' (no probing)."""
        validate_id(task_id, "tsk", "task_id")
        task = await self._storage.get_task(task_id)
        if task is None or task.agent_id != caller.agent.id:
            raise NotFoundError(f"no task {task_id}")
        return task

    async def get_for_agent(self, caller: AgentCaller, task_id: str) -> Task:
        return await self._agent_task(caller, task_id)

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

    async def update(self, caller: AgentCaller, task_id: str, fields: Mapping[str, Any]) -> tuple[Task, int]:
        """Change the task's context. ``open_task`` is decided again, and every live grant is
        decided again (``issue``) in the new context; those no longer allowed are revoked
        (``context_changed``). Approvals bound to the old context are voided. Returns the task
        and how many grants were revoked."""
        now = self._clock.now()
        task = await self._agent_task(caller, task_id)
        if task.effective_status(now) not in LIVE_STATUSES:
            raise await self._refuse(
                caller.agent.id, f"task:{task.id}", task, f"task is {task.effective_status(now).value}"
            )
        unknown = set(fields) - {"purpose", "objective", "sensitivity", "secrets", "destinations", "tools"}
        if unknown:
            raise InvalidInputError(
                f"a task's {sorted(unknown)[0]} cannot be changed", field=sorted(unknown)[0]
            )
        intent = task.intent
        merged = {
            "purpose": intent.purpose,
            "objective": intent.objective,
            "sensitivity": intent.sensitivity.label,
            "secrets": sorted(intent.secrets),
            "destinations": sorted(intent.destinations),
            "tools": sorted(intent.tools),
            **{key: value for key, value in fields.items() if value is not None},
        }
        new_intent = self._intent(merged)
        await self._check_exists(new_intent)
        if task.parent_id is not None:
            # What the delegator handed over is the limit: a sub-task may only narrow itself further
            # (widening it again would be a new delegation, decided for the delegator).
            problems = new_intent.widening(task.intent)
            if new_intent.purpose != task.intent.purpose:
                problems.append("a sub-task keeps its parent's purpose")
            if problems:
                raise await self._refuse(
                    caller.agent.id,
                    f"task:{task.id}",
                    task,
                    "a sub-task can only narrow: " + "; ".join(problems),
                )
        changed = replace(task, intent=new_intent, context_version=task.context_version + 1, approval_id=None)
        principal = agent_entity(caller.agent)
        context = decision_context(changed, now, method="PATCH", path=f"/v1/tasks/{task.id}")
        decision = await self._decide("open_task", principal, principal, context)
        decision, approval = await self._with_approval(decision, changed, "open_task", principal, now)
        if not decision.allowed and (approval is None or approval.status is ApprovalStatus.DENIED):
            raise await self._refuse(
                caller.agent.id,
                f"task:{task.id}",
                task,
                self._approval_message(approval, "policy denies the changed task context"),
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
            decision=_summary(decision),
            reason="context changed",
            data={
                **self._task_data(changed),
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
            await self._after_end(ended, Actor.agent(caller.agent.id), "parent_narrowed", chain=changed.chain)
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
            mode=self._policy_mode(grant.mode, grant.secret),
            destination=grant.destination or "",
            method="PATCH",
            path=f"/v1/tasks/{task.id}",
            uses=grant.uses,
        )
        return bool(await self._decide("issue", agent_entity(agent), secret_entity(record), context))

    async def end_by_agent(self, caller: AgentCaller, task_id: str, how: str, reason: str = "") -> Ended:
        """The task's agent completes, fails or revokes its task: everything issued for it (and for
        its sub-tasks) is revoked in one transaction."""
        status = ENDING_STATUSES[how]
        task = await self._agent_task(caller, task_id)
        return await self._end(Actor.agent(caller.agent.id), task, status, reason.strip() or how)

    async def revoke_by_operator(self, actor: OperatorRecord, task_id: str, reason: str = "") -> Ended:
        validate_id(task_id, "tsk", "task_id")
        await authorize(self._audit, actor, Permission.TASK_REVOKE, f"task:{task_id}")
        task = await self._storage.get_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id}")
        return await self._end(
            operator_actor(actor), task, TaskStatus.REVOKED, reason or "revoked by operator"
        )

    async def _end(self, actor: Actor, task: Task, status: TaskStatus, reason: str) -> Ended:
        now = self._clock.now()
        effective = task.effective_status(now)
        if effective not in LIVE_STATUSES:
            raise ConflictError(f"task {task.id} is already {effective.value}")
        await self._audit.record(
            "task.end",
            actor,
            resource=f"task:{task.id}",
            task_id=task.id,
            chain=task.chain,
            reason=reason[:MAX_REASON_CHARS],
            data={"status": status.value},
        )
        ended = await self._storage.end_tasks([task.id], status.value, reason[:64], now)
        await self._after_end(ended, actor, reason, chain=task.chain)
        return ended

    async def _after_end(self, ended: Ended, actor: Actor, reason: str, *, chain: Sequence[str] = ()) -> None:
        """Record what an ending revoked (descendants, grants) and revoke engine leases."""
        if len(ended.task_ids) > 1 or ended.grants_revoked:
            with contextlib.suppress(TetherError):
                await self._audit.record(
                    "grant.revoke",
                    actor,
                    resource=f"task:{ended.task_ids[0]}",
                    task_id=ended.task_ids[0],
                    chain=chain,
                    reason=reason[:MAX_REASON_CHARS],
                    data={
                        "tasks_ended": list(ended.task_ids[:50]),
                        "tasks_ended_count": len(ended.task_ids),
                        "grants_revoked": ended.grants_revoked,
                    },
                )
        await self.revoke_leases(ended.leases)

    async def revoke_leases(self, leases: Sequence[Lease]) -> int:
        """Ask each lease's engine to revoke it; failures stay pending for the sweeper."""
        done = 0
        for lease in leases:
            try:
                await self._engines.revoke(lease)
                await self._storage.mark_lease_revoked(lease.id, self._clock.now())
                done += 1
            except TetherError as exc:
                log.warning(
                    "lease %s: engine revocation failed (%s); will retry", lease.id, type(exc).__name__
                )
        return done

    async def revoke(
        self,
        actor: OperatorRecord,
        *,
        task_id: str | None = None,
        agent: AgentRecord | None = None,
        secret: str | None = None,
        reason: str = "",
    ) -> Ended:
        """Emergency revocation by an operator: a task (and its sub-tasks), every live task of an
        agent, or every grant of a secret."""
        if sum(x is not None for x in (task_id, agent, secret)) != 1:
            raise InvalidInputError("name exactly one of task, agent or secret", field="task")
        reason = (reason or "revoked by operator")[:MAX_REASON_CHARS]
        if task_id is not None:
            return await self.revoke_by_operator(actor, task_id, reason)
        if agent is not None:
            await authorize(self._audit, actor, Permission.TASK_REVOKE, f"agent:{agent.id}")
            return await self.revoke_agent(operator_actor(actor), agent.id, reason)
        assert secret is not None
        validate_path(secret)
        await authorize(self._audit, actor, Permission.TASK_REVOKE, f"secret:{secret}")
        return await self.revoke_secret(operator_actor(actor), secret, reason)

    async def revoke_agent(self, actor: Actor, agent_id: str, reason: str) -> Ended:
        """End every live task of ``agent_id`` (and their sub-tasks)."""
        live = [s.value for s in LIVE_STATUSES]
        tasks = await self._storage.list_tasks(agent_id=agent_id, statuses=live, limit=MAX_LIST_LIMIT)
        if not tasks:
            return Ended()
        await self._audit.record(
            "task.end",
            actor,
            resource=f"agent:{agent_id}",
            reason=reason[:MAX_REASON_CHARS],
            data={"status": TaskStatus.REVOKED.value, "tasks": [task.id for task in tasks[:50]]},
        )
        ended = Ended()
        while tasks:
            ended += await self._storage.end_tasks(
                [task.id for task in tasks], TaskStatus.REVOKED.value, reason[:64], self._clock.now()
            )
            if len(tasks) < MAX_LIST_LIMIT:
                break
            tasks = await self._storage.list_tasks(agent_id=agent_id, statuses=live, limit=MAX_LIST_LIMIT)
        await self._after_end(ended, actor, reason)
        return ended

    async def revoke_secret(self, actor: Actor, path: str, reason: str, *, announce: bool = True) -> Ended:
        """Revoke every live grant of the secret ``path``. With ``announce`` the revocation is
        recorded first; without (a secret deletion, itself recorded), only if it revoked anything."""
        if announce:
            await self._audit.record(
                "grant.revoke", actor, resource=f"secret:{path}", reason=reason[:MAX_REASON_CHARS]
            )
        count = await self._storage.revoke_grants(secret=path, reason=reason[:64], now=self._clock.now())
        if count and not announce:
            with contextlib.suppress(TetherError):  # revoking only narrows access; it stands regardless
                await self._audit.record(
                    "grant.revoke",
                    actor,
                    resource=f"secret:{path}",
                    reason=reason[:MAX_REASON_CHARS],
                    data={"grants_revoked": count},
                )
        return Ended(grants_revoked=count)

    async def secret_deleted(self, actor: Actor, path: str, reason: str) -> Ended:
        return await self.revoke_secret(actor, path, reason, announce=False)

    async def sweep(self) -> Ended:
        """End expired tasks (and everything issued for them); retry pending lease revocations."""
        now = self._clock.now()
        ended = await self._storage.expire_tasks(now)
        if ended.task_ids:
            with contextlib.suppress(TetherError):
                await self._audit.record(
                    "task.end",
                    self._audit.actor,
                    resource=f"task:{ended.task_ids[0]}",
                    reason="expired",
                    data={
                        "status": TaskStatus.EXPIRED.value,
                        "tasks_ended": list(ended.task_ids[:50]),
                        "tasks_ended_count": len(ended.task_ids),
                        "grants_revoked": ended.grants_revoked,
                    },
                )
        pending = await self._storage.leases_to_revoke(now)
        await self.revoke_leases(pending)
        return ended

    async def sweep_loop(self, interval_seconds: float) -> None:
        """Run :meth:`sweep` every ``interval_seconds`` until cancelled; errors are logged."""
        while True:
            try:
                await self.sweep()
            except SealedError:
                pass
            except TetherError as exc:
                log.warning("task sweep failed: %s", exc)
            await asyncio.sleep(interval_seconds)

    def _policy_mode(self, mode: GrantMode, secret: str | None) -> str:
        """The mode policies see. A ``dynamic`` grant whose engine hands out the stored value itself
        (the static engine) is a reveal in all but name, and is decided as one: a policy that never
        reveals confidential values cannot be side-stepped by asking for ``dynamic``."""
        if (
            mode is GrantMode.DYNAMIC
            and secret is not None
            and self._engines.for_secret(secret).reveals_value
        ):
            return GrantMode.REVEAL.value
        return mode.value

    # -- grants (issuance) ---------------------------------------------------------------------
    async def issue(self, caller: AgentCaller, task_id: str, fields: Mapping[str, Any]) -> Grant:
        """Issue a grant in the caller's task (``issue`` is decided). No secret material."""
        now = self._clock.now()
        task = await self._agent_task(caller, task_id)
        agent_id = caller.agent.id
        mode = GrantMode.parse(fields.get("mode", GrantMode.INJECT.value))
        secret_path = fields.get("secret")
        destination_name = fields.get("destination")
        if secret_path is None and destination_name is None:
            raise InvalidInputError("a grant names a secret or a destination", field="secret")
        status = task.effective_status(now)
        resource_label = f"secret:{secret_path}" if secret_path else f"destination:{destination_name}"
        if status is not TaskStatus.ACTIVE:
            raise await self._refuse(agent_id, resource_label, task, f"task is {status.value}")
        secret_path = await self._grant_target(caller, task, mode, secret_path, destination_name)
        if secret_path is None:
            raise InvalidInputError(f"a {mode.value} grant names a secret", field="secret")
        if not isinstance(secret_path, str) or secret_path not in task.intent.secrets:
            raise await self._refuse(
                agent_id, f"secret:{str(secret_path)[:256]}", task, "secret is not declared by the task"
            )
        record = await self._storage.get_secret(secret_path)
        if record is None:
            raise NotFoundError(f"no secret {secret_path!r}")
        remaining = task.remaining_seconds(now)
        ttl = fields.get("ttl_seconds")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise InvalidInputError("ttl_seconds must be a positive integer", field="ttl_seconds")
        ttl = remaining if ttl is None else min(ttl, remaining)
        max_uses = fields.get("max_uses")
        grant = Grant(
            id=new_id("grt"),
            task_id=task.id,
            agent_id=agent_id,
            jkt=caller.jkt,
            secret=secret_path,
            destination=destination_name,
            mode=mode,
            created_at=now,
            expires_at=min(now + timedelta(seconds=ttl), task.expires_at),
            max_uses=max_uses,
        )
        resource = secret_entity(record)
        context = decision_context(
            task,
            now,
            mode=self._policy_mode(mode, secret_path),
            destination=destination_name or "",
            method="POST",
            path=f"/v1/tasks/{task.id}/grants",
        )
        decision = await self._decide("issue", agent_entity(caller.agent), resource, context)
        # An approval is for this grant as asked: its mode, destination, lifetime and use budget.
        asked = {
            "mode": mode.value,
            "destination": destination_name or "",
            "ttl_seconds": fields.get("ttl_seconds"),
            "max_uses": max_uses,
        }
        decision, approval = await self._allowed_or_refuse(
            decision,
            task,
            "issue",
            resource,
            now,
            asked,
            agent_id=agent_id,
            label=f"secret:{secret_path}",
            denied="policy denies this grant",
        )
        await self._audit.record(
            "grant.issue",
            Actor.agent(agent_id),
            resource=f"secret:{secret_path}",
            task_id=task.id,
            chain=task.chain,
            decision=_summary(decision),
            data={
                "grant_id": grant.id,
                "mode": mode.value,
                "destination": destination_name or "",
                "expires_at": grant.expires_at.isoformat(),
                "max_uses": grant.max_uses or 0,
                **({"approval_id": approval.id} if approval is not None else {}),
            },
        )
        await self._storage.create_grant(grant, now=now)
        return grant

    async def _grant_target(
        self, caller: AgentCaller, task: Task, mode: GrantMode, secret: Any, destination_name: Any
    ) -> Any:
        """The secret a grant is for: named, or (inject) the one its destination injects."""
        if destination_name is None:
            if mode is GrantMode.INJECT:
                raise InvalidInputError(
                    "an inject grant names the destination to inject into", field="destination"
                )
            return secret
        if destination_name not in task.intent.destinations:
            raise await self._refuse(
                caller.agent.id,
                f"destination:{str(destination_name)[:64]}",
                task,
                f"destination {str(destination_name)[:64]!r} is not declared by the task",
            )
        destination = await self._storage.get_destination(destination_name)
        if destination is None:
            raise NotFoundError(f"no destination {destination_name!r}")
        if mode is not GrantMode.INJECT:
            return secret
        if secret is not None and secret != destination.secret:
            raise InvalidInputError("the destination injects a different secret", field="secret")
        return destination.secret

    # -- activation ----------------------------------------------------------------------------
    async def activate(self, caller: AgentCaller, grant_id: str, *, method: str, path: str) -> Activation:
        """Use a ``reveal`` or ``dynamic`` grant: decided again now, counted atomically, audited,
        then the value (or a fresh credential) is handed over once."""
        validate_id(grant_id, "grt", "grant_id")
        now = self._clock.now()
        use = await self._storage.grant_for_use(grant_id)
        if use is None or use.grant.agent_id != caller.agent.id:
            raise NotFoundError(f"no grant {grant_id}")
        if use.grant.mode is GrantMode.INJECT:
            raise InvalidInputError("inject grants are used through /v1/egress/{destination}/…", field="mode")
        grant = await self._use(caller, use, now, method=method, path=path)
        assert use.secret is not None  # checked by _use
        if grant.mode is GrantMode.REVEAL:
            version, value = await self._reveal(use.secret.path, use.value)
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(
                    "this secret's value is not UTF-8 text; it cannot be revealed", field="mode"
                ) from None
            return Activation(grant=grant, value=text, version=version)
        return await self._dynamic(caller, grant, use.task, use.secret.path, now)

    async def authorize_egress(
        self, caller: AgentCaller, task_id: str, destination: str, *, method: str, path: str
    ) -> EgressAuthorization:
        """Activation for ``inject``: the caller's live inject grant for ``destination`` in ``task_id``
        is decided again with this request's method and path, counted and audited; the secret is
        decrypted for the proxy to inject (the agent never receives it)."""
        validate_id(task_id, "tsk", "Tether-Task")
        now = self._clock.now()
        use = await self._storage.inject_grant_for_use(task_id, destination, now, jkt=caller.jkt)
        if use is None or use.grant.agent_id != caller.agent.id:
            task = await self._storage.get_task(task_id)
            if task is None or task.agent_id != caller.agent.id:
                raise NotFoundError(f"no task {task_id}")
            status = task.effective_status(now)
            why = (
                f"task is {status.value}"
                if status is not TaskStatus.ACTIVE
                else (f"no usable inject grant for destination {destination!r} in this task")
            )
            raise await self._refuse(caller.agent.id, f"destination:{destination}", task, why, caller=caller)
        if (
            use.destination is None
            or use.destination.secret != use.grant.secret
            or not use.destination.permits(method, path)
        ):
            why = (
                "the destination was removed"
                if use.destination is None
                else "the destination was changed to inject another secret"
                if use.destination.secret != use.grant.secret
                else f"{method} {path[:100]} is outside the methods and path prefixes of {destination!r}"
            )
            raise await self._refuse(
                caller.agent.id, f"destination:{destination}", use.task, why, caller=caller
            )
        grant = await self._use(caller, use, now, method=method, path=path)
        assert use.secret is not None  # checked by _use
        _, value = await self._reveal(use.secret.path, use.value)
        return EgressAuthorization(grant=grant, task=use.task, destination=use.destination, secret=value)

    async def _use(
        self, caller: AgentCaller, use: GrantInUse, now: datetime, *, method: str, path: str
    ) -> Grant:
        """The part of every activation: check, decide, count, record. Returns the counted grant."""
        agent_id = caller.agent.id
        grant, task = use.grant, use.task
        resource_label = f"secret:{grant.secret}" if grant.secret else f"destination:{grant.destination}"
        data = {"grant_id": grant.id, "method": method[:16], "path": path[:200]}
        why = self._unusable(grant, task, caller, now)
        if why is None and use.secret is None:
            why = "the secret was deleted"
        if why is not None:
            raise await self._refuse(agent_id, resource_label, task, why, data=data, caller=caller)
        assert use.secret is not None
        resource = secret_entity(use.secret)
        context = decision_context(
            task,
            now,
            mode=self._policy_mode(grant.mode, grant.secret),
            destination=grant.destination or "",
            method=method,
            path=path,
            uses=grant.uses,
        )
        decision = await self._decide(
            "activate", agent_entity(caller.agent), resource, context, policy_version=use.policy_version
        )
        # An approval is for this use: this grant, this method and path.
        asked = {"grant_id": grant.id, "method": method, "path": path}
        decision, approval = await self._allowed_or_refuse(
            decision,
            task,
            "activate",
            resource,
            now,
            asked,
            agent_id=agent_id,
            label=resource_label,
            denied="policy denies this use",
            data=data,
            caller=caller,
        )
        # One write: the event, the use count and the proof's single use commit together.
        effects: list[Effect] = [ConsumeGrantUse(grant.id, task.id, now)]
        if caller.replay is not None:
            effects.insert(0, caller.replay)
        try:
            _, results = await self._audit.record_with(
                "grant.activate",
                Actor.agent(agent_id),
                effects=effects,
                resource=resource_label,
                task_id=task.id,
                chain=task.chain,
                decision=_summary(decision),
                data={
                    **data,
                    "mode": grant.mode.value,
                    **({"approval_id": approval.id} if approval is not None else {}),
                },
            )
        except EffectFailedError as exc:
            if any(isinstance(effect, RememberJti) for effect in exc.failed.values()):
                raise await self._replayed(caller, f"{method} {path}") from None
            # Lost a race: the last use went to someone else, or the grant/task ended meanwhile.
            raise await self._refuse(
                agent_id,
                resource_label,
                task,
                "grant is used up, revoked or expired",
                data=data,
                caller=caller,
            ) from None
        uses = int(results[-1])  # type: ignore[call-overload]
        return replace(grant, uses=uses)

    @staticmethod
    def _unusable(grant: Grant, task: Task, caller: AgentCaller, now: datetime) -> str | None:
        status = task.effective_status(now)
        if status is not TaskStatus.ACTIVE:
            return f"task is {status.value}"
        why = grant.unusable(now)
        if why is not None:
            return why
        if grant.jkt != caller.jkt:
            return "grant is bound to another key"
        return None

    async def _reveal(self, path: str, stored: Any) -> tuple[int, bytes]:
        if stored is None:
            return await self._secrets.read_value(path)
        return await self._secrets.decrypt_stored(stored)

    async def _dynamic(
        self, caller: AgentCaller, grant: Grant, task: Task, path: str, now: datetime
    ) -> Activation:
        engine = self._engines.for_secret(path)
        lease_id = new_id("lse")
        request = LeaseRequest(
            lease_id=lease_id,
            task_id=task.id,
            grant_id=grant.id,
            agent_id=caller.agent.id,
            secret=path,
            now=now,
            expires_at=grant.expires_at,
        )
        # The lease is recorded before the engine issues anything: a task that ends meanwhile revokes
        # it with everything else, and a crash mid-issue leaves a lease the sweeper revokes (engines
        # name what they issue after request.lease_id, so they can revoke without a handle).
        lease = Lease(
            id=lease_id,
            grant_id=grant.id,
            task_id=task.id,
            engine=engine.name,
            handle={},
            created_at=now,
            expires_at=grant.expires_at,
        )
        try:
            await self._storage.create_lease(lease)
        except ConflictError:
            raise await self._refuse(
                caller.agent.id, f"secret:{path}", task, "the task ended", caller=None
            ) from None
        issued = await self._engines.issue(engine, request)
        lease = replace(lease, handle=dict(issued.handle), expires_at=issued.expires_at)
        if not await self._storage.set_lease_handle(lease.id, lease.handle, lease.expires_at):
            with contextlib.suppress(TetherError):  # the sweeper retries if this fails
                await self._engines.revoke(lease)
                await self._storage.mark_lease_revoked(lease.id, self._clock.now())
            raise await self._refuse(caller.agent.id, f"secret:{path}", task, "the task ended")
        return Activation(grant=grant, credential=issued.credential, expires_at=issued.expires_at)

    # -- approvals -----------------------------------------------------------------------------
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
