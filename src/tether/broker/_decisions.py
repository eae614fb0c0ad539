"""The plumbing every step of the governed path shares: decide, derive approvals, refuse.

Every decision fails closed (a policy error is a deny); every refusal is recorded (a ``decision``
event) before it is raised. Approvals are derived from policy: when a request is denied but would
be allowed with ``context.approval == true``, an approval bound to (task, context hash, action,
resource, request) is opened and the denial names it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar

from tether.audit import Actor, AuditLog, DecisionSummary
from tether.broker.auth import AgentCaller
from tether.broker.policies import PolicyService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.agents import AgentRecord
from tether.domain.decision import Decision
from tether.domain.inputs import DecisionInputs, SnapshotMemo, decision_inputs
from tether.domain.secrets import SecretRecord
from tether.domain.tasks import Approval, ApprovalStatus, GrantMode, Task, new_id, request_hash, validate_id
from tether.engines import EngineRegistry
from tether.errors import DeniedError, NotFoundError, TetherError
from tether.policy import DecisionRequest, Entity
from tether.store.base import Effect, EffectFailedError, PutSnapshots, RememberJti, Storage
from tether.tracing import inner_span

__all__ = [
    "MAX_LIST_LIMIT",
    "MAX_REASON_CHARS",
    "ApprovalNotifier",
    "DecisionPoint",
    "RefuseReplay",
    "agent_entity",
    "decision_data",
    "secret_entity",
    "summary",
]

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 1000
MAX_REASON_CHARS = 500

#: Records a replayed (deferred) DPoP proof and returns the error to raise (``AuthService.refuse_replay``).
RefuseReplay = Callable[[AgentCaller, str], Awaitable[TetherError]]


class ApprovalNotifier(Protocol):
    """Told of each new approval request (the approval webhook)."""

    def notify(self, approval: Approval, task: Task) -> None: ...


#: Entities remembered per kind, per process (see :func:`agent_entity`).
ENTITIES_REMEMBERED = 4096
_RecordT = TypeVar("_RecordT")


class _EntityMemo(Generic[_RecordT]):
    """The entity of a record, remembered by the record object itself (not an equal one): the
    store hands out the very same immutable record for an unchanged row (``tether.store._parsed``),
    so the entity and its Cedar JSON are built once per row, and a row that changed in any column
    is a new record, hence a new entity. The record is held with its entity, so its ``id`` cannot
    be reused while remembered."""

    def __init__(self, build: Callable[[_RecordT], Entity]) -> None:
        self._build = build
        self._known: dict[int, tuple[_RecordT, Entity]] = {}

    def __call__(self, record: _RecordT) -> Entity:
        known = self._known.get(id(record))
        if known is not None and known[0] is record:
            return known[1]
        entity = self._build(record)
        if len(self._known) >= ENTITIES_REMEMBERED:
            self._known.clear()
        self._known[id(record)] = (record, entity)
        return entity


def _agent_entity(agent: AgentRecord) -> Entity:
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


def _secret_entity(record: SecretRecord) -> Entity:
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


#: The Cedar entity of an agent (its decision-relevant attributes), built once per stored row.
agent_entity = _EntityMemo(_agent_entity)
#: The Cedar entity of a secret (its metadata), built once per stored row.
secret_entity = _EntityMemo(_secret_entity)


def summary(decision: Decision) -> DecisionSummary:
    return DecisionSummary(allowed=decision.allowed, policies=decision.policies, missing=decision.missing)


def decision_data(decision: Decision) -> dict[str, Any]:
    return {"errors": [error[:300] for error in decision.errors[:5]]} if decision.errors else {}


def approval_message(approval: Approval | None, otherwise: str) -> str:
    if approval is None:
        return otherwise
    if approval.status is ApprovalStatus.DENIED:
        return f"an approver denied this ({approval.decided_by}: {approval.reason[:200]})"
    return "approval required"


class DecisionPoint:
    """Policy decisions, derived approvals and recorded refusals, for every service of the path."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        policies: PolicyService,
        engines: EngineRegistry,
        *,
        refuse_replay: RefuseReplay,
        notifier: ApprovalNotifier | None = None,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policies = policies
        self._engines = engines
        self._refuse_replay = refuse_replay
        self.notifier = notifier
        self.snapshots = SnapshotMemo()

    async def decide(
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
        decision, _ = await self._decide(action, principal, resource, context, policy_version)
        return decision

    async def decide_recorded(
        self,
        action: str,
        principal: Entity,
        resource: Entity,
        context: dict[str, Any],
        *,
        policy_version: int | Literal["read"] | None = "read",
    ) -> tuple[Decision, DecisionInputs]:
        """:meth:`decide`, and the inputs its event records (so that policy replay can make it
        again): snapshots by hash, the per-use context fields and the policy version that decided."""
        decision, version = await self._decide(action, principal, resource, context, policy_version)
        inputs = decision_inputs(
            self.snapshots,
            action,
            (principal.type, principal.id, principal.attributes),
            (resource.type, resource.id, resource.attributes),
            context,
            version,
        )
        return decision, inputs

    @staticmethod
    def input_effects(inputs: DecisionInputs | None) -> tuple[Effect, ...]:
        """The store change that writes the snapshots ``inputs`` names and may not be stored yet."""
        if inputs is None or not inputs.snapshots:
            return ()
        return (PutSnapshots(tuple((s.hash, s.kind, s.body) for s in inputs.snapshots)),)

    def effects_recorded(self, effects: Sequence[Effect]) -> None:
        """An event with ``effects`` committed: the snapshots they stored are stored."""
        for effect in effects:
            if isinstance(effect, PutSnapshots):
                self.snapshots.stored_hashes(snapshot[0] for snapshot in effect.snapshots)

    def inputs_recorded(self, inputs: DecisionInputs | None) -> None:
        """The event naming ``inputs`` committed: its snapshots are stored."""
        if inputs is not None and inputs.snapshots:
            self.snapshots.stored(inputs.snapshots)

    async def _decide(
        self,
        action: str,
        principal: Entity,
        resource: Entity,
        context: dict[str, Any],
        policy_version: int | Literal["read"] | None,
    ) -> tuple[Decision, int | None]:
        version = None
        try:
            if policy_version == "read":
                version = await self._policies.active_version()
            else:
                version = policy_version
            compiled = None if version is None else await self._policies.compiled(version)
            if compiled is None:
                return Decision.deny(errors=("no policy set is deployed (default deny)",)), None
            request = DecisionRequest(principal=principal, action=action, resource=resource, context=context)
            with inner_span(
                "tether.decide", {"tether.action": action, "tether.resource_type": resource.type}
            ) as span:
                # The context was built by decision_context; an identical input may be answered from
                # the set's memory of its own answers (pure; see CompiledPolicySet.decide).
                decision = compiled.decide(request, trusted_context=True, remember=True)
                if span is not None:
                    span.set_attribute("tether.allowed", decision.allowed)
                    span.set_attribute("tether.policies", ",".join(decision.policies)[:512])
        except TetherError:
            raise
        except Exception as exc:
            log.exception("policy decision failed")
            return Decision.deny(errors=(f"policy decision failed: {type(exc).__name__}",)), version
        return decision, version

    async def active_policy_version(self) -> int | None:
        """The active policy version, for a request that decides several times against one set."""
        return await self._policies.active_version()

    def policy_mode(self, mode: GrantMode, secret: str | None) -> str:
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

    async def with_approval(
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
        return decision, await self.request_approval(task, action, resource, decision, now, request=request)

    async def allowed_or_refuse(
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
        inputs: DecisionInputs | None = None,
    ) -> tuple[Decision, Approval | None]:
        """The decision once approvals are taken into account (and the approval that allows it, if
        any); a refusal (recorded, naming the approval it opened or the denial that stands, with
        the decision's ``inputs``) if it is still a deny."""
        decision, approval = await self.with_approval(decision, task, action, resource, now, asked)
        if decision.allowed:
            return decision, approval
        raise await self.refuse(
            agent_id,
            label,
            task,
            approval_message(approval, denied),
            decision=decision,
            approval=approval,
            data=data,
            caller=caller,
            inputs=inputs,
        )

    def new_approval(
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
        """A pending approval for ``action`` on ``resource`` in ``task`` as it is now (not stored)."""
        return Approval(
            id=approval_id or new_id("apr"),
            task_id=task.id,
            agent_id=task.agent_id,
            action=action,
            resource=f"{resource.type}::{resource.id}",
            context_hash=task.context_hash,
            status=ApprovalStatus.PENDING,
            policies=decision.policies,
            requested_at=now,
            expires_at=now + timedelta(seconds=self._settings.approval_ttl_seconds),
            request=dict(request or {}),
        )

    def approval_event(self, approval: Approval, task: Task, decision: Decision) -> dict[str, Any]:
        """The ``approval.request`` event's fields (for :meth:`AuditLog.record`)."""
        return {
            "resource": f"approval:{approval.id}",
            "task_id": task.id,
            "chain": task.chain,
            "decision": summary(decision),
            "data": {
                "action": approval.action,
                "target": approval.resource[:400],
                "context_hash": task.context_hash,
                "request": dict(approval.request),
            },
        }

    async def store_approval(self, approval: Approval, task: Task, now: datetime) -> Approval:
        """Store a recorded approval request (or get the equal one stored first); notify."""
        stored = await self._storage.open_approval(approval, now)
        if stored.id == approval.id and self.notifier is not None:
            self.notifier.notify(stored, task)
        return stored

    async def request_approval(
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
        if approval_id is None:
            # Asking again while a request is pending, or after a denial, gets that same answer.
            existing = await self._storage.find_approval(
                task.id,
                action,
                f"{resource.type}::{resource.id}",
                task.context_hash,
                now,
                statuses=(ApprovalStatus.PENDING.value, ApprovalStatus.DENIED.value),
                request_hash=request_hash(dict(request or {})),
            )
            if existing is not None:
                return existing
        approval = self.new_approval(task, action, resource, decision, now, approval_id, request=request)
        await self._audit.record(
            "approval.request", Actor.agent(task.agent_id), **self.approval_event(approval, task, decision)
        )
        return await self.store_approval(approval, task, now)

    async def spend_proof(self, replay: RememberJti) -> None:
        """Record a deferred proof's single use on its own (for a request that wrote nothing). A
        proof already recorded stays recorded; a store failure leaves the request's error as the
        answer (it changed nothing)."""
        with contextlib.suppress(TetherError):
            await self._storage.remember_jti(replay.key, expires_at=replay.expires_at, now=replay.now)

    async def replayed(self, caller: AgentCaller, context: str) -> TetherError:
        return await self._refuse_replay(caller, context)

    def refusal_event(
        self,
        resource: str,
        task: Task | None,
        message: str,
        decision: Decision,
        data: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A refusal's ``decision`` event fields (for :meth:`AuditLog.record`)."""
        return {
            "resource": resource,
            "task_id": None if task is None else task.id,
            "chain": () if task is None else task.chain,
            "decision": summary(decision),
            "reason": message[:MAX_REASON_CHARS],
            "data": {**decision_data(decision), **(data or {})},
        }

    async def refuse(
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
        inputs: DecisionInputs | None = None,
    ) -> TetherError:
        """Record a denial (a ``decision`` event, with the policy decision's ``inputs`` if it was
        one) and return the error to raise. A caller whose proof's single use is still to be
        recorded has it recorded with the denial."""
        if decision is None:  # not a policy decision: the task or grant cannot be used
            decision = Decision.deny(errors=(message,))
        replay = None if caller is None else caller.replay
        if inputs is not None:
            data = {**(data or {}), **inputs.event_data()}
        try:
            await self._audit.record(
                "decision",
                Actor.agent(agent_id),
                **self.refusal_event(resource, task, message, decision, data),
                effects=(*self.input_effects(inputs), *(() if replay is None else (replay,))),
            )
        except EffectFailedError:
            assert caller is not None
            return await self.replayed(caller, resource)
        self.inputs_recorded(inputs)
        return DeniedError(message, decision=decision, approval_id=None if approval is None else approval.id)

    async def agent_task(self, caller: AgentCaller, task_id: str) -> Task:
        """The caller's own task; another agent's task is 'not found' (no probing)."""
        validate_id(task_id, "tsk", "task_id")
        task = await self._storage.get_task(task_id)
        if task is None or task.agent_id != caller.agent.id:
            raise NotFoundError(f"no task {task_id}")
        return task
