"""The policy simulator: decide a request someone describes, against a deployed policy set.

Nothing is opened, issued or recorded: it answers "what would Tether decide if this agent asked
this now?", with the determining policies and an explanation, for policy authors and auditors
(the console's Policies page). The agent and the secret are read from the store, so the entities
are the ones a real decision would see; the task context is the one the question describes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from tether.audit import AuditLog
from tether.broker._decisions import agent_entity, secret_entity
from tether.broker.access import authorize
from tether.broker.policies import PolicyService
from tether.domain.decision import Decision
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import Sensitivity
from tether.errors import InvalidInputError, NotFoundError
from tether.policy import DecisionRequest, explain
from tether.store.base import Storage

__all__ = ["SIMULATED_ACTIONS", "Simulation", "SimulationResult", "SimulatorService"]

#: The actions a simulation may ask about (delegation and tool calls need a second party).
SIMULATED_ACTIONS = ("open_task", "issue", "activate")
_MODES = ("inject", "reveal", "dynamic")
_MAX_DEPTH = 16
_MAX_TEXT = 256


def _text(value: str, field: str, *, required: bool = False) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT or any(ord(c) < 32 for c in value):
        raise InvalidInputError(f"{field} must be one line of at most {_MAX_TEXT} characters", field=field)
    if required and not value.strip():
        raise InvalidInputError(f"{field} is required", field=field)
    return value.strip()


@dataclass(frozen=True, slots=True)
class Simulation:
    """One described request. Validated when built."""

    agent: str
    action: str
    purpose: str
    secret: str = ""
    sensitivity: str = "internal"
    mode: str = "inject"
    destination: str = ""
    method: str = ""
    path: str = ""
    approval: bool = False
    depth: int = 0
    version: int | None = None

    def __post_init__(self) -> None:
        _text(self.agent, "agent", required=True)
        if self.action not in SIMULATED_ACTIONS:
            raise InvalidInputError(f"action must be one of {'|'.join(SIMULATED_ACTIONS)}", field="action")
        _text(self.purpose, "purpose", required=True)
        _text(self.secret, "secret", required=self.action != "open_task")
        Sensitivity.parse(self.sensitivity)
        if self.mode not in _MODES:
            raise InvalidInputError(f"mode must be one of {'|'.join(_MODES)}", field="mode")
        for name in ("destination", "method", "path"):
            _text(getattr(self, name), name)
        if (
            isinstance(self.depth, bool)
            or not isinstance(self.depth, int)
            or not 0 <= self.depth <= _MAX_DEPTH
        ):
            raise InvalidInputError(f"depth must be between 0 and {_MAX_DEPTH}", field="depth")
        if self.version is not None and (isinstance(self.version, bool) or self.version < 1):
            raise InvalidInputError("version must be a deployed version", field="version")


@dataclass(frozen=True, slots=True)
class SimulationResult:
    decision: Decision
    explanation: str
    version: int


class SimulatorService:
    """Decides described requests (``policy.read``): the same engine, no side effects."""

    def __init__(self, storage: Storage, audit: AuditLog, policies: PolicyService) -> None:
        self._storage = storage
        self._audit = audit
        self._policies = policies

    async def simulate(self, actor: OperatorRecord, question: Simulation) -> SimulationResult:
        await authorize(self._audit, actor, Permission.POLICY_READ, "policy:simulate")
        version = question.version or await self._policies.active_version()
        if version is None:
            raise NotFoundError("no policy set is deployed: every request is denied")
        compiled = await self._policies.compiled(version)
        agent = await self._storage.get_agent_by_name(question.agent.strip())
        if agent is None:
            raise NotFoundError(f"no agent {question.agent.strip()!r}")
        principal = agent_entity(agent)
        secrets: list[str] = []
        if question.action == "open_task":
            resource = principal
            if question.secret:
                secrets.append(question.secret)
        else:
            record = await self._storage.get_secret(question.secret)
            if record is None or record.deleted:
                raise NotFoundError(f"no secret {question.secret!r}")
            resource = secret_entity(record)
            secrets.append(record.path)
        destinations = [question.destination] if question.destination else []
        context: dict[str, Any] = {
            "task": {
                "id": "simulation",
                "purpose": question.purpose,
                "objective_sha256": hashlib.sha256(b"").hexdigest(),
                "sensitivity": int(Sensitivity.parse(question.sensitivity)),
                "secrets": secrets,
                "destinations": destinations,
                "tools": [],
                "depth": question.depth,
                "chain": [agent.id],
                "age_seconds": 0,
                "remaining_seconds": 900,
            },
            "approval": question.approval,
            "mode": "" if question.action == "open_task" else question.mode,
            "destination": question.destination,
            "request": {"method": question.method.upper(), "path": question.path},
            "uses": 0,
        }
        decision = compiled.decide(
            DecisionRequest(principal=principal, action=question.action, resource=resource, context=context)
        )
        return SimulationResult(decision, explain(decision), version)
