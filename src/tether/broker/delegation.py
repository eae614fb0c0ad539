"""Delegation: an agent in task T hands a narrower sub-task T' to another agent.

Each hop is its own trust decision; T' can only narrow T (secrets, destinations, tools, sensitivity,
lifetime) and keeps its purpose; revoking T revokes T'.
"""

from __future__ import annotations

from tether.audit import Actor, AuditLog
from tether.broker._decisions import DecisionPoint, agent_entity, summary
from tether.broker.auth import AgentCaller
from tether.broker.tasks import TaskService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.commands import Delegate
from tether.domain.tasks import Task, TaskStatus, decision_context, new_id
from tether.errors import InvalidInputError
from tether.store.base import Storage

__all__ = ["DelegationService"]


class DelegationService:
    """Sub-tasks handed to other agents."""

    def __init__(
        self,
        storage: Storage,
        audit: AuditLog,
        clock: Clock,
        settings: Settings,
        decisions: DecisionPoint,
        tasks: TaskService,
    ) -> None:
        self._storage = storage
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._decisions = decisions
        self._tasks = tasks

    # ----------------------------------------------------------------------------
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
        child_intent = self._tasks.intent_of(
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
        decision, inputs = await self._decisions.decide_recorded(
            "delegate", agent_entity(caller.agent), resource, context
        )
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
            inputs=inputs,
        )
        if approval is not None:
            inputs = inputs.approved()
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
                **inputs.event_data(),
            },
            effects=self._decisions.input_effects(inputs),
        )
        self._decisions.inputs_recorded(inputs)
        declared = await self._tasks.read_declared(child_intent)
        opened = await self._tasks.open_for(
            delegate,
            child_intent,
            ttl,
            Actor.agent(delegator),
            parent=parent,
            extra={"delegated_by": delegator, "delegate": delegate.id},
            declared=declared,
        )
        return opened.task

    def _agent_id_of(self, name_or_id: str) -> str:
        if name_or_id.startswith("spiffe://"):
            return name_or_id
        return f"spiffe://{self._settings.trust_domain}/agent/{name_or_id}"
