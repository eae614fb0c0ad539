"""Ending and revoking: tasks (with their sub-tasks, grants and leases), every task of an agent,
every grant of a secret, and the sweep that ends expired tasks.

Revoking only ever narrows access, so what a revocation did stands even if recording its aftermath
fails; what it is about to do is recorded first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from tether.audit import Actor, AuditLog
from tether.broker._decisions import MAX_LIST_LIMIT, MAX_REASON_CHARS
from tether.broker.access import authorize, operator_actor
from tether.clock import Clock
from tether.domain.agents import AgentRecord
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import validate_path
from tether.domain.tasks import LIVE_STATUSES, Ended, Lease, Task, TaskStatus, validate_id
from tether.engines import EngineRegistry
from tether.engines.base import INCOMPLETE_LEASE_SECONDS
from tether.errors import ConflictError, InvalidInputError, NotFoundError, SealedError, TetherError
from tether.store.base import Storage

__all__ = ["RevocationService", "SecretRevocation"]

log = logging.getLogger(__name__)

#: Engine revocations run at once when a task ends (an engine bounds its own connections).
LEASE_REVOCATIONS_AT_ONCE = 4


class SecretRevocation:
    """Revoking every live grant of one secret (an operator's emergency revocation, or a deletion)."""

    def __init__(self, storage: Storage, audit: AuditLog, clock: Clock) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock

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
        """What a secret's deletion revokes (the deletion itself is already recorded)."""
        return await self.revoke_secret(actor, path, reason, announce=False)


class RevocationService:
    """Ending tasks and revoking what was issued for them, on request and on expiry."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        engines: EngineRegistry,
        secrets: SecretRevocation,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._engines = engines
        self._secrets = secrets

    async def end(self, actor: Actor, task: Task, status: TaskStatus, reason: str) -> Ended:
        """End a live task: it, its sub-tasks, their grants and leases, in one transaction."""
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
        await self.after_end(ended, actor, reason, chain=task.chain)
        return ended

    async def after_end(self, ended: Ended, actor: Actor, reason: str, *, chain: Sequence[str] = ()) -> None:
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
        """Ask each lease's engine to revoke it, up to :data:`LEASE_REVOCATIONS_AT_ONCE` at a time
        (a task holding many database roles ends in a fraction of the time); failures stay pending
        for the sweeper."""
        if not leases:
            return 0
        slots = asyncio.Semaphore(LEASE_REVOCATIONS_AT_ONCE)

        async def revoke(lease: Lease) -> bool:
            async with slots:
                try:
                    await self._engines.revoke(lease)
                    await self._storage.mark_lease_revoked(lease.id, self._clock.now())
                except TetherError as exc:
                    log.warning(
                        "lease %s: engine revocation failed (%s); will retry", lease.id, type(exc).__name__
                    )
                    return False
                return True

        return sum(await asyncio.gather(*(revoke(lease) for lease in leases)))

    async def revoke_by_operator(self, actor: OperatorRecord, task_id: str, reason: str = "") -> Ended:
        validate_id(task_id, "tsk", "task_id")
        await authorize(self._audit, actor, Permission.TASK_REVOKE, f"task:{task_id}")
        task = await self._storage.get_task(task_id)
        if task is None:
            raise NotFoundError(f"no task {task_id}")
        return await self.end(
            operator_actor(actor), task, TaskStatus.REVOKED, reason or "revoked by operator"
        )

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
        return await self._secrets.revoke_secret(operator_actor(actor), secret, reason)

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
        await self.after_end(ended, actor, reason)
        return ended

    async def revoke_secret(self, actor: Actor, path: str, reason: str, *, announce: bool = True) -> Ended:
        return await self._secrets.revoke_secret(actor, path, reason, announce=announce)

    async def secret_deleted(self, actor: Actor, path: str, reason: str) -> Ended:
        return await self._secrets.secret_deleted(actor, path, reason)

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
        # Leases whose credential was never handed out (the engine failed, or a node stopped mid-issue).
        incomplete = await self._storage.incomplete_leases(now - timedelta(seconds=INCOMPLETE_LEASE_SECONDS))
        await self.revoke_leases(incomplete)
        # What engines issued that no live lease covers (e.g. a node stopped mid-issue).
        for lease_id in await self._engines.sweep_orphans(self._storage.get_leases, now):
            await self._storage.mark_lease_revoked(lease_id, self._clock.now())
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
