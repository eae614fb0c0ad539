"""Activation: every use of a grant is decided again, with the context as it is now, counted
atomically and recorded before anything is handed over (a value, a fresh credential, or — for
``inject`` — the secret the egress proxy adds to the outbound request)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from tether.audit import Actor, AuditLog
from tether.broker._decisions import DecisionPoint, agent_entity, secret_entity, summary
from tether.broker.auth import AgentCaller
from tether.broker.secrets import SecretService
from tether.clock import Clock
from tether.domain.destinations import Destination
from tether.domain.tasks import (
    Grant,
    GrantMode,
    Lease,
    Task,
    TaskStatus,
    decision_context,
    new_id,
    validate_id,
)
from tether.engines import EngineRegistry, LeaseRequest
from tether.errors import ConflictError, InvalidInputError, NotFoundError, TetherError
from tether.store.base import ConsumeGrantUse, Effect, EffectFailedError, GrantInUse, RememberJti, Storage

__all__ = ["Activation", "ActivationService", "EgressAuthorization"]


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


class ActivationService:
    """Using grants: ``reveal`` and ``dynamic`` activations, and ``inject`` for the egress proxy."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        secrets: SecretService,
        engines: EngineRegistry,
        decisions: DecisionPoint,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._secrets = secrets
        self._engines = engines
        self._decisions = decisions

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
            raise await self._decisions.refuse(
                caller.agent.id, f"destination:{destination}", task, why, caller=caller
            )
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
            raise await self._decisions.refuse(
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
            raise await self._decisions.refuse(agent_id, resource_label, task, why, data=data, caller=caller)
        assert use.secret is not None
        resource = secret_entity(use.secret)
        context = decision_context(
            task,
            now,
            mode=self._decisions.policy_mode(grant.mode, grant.secret),
            destination=grant.destination or "",
            method=method,
            path=path,
            uses=grant.uses,
        )
        decision, inputs = await self._decisions.decide_recorded(
            "activate", agent_entity(caller.agent), resource, context, policy_version=use.policy_version
        )
        # An approval is for this use: this grant, this method and path.
        asked = {"grant_id": grant.id, "method": method, "path": path}
        decision, approval = await self._decisions.allowed_or_refuse(
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
            inputs=inputs,
        )
        if approval is not None:
            inputs = inputs.approved()
        # One write: the event, the use count and the proof's single use commit together.
        effects: list[Effect] = [
            *self._decisions.input_effects(inputs),
            ConsumeGrantUse(grant.id, task.id, now),
        ]
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
                decision=summary(decision),
                data={
                    **data,
                    "mode": grant.mode.value,
                    **({"approval_id": approval.id} if approval is not None else {}),
                    **inputs.event_data(),
                },
            )
        except EffectFailedError as exc:
            if any(isinstance(effect, RememberJti) for effect in exc.failed.values()):
                raise await self._decisions.replayed(caller, f"{method} {path}") from None
            # Lost a race: the last use went to someone else, or the grant/task ended meanwhile.
            raise await self._decisions.refuse(
                agent_id,
                resource_label,
                task,
                "grant is used up, revoked or expired",
                data=data,
                caller=caller,
            ) from None
        self._decisions.inputs_recorded(inputs)
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
            raise await self._decisions.refuse(
                caller.agent.id, f"secret:{path}", task, "the task ended", caller=None
            ) from None
        try:
            issued = await self._engines.issue(engine, request)
        except TetherError:
            # Nothing was handed out: withdraw what the engine may have made at once (engines can
            # revoke by lease id alone) rather than leave the lease live until the sweeper's pass.
            with contextlib.suppress(TetherError):  # the sweeper retries if this fails
                await self._engines.revoke(lease)
                await self._storage.mark_lease_revoked(lease.id, self._clock.now())
            raise
        lease = replace(lease, handle=dict(issued.handle), expires_at=issued.expires_at)
        if not await self._storage.set_lease_handle(lease.id, lease.handle, lease.expires_at):
            with contextlib.suppress(TetherError):  # the sweeper retries if this fails
                await self._engines.revoke(lease)
                await self._storage.mark_lease_revoked(lease.id, self._clock.now())
            raise await self._decisions.refuse(caller.agent.id, f"secret:{path}", task, "the task ended")
        return Activation(grant=grant, credential=issued.credential, expires_at=issued.expires_at)
