"""Issuance: a key-bound, task-scoped grant to use one secret (or destination) in one mode, decided
with ``issue`` against the task as it is now. A grant carries no secret material; every use of it is
decided again (:mod:`tether.broker.activation`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from tether.audit import Actor, AuditLog
from tether.broker._decisions import DecisionPoint, agent_entity, secret_entity, summary
from tether.broker.auth import AgentCaller
from tether.clock import Clock
from tether.domain.commands import IssueGrant
from tether.domain.decision import Decision
from tether.domain.destinations import Destination
from tether.domain.inputs import DecisionInputs
from tether.domain.secrets import SecretRecord
from tether.domain.tasks import Approval, Grant, GrantMode, Task, TaskStatus, decision_context, new_id
from tether.errors import ConflictError, InvalidInputError, NotFoundError
from tether.store.base import CreateGrant, Effect, EffectFailedError, RememberJti, Storage

__all__ = ["GrantOutcome", "GrantService", "PlannedEvent"]

POLICY_DENIES = "policy denies this grant"


@dataclass(frozen=True, slots=True)
class GrantOutcome:
    """What became of one grant asked for with a new task: issued, denied (with the decision and
    why), or waiting for an approval (``approval_id``)."""

    index: int
    request: IssueGrant
    status: Literal["issued", "denied", "approval_required"]
    grant: Grant | None = None
    decision: Decision | None = None
    reason: str = ""
    approval_id: str | None = None


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """An audit event (and the store changes riding with it) that a request is about to record."""

    kind: str
    fields: Mapping[str, Any]
    effects: tuple[Effect, ...] = ()
    approval: Approval | None = field(default=None, repr=False)  # stored once its event is


class GrantService:
    """Issuing grants in a task."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock, decisions: DecisionPoint) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._decisions = decisions

    async def issue(self, caller: AgentCaller, task_id: str, command: IssueGrant) -> Grant:
        """Issue a grant in the caller's task (``issue`` is decided). No secret material.

        A proof whose single use the caller deferred (``caller.replay``) is recorded with the
        grant's event, or with the refusal."""
        return await self._issue(caller, task_id, command)

    async def _issue(self, caller: AgentCaller, task_id: str, command: IssueGrant) -> Grant:
        """Issue a grant in the caller's task (``issue`` is decided). No secret material."""
        now = self._clock.now()
        task = await self._decisions.agent_task(caller, task_id)
        agent_id = caller.agent.id
        mode = command.mode
        destination_name = command.destination
        status = task.effective_status(now)
        if status is not TaskStatus.ACTIVE:
            raise await self._decisions.refuse(
                agent_id, command.label, task, f"task is {status.value}", caller=caller
            )
        secret_path = await self._grant_target(caller, task, command)
        if secret_path is None:
            raise InvalidInputError(f"a {mode.value} grant names a secret", field="secret")
        if secret_path not in task.intent.secrets:
            raise await self._decisions.refuse(
                agent_id,
                f"secret:{secret_path[:256]}",
                task,
                "secret is not declared by the task",
                caller=caller,
            )
        record = await self._storage.get_secret(secret_path)
        if record is None:
            raise NotFoundError(f"no secret {secret_path!r}")
        grant = self.new_grant(caller, task, command, secret_path, now)
        resource = secret_entity(record)
        context = decision_context(
            task,
            now,
            mode=self._decisions.policy_mode(mode, secret_path),
            destination=destination_name or "",
            method="POST",
            path=f"/v1/tasks/{task.id}/grants",
        )
        decision, inputs = await self._decisions.decide_recorded(
            "issue", agent_entity(caller.agent), resource, context
        )
        # An approval is for this grant as asked: its mode, destination, lifetime and use budget.
        decision, approval = await self._decisions.allowed_or_refuse(
            decision,
            task,
            "issue",
            resource,
            now,
            command.asked(),
            agent_id=agent_id,
            label=f"secret:{secret_path}",
            denied=POLICY_DENIES,
            caller=caller,
            inputs=inputs,
        )
        if approval is not None:
            inputs = inputs.approved()
        # One write: the event, the grant and the proof's single use commit together.
        event = self.issue_event(task, grant, decision, None if approval is None else approval.id, inputs)
        replay: tuple[Effect, ...] = () if caller.replay is None else (caller.replay,)
        try:
            await self._audit.record_with(
                event.kind, Actor.agent(agent_id), effects=(*replay, *event.effects), **event.fields
            )
        except EffectFailedError as exc:
            if any(isinstance(effect, RememberJti) for effect in exc.failed.values()):
                raise await self._decisions.replayed(caller, f"POST /v1/tasks/{task.id}/grants") from None
            raise ConflictError(f"task {task.id} is not active") from None
        self._decisions.inputs_recorded(inputs)
        return grant

    def issue_event(
        self,
        task: Task,
        grant: Grant,
        decision: Decision,
        approval_id: str | None,
        inputs: DecisionInputs | None = None,
    ) -> PlannedEvent:
        """The ``grant.issue`` event, with the grant it stores (and the decision's inputs)."""
        return PlannedEvent(
            "grant.issue",
            {
                "resource": f"secret:{grant.secret}",
                "task_id": task.id,
                "chain": task.chain,
                "decision": summary(decision),
                "data": {
                    **self.issue_data(grant, approval_id),
                    **({} if inputs is None else inputs.event_data()),
                },
            },
            (*self._decisions.input_effects(inputs), CreateGrant(grant, grant.created_at)),
        )

    @staticmethod
    def new_grant(caller: AgentCaller, task: Task, command: IssueGrant, secret: str, now: datetime) -> Grant:
        """The grant ``command`` asks for in ``task``: never beyond the task's lifetime."""
        remaining = task.remaining_seconds(now)
        ttl = remaining if command.ttl_seconds is None else min(command.ttl_seconds, remaining)
        return Grant(
            id=new_id("grt"),
            task_id=task.id,
            agent_id=caller.agent.id,
            jkt=caller.jkt,
            secret=secret,
            destination=command.destination,
            mode=command.mode,
            created_at=now,
            expires_at=min(now + timedelta(seconds=ttl), task.expires_at),
            max_uses=command.max_uses,
        )

    @staticmethod
    def issue_data(grant: Grant, approval_id: str | None) -> dict[str, object]:
        """The ``grant.issue`` event's data."""
        return {
            "grant_id": grant.id,
            "mode": grant.mode.value,
            "destination": grant.destination or "",
            "expires_at": grant.expires_at.isoformat(),
            "max_uses": grant.max_uses or 0,
            **({"approval_id": approval_id} if approval_id is not None else {}),
        }

    async def _grant_target(self, caller: AgentCaller, task: Task, command: IssueGrant) -> str | None:
        """The secret a grant is for: named, or (inject) the one its destination injects."""
        mode, secret, destination_name = command.mode, command.secret, command.destination
        if destination_name is None:
            if mode is GrantMode.INJECT:
                raise InvalidInputError(
                    "an inject grant names the destination to inject into", field="destination"
                )
            return secret
        if destination_name not in task.intent.destinations:
            raise await self._decisions.refuse(
                caller.agent.id,
                f"destination:{destination_name[:64]}",
                task,
                f"destination {destination_name[:64]!r} is not declared by the task",
                caller=caller,
            )
        destination = await self._storage.get_destination(destination_name)
        if destination is None:
            raise NotFoundError(f"no destination {destination_name!r}")
        if mode is not GrantMode.INJECT:
            return secret
        if secret is not None and secret != destination.secret:
            raise InvalidInputError("the destination injects a different secret", field="secret")
        return destination.secret

    # -- with a new task ---------------------------------------------------------------------------
    def targets(
        self, task: Task, commands: Sequence[IssueGrant], destinations: Mapping[str, Destination]
    ) -> list[str | None]:
        """The secret each grant asked for with a new ``task`` is for (None: it names a destination
        the task does not declare, a refusal). Ill-formed requests are refused with a 422 naming the
        item, before anything is decided or written."""
        targets: list[str | None] = []
        for index, command in enumerate(commands):
            try:
                targets.append(self._target_of(task, command, destinations))
            except InvalidInputError as exc:
                raise InvalidInputError(
                    f"grants.{index}: {exc}", field=f"grants.{index}.{exc.field or 'secret'}"
                ) from None
        return targets

    @staticmethod
    def _target_of(task: Task, command: IssueGrant, destinations: Mapping[str, Destination]) -> str | None:
        mode, secret, name = command.mode, command.secret, command.destination
        if name is None:
            if mode is GrantMode.INJECT:
                raise InvalidInputError(
                    "an inject grant names the destination to inject into", field="destination"
                )
        elif name not in task.intent.destinations:
            return None
        elif mode is GrantMode.INJECT:
            injects = destinations[name].secret
            if secret is not None and secret != injects:
                raise InvalidInputError("the destination injects a different secret", field="secret")
            secret = injects
        if secret is None:
            raise InvalidInputError(f"a {mode.value} grant names a secret", field="secret")
        return secret

    async def decide_for_new_task(
        self,
        caller: AgentCaller,
        task: Task,
        commands: Sequence[IssueGrant],
        targets: Sequence[str | None],
        records: Mapping[str, SecretRecord],
        policy_version: int | None,
        now: datetime,
    ) -> list[tuple[GrantOutcome, list[PlannedEvent]]]:
        """Decide each grant asked for with a new, active ``task`` on its own, as :meth:`issue`
        would, and say what to record for it. A new task has no approvals yet, so none is looked
        up: a grant that only lacks one opens one."""
        agent = agent_entity(caller.agent)
        planned: list[tuple[GrantOutcome, list[PlannedEvent]]] = []
        for index, (command, secret) in enumerate(zip(commands, targets, strict=True)):
            if secret is None or secret not in task.intent.secrets:
                label = command.label if secret is None else f"secret:{secret[:256]}"
                why = (
                    f"destination {str(command.destination)[:64]!r} is not declared by the task"
                    if secret is None
                    else "secret is not declared by the task"
                )
                decision = Decision.deny(errors=(why,))
                outcome = GrantOutcome(index, command, "denied", decision=decision, reason=why)
                event = self._decisions.refusal_event(label, task, why, decision)
                planned.append((outcome, [PlannedEvent("decision", event)]))
                continue
            resource = secret_entity(records[secret])
            context = decision_context(
                task,
                now,
                mode=self._decisions.policy_mode(command.mode, secret),
                destination=command.destination or "",
                method="POST",
                path="/v1/tasks",
            )
            decision, inputs = await self._decisions.decide_recorded(
                "issue", agent, resource, context, policy_version=policy_version
            )
            if decision.allowed:
                grant = self.new_grant(caller, task, command, secret, now)
                outcome = GrantOutcome(index, command, "issued", grant=grant, decision=decision)
                planned.append((outcome, [self.issue_event(task, grant, decision, None, inputs)]))
                continue
            events: list[PlannedEvent] = []
            approval = None
            if decision.missing == ("approval",):
                approval = self._decisions.new_approval(
                    task, "issue", resource, decision, now, request=command.asked()
                )
                events.append(
                    PlannedEvent(
                        "approval.request",
                        self._decisions.approval_event(approval, task, decision),
                        approval=approval,
                    )
                )
            why = POLICY_DENIES if approval is None else "approval required"
            status: Literal["denied", "approval_required"] = (
                "denied" if approval is None else "approval_required"
            )
            refusal = self._decisions.refusal_event(
                f"secret:{secret}", task, why, decision, inputs.event_data()
            )
            events.append(PlannedEvent("decision", refusal, self._decisions.input_effects(inputs)))
            outcome = GrantOutcome(
                index,
                command,
                status,
                decision=decision,
                reason=why,
                approval_id=None if approval is None else approval.id,
            )
            planned.append((outcome, events))
        return planned
