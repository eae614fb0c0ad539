"""Issuance: a key-bound, task-scoped grant to use one secret (or destination) in one mode, decided
with ``issue`` against the task as it is now. A grant carries no secret material; every use of it is
decided again (:mod:`tether.broker.activation`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from tether.audit import Actor, AuditLog
from tether.broker._decisions import DecisionPoint, agent_entity, secret_entity, summary
from tether.broker.auth import AgentCaller
from tether.clock import Clock
from tether.domain.commands import IssueGrant
from tether.domain.tasks import Grant, GrantMode, Task, TaskStatus, decision_context, new_id
from tether.errors import InvalidInputError, NotFoundError
from tether.store.base import Storage

__all__ = ["GrantService"]


class GrantService:
    """Issuing grants in a task."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock, decisions: DecisionPoint) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._decisions = decisions

    async def issue(self, caller: AgentCaller, task_id: str, command: IssueGrant) -> Grant:
        """Issue a grant in the caller's task (``issue`` is decided). No secret material."""
        now = self._clock.now()
        task = await self._decisions.agent_task(caller, task_id)
        agent_id = caller.agent.id
        mode = command.mode
        destination_name = command.destination
        status = task.effective_status(now)
        if status is not TaskStatus.ACTIVE:
            raise await self._decisions.refuse(agent_id, command.label, task, f"task is {status.value}")
        secret_path = await self._grant_target(caller, task, command)
        if secret_path is None:
            raise InvalidInputError(f"a {mode.value} grant names a secret", field="secret")
        if secret_path not in task.intent.secrets:
            raise await self._decisions.refuse(
                agent_id, f"secret:{secret_path[:256]}", task, "secret is not declared by the task"
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
        decision = await self._decisions.decide("issue", agent_entity(caller.agent), resource, context)
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
            denied="policy denies this grant",
        )
        await self._audit.record(
            "grant.issue",
            Actor.agent(agent_id),
            resource=f"secret:{secret_path}",
            task_id=task.id,
            chain=task.chain,
            decision=summary(decision),
            data=self.issue_data(grant, None if approval is None else approval.id),
        )
        await self._storage.create_grant(grant, now=now)
        return grant

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
            )
        destination = await self._storage.get_destination(destination_name)
        if destination is None:
            raise NotFoundError(f"no destination {destination_name!r}")
        if mode is not GrantMode.INJECT:
            return secret
        if secret is not None and secret != destination.secret:
            raise InvalidInputError("the destination injects a different secret", field="secret")
        return destination.secret
