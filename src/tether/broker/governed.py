"""The governed path as one object (``Broker.tasks``): what the API, the CLI, the egress proxy and
the tests call. Each call goes to the service that does it (tasks, grants, activation, approvals,
revocation); this class holds no rules of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TypeVar

from tether.audit import Actor
from tether.broker._decisions import ApprovalNotifier, DecisionPoint
from tether.broker.activation import Activation, ActivationService, EgressAuthorization
from tether.broker.approvals import ApprovalService
from tether.broker.auth import AgentCaller
from tether.broker.context import ContextService
from tether.broker.delegation import DelegationService
from tether.broker.grants import GrantService
from tether.broker.revocation import RevocationService
from tether.broker.tasks import OpenedTask, TaskService
from tether.domain.agents import AgentRecord
from tether.domain.commands import Delegate, IssueGrant, OpenTask, UpdateTask
from tether.domain.operators import OperatorRecord
from tether.domain.tasks import Approval, Ended, Grant, Task
from tether.errors import TetherError

__all__ = ["GovernedPath"]

T = TypeVar("T")


class GovernedPath:
    """Tasks, grants, activation, approvals and revocation for one node."""

    def __init__(
        self,
        decisions: DecisionPoint,
        tasks: TaskService,
        delegation: DelegationService,
        context: ContextService,
        grants: GrantService,
        activation: ActivationService,
        approvals: ApprovalService,
        revocation: RevocationService,
    ) -> None:
        self._decisions = decisions
        self.task_service = tasks
        self.delegation_service = delegation
        self.context_service = context
        self.grant_service = grants
        self.activation_service = activation
        self.approval_service = approvals
        self.revocation_service = revocation

    async def _spending_proof(self, caller: AgentCaller, call: Awaitable[T]) -> T:
        """Run ``call`` for a caller who may have deferred its proof's single use: every answer,
        errors included, leaves the proof used. The services record it with their first write (the
        refusal or the effect itself); a request that failed before writing anything has it recorded
        here (a no-op if a write already did)."""
        try:
            return await call
        except TetherError:
            if caller.replay is not None:
                await self._decisions.spend_proof(caller.replay)
            raise

    @property
    def webhook(self) -> ApprovalNotifier | None:
        """What is told of new approval requests (the approval webhook), if anything."""
        return self._decisions.notifier

    # -- tasks -----------------------------------------------------------------------------------
    async def open(self, caller: AgentCaller, command: OpenTask) -> Task:
        """Open a task (see :meth:`open_with_grants` for the grants asked for with it)."""
        return (await self.open_with_grants(caller, command)).task

    async def open_with_grants(self, caller: AgentCaller, command: OpenTask) -> OpenedTask:
        """Open a task and decide each grant asked for with it, in one write."""
        return await self._spending_proof(caller, self.task_service.open(caller, command))

    async def delegate(self, caller: AgentCaller, task_id: str, command: Delegate) -> Task:
        return await self.delegation_service.delegate(caller, task_id, command)

    async def update(self, caller: AgentCaller, task_id: str, command: UpdateTask) -> tuple[Task, int]:
        return await self.context_service.update(caller, task_id, command)

    async def get_for_agent(self, caller: AgentCaller, task_id: str) -> Task:
        return await self.task_service.get_for_agent(caller, task_id)

    async def get_for_operator(self, actor: OperatorRecord, task_id: str) -> Task:
        return await self.task_service.get_for_operator(actor, task_id)

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
        return await self.task_service.list_for_operator(
            actor, agent_id=agent_id, statuses=statuses, root_id=root_id, after=after, limit=limit
        )

    async def tree(self, actor: OperatorRecord, task_id: str) -> list[Task]:
        return await self.task_service.tree(actor, task_id)

    async def grants_of(self, task: Task) -> list[Grant]:
        return await self.task_service.grants_of(task)

    async def end_by_agent(self, caller: AgentCaller, task_id: str, how: str, reason: str = "") -> Ended:
        return await self.task_service.end_by_agent(caller, task_id, how, reason)

    # -- grants and activation -------------------------------------------------------------------
    async def issue(self, caller: AgentCaller, task_id: str, command: IssueGrant) -> Grant:
        return await self._spending_proof(caller, self.grant_service.issue(caller, task_id, command))

    async def activate(self, caller: AgentCaller, grant_id: str, *, method: str, path: str) -> Activation:
        return await self._spending_proof(
            caller, self.activation_service.activate(caller, grant_id, method=method, path=path)
        )

    async def authorize_egress(
        self, caller: AgentCaller, task_id: str, destination: str, *, method: str, path: str
    ) -> EgressAuthorization:
        return await self.activation_service.authorize_egress(
            caller, task_id, destination, method=method, path=path
        )

    # -- approvals -------------------------------------------------------------------------------
    async def list_approvals(
        self,
        actor: OperatorRecord,
        *,
        statuses: Sequence[str] = (),
        after: str | None = None,
        limit: int = 100,
    ) -> list[Approval]:
        return await self.approval_service.list_approvals(actor, statuses=statuses, after=after, limit=limit)

    async def get_approval(self, actor: OperatorRecord, approval_id: str) -> Approval:
        return await self.approval_service.get_approval(actor, approval_id)

    async def decide_approval(
        self, actor: OperatorRecord, approval_id: str, *, approve: bool, reason: str
    ) -> tuple[Approval, Task | None]:
        return await self.approval_service.decide_approval(actor, approval_id, approve=approve, reason=reason)

    # -- revocation ------------------------------------------------------------------------------
    async def revoke_by_operator(self, actor: OperatorRecord, task_id: str, reason: str = "") -> Ended:
        return await self.revocation_service.revoke_by_operator(actor, task_id, reason)

    async def revoke(
        self,
        actor: OperatorRecord,
        *,
        task_id: str | None = None,
        agent: AgentRecord | None = None,
        secret: str | None = None,
        reason: str = "",
    ) -> Ended:
        return await self.revocation_service.revoke(
            actor, task_id=task_id, agent=agent, secret=secret, reason=reason
        )

    async def revoke_agent(self, actor: Actor, agent_id: str, reason: str) -> Ended:
        return await self.revocation_service.revoke_agent(actor, agent_id, reason)

    async def secret_deleted(self, actor: Actor, path: str, reason: str) -> Ended:
        return await self.revocation_service.secret_deleted(actor, path, reason)

    async def sweep(self) -> Ended:
        return await self.revocation_service.sweep()

    async def sweep_loop(self, interval_seconds: float) -> None:
        await self.revocation_service.sweep_loop(interval_seconds)
