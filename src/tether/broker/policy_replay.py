"""Policy replay for operators (``POST /v1/policies/replay``, ``tether policy replay``): what would a
candidate policy set have decided differently over an audit window, and does replaying with the
versions that decided reproduce every recorded decision (``verify``)?

Decision events name their inputs (:mod:`tether.domain.inputs`): snapshots by hash, the per-use
context fields, the policy version. This service reads the window's events and the snapshots they
name (reads only — replay never deploys anything or changes any stored state) and hands the
recorded decisions to the pure engine (:mod:`tether.reach.replay`). Events recorded before inputs
were recorded, or whose snapshot is missing, are counted as not replayable, never guessed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pydantic_core import from_json

from tether.audit import AuditLog
from tether.broker.access import authorize
from tether.broker.policies import PolicyService
from tether.clock import Clock
from tether.config import Settings
from tether.domain.events import from_time_us
from tether.domain.inputs import INPUTS_VERSION, PER_USE_TASK_FIELDS
from tether.domain.operators import OperatorRecord, Permission
from tether.domain.secrets import validate_path
from tether.errors import InvalidInputError
from tether.policy import CompiledPolicySet, Entity, PolicyValidationError, compile_policy_set
from tether.reach.findings import parse_window
from tether.reach.replay import RecordedDecision, ReplayReport, compile_candidate, locate_errors, replay
from tether.store._replay import ReplayStore

__all__ = [
    "REPLAYED_KINDS",
    "CandidatePolicyError",
    "PolicyReplayService",
    "ReplayAnswer",
    "ReplayWindowError",
]

#: The events that record a policy decision of the governed path.
REPLAYED_KINDS: Final = (
    "decision",
    "grant.issue",
    "grant.activate",
    "task.open",
    "task.update",
    "delegation",
    "tool.call",
)
_PAGE: Final = 5000
RESOURCE: Final = "policy:replay"
NO_INPUTS: Final = "recorded without inputs (before this version of Tether)"
REFUSED_BEFORE_POLICY: Final = "refused by the broker, not by a policy (task ended, grant used up, ...)"
MISSING_SNAPSHOT: Final = "a snapshot it names is missing"


class CandidatePolicyError(PolicyValidationError):
    """A candidate policy set that does not parse or validate; ``located`` gives each message its
    line and column in the candidate (a 422 problem lists them)."""

    def __init__(self, messages: list[str], located: list[dict[str, Any]]) -> None:
        super().__init__(messages)
        self.located = located


class ReplayWindowError(InvalidInputError):
    """The window holds more decisions than one replay may take (``replay_max_decisions``)."""

    def __init__(self, found: int, limit: int) -> None:
        super().__init__(
            f"the window holds {found:,} decision events, more than replay takes at once "
            f"({limit:,}, setting replay_max_decisions): narrow it with a shorter since (--since), "
            "or replay one agent or one secret (--agent, --secret)",
            field="since",
        )
        self.found = found
        self.limit = limit


@dataclass(slots=True)
class _Tally:
    events: int = 0
    not_replayable: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.not_replayable[reason] = self.not_replayable.get(reason, 0) + 1


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    """What replay found: the candidate's changes and/or the self-check, over one window."""

    since: str
    start: datetime
    until: datetime
    agent: str | None
    secret: str | None
    events: int
    not_replayable: Mapping[str, int]
    candidate: ReplayReport | None = None
    candidate_sha256: str | None = None
    verify: ReplayReport | None = None
    versions: tuple[int | None, ...] = ()

    @property
    def reproduced(self) -> bool | None:
        return None if self.verify is None else self.verify.reproduced

    def to_json(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "from": self.start.isoformat(),
            "until": self.until.isoformat(),
            "agent": self.agent,
            "secret": self.secret,
            "events": self.events,
            "not_replayable": {
                "count": sum(self.not_replayable.values()),
                "reasons": dict(sorted(self.not_replayable.items())),
            },
            "candidate": None
            if self.candidate is None
            else {"sha256": self.candidate_sha256, **self.candidate.to_json()},
            "verify": None
            if self.verify is None
            else {
                "reproduced": self.verify.reproduced,
                "policy_versions": list(self.versions),
                **self.verify.to_json(),
            },
        }


class PolicyReplayService:
    """Replays the audit window's decisions (operators who may read policies)."""

    def __init__(
        self, storage: object, audit: AuditLog, clock: Clock, settings: Settings, policies: PolicyService
    ) -> None:
        self._store = ReplayStore(storage)
        self._audit = audit
        self._clock = clock
        self._settings = settings
        self._policies = policies

    async def replay(
        self,
        actor: OperatorRecord,
        candidate: str | None,
        since: str,
        *,
        agent: str | None = None,
        secret: str | None = None,
        verify: bool = False,
    ) -> ReplayAnswer:
        """Replay the decisions recorded in the window ``since`` (``7d``) with ``candidate`` (Cedar
        text) and/or, with ``verify``, with the version that decided each (the self-check)."""
        await authorize(self._audit, actor, Permission.POLICY_READ, RESOURCE)
        if candidate is None and not verify:
            raise InvalidInputError("give a candidate policy set, or verify", field="policies")
        compiled = None if candidate is None else _compile(candidate)
        window = parse_window(since)
        until = self._clock.now()
        start = until - window
        actor_id = None if agent is None else self._agent_id(agent)
        resource = None
        if secret is not None:
            resource = f"secret:{validate_path(secret)}"
        found = await self._store.count_events(
            REPLAYED_KINDS, start, until, actor=actor_id, resource=resource
        )
        limit = int(self._settings.replay_max_decisions)
        if found > limit:
            raise ReplayWindowError(found, limit)
        tally = _Tally()
        candidate_report = verify_report = None
        versions: dict[int | None, CompiledPolicySet] = {}
        if verify:
            decisions = [d async for d in self._recorded(start, until, actor_id, resource, tally)]
            for version in sorted(
                {d.policy_version for d in decisions}, key=lambda v: -1 if v is None else v
            ):
                versions[version] = await self._version(version)
            # Deciding is CPU work: off the event loop, so the node keeps answering meanwhile.
            verify_report = await asyncio.to_thread(replay, None, decisions, versions=versions)
            if compiled is not None:
                candidate_report = await asyncio.to_thread(replay, compiled, decisions)
        else:
            assert compiled is not None
            decisions = [d async for d in self._recorded(start, until, actor_id, resource, tally)]
            candidate_report = await asyncio.to_thread(replay, compiled, decisions)
        return ReplayAnswer(
            since=since.strip(),
            start=start,
            until=until,
            agent=actor_id,
            secret=secret,
            events=tally.events,
            not_replayable=tally.not_replayable,
            candidate=candidate_report,
            candidate_sha256=None if compiled is None else compiled.sha256,
            verify=verify_report,
            versions=tuple(versions),
        )

    async def _version(self, version: int | None) -> CompiledPolicySet:
        if version is None:  # nothing was deployed: everything was denied by default
            return compile_policy_set("")
        return await self._policies.compiled(version)

    def _agent_id(self, name_or_id: str) -> str:
        if name_or_id.startswith("spiffe://"):
            return name_or_id
        return f"spiffe://{self._settings.trust_domain}/agent/{name_or_id}"

    async def _recorded(
        self, start: datetime, until: datetime, actor: str | None, resource: str | None, tally: _Tally
    ) -> AsyncIterator[RecordedDecision]:
        """The window's recorded decisions, page by page; the rest counted in ``tally``."""
        entities: dict[str, Entity] = {}
        tasks: dict[str, dict[str, Any]] = {}
        after = 0
        while True:
            page = await self._store.event_bodies(
                REPLAYED_KINDS,
                start,
                after_seq=after,
                limit=_PAGE,
                until=until,
                actor=actor,
                resource=resource,
            )
            if not page:
                return
            after = page[-1][0]
            # pydantic_core's parser (a dependency through pydantic) reads bodies twice as fast as json.
            bodies = [(seq, from_json(body)) for seq, body in page]
            wanted = {
                name
                for _, body in bodies
                for name in _hashes(body)
                if name not in entities and name not in tasks
            }
            if wanted:
                for name, (kind, text) in (await self._store.snapshots(wanted)).items():
                    try:
                        value = json.loads(text)
                        if kind == "task":
                            tasks[name] = dict(value)
                        else:
                            entities[name] = Entity(value["type"], value["id"], value["attrs"])
                    except (
                        ValueError,
                        KeyError,
                        TypeError,
                        InvalidInputError,
                    ):  # unreadable: counted as missing
                        continue
            for seq, body in bodies:
                recorded = _decision(seq, body, entities, tasks, tally)
                if recorded is not None:
                    yield recorded


def _compile(text: str) -> CompiledPolicySet:
    try:
        return compile_candidate(text)
    except PolicyValidationError as exc:
        raise CandidatePolicyError(exc.messages, locate_errors(text, exc.messages)) from None


def _hashes(body: Mapping[str, Any]) -> list[str]:
    inputs = (body.get("data") or {}).get("inputs")
    if not isinstance(inputs, Mapping) or inputs.get("v") != INPUTS_VERSION or "unrecorded" in inputs:
        return []
    return [
        str(inputs[name]) for name in ("principal", "resource", "task") if isinstance(inputs.get(name), str)
    ]


def _decision(
    seq: int,
    body: Mapping[str, Any],
    entities: Mapping[str, Entity],
    tasks: Mapping[str, Mapping[str, Any]],
    tally: _Tally,
) -> RecordedDecision | None:
    """The recorded decision of one event, or None (counted) when it cannot be made again."""
    actor = body.get("actor") or {}
    decision = body.get("decision")
    data = body.get("data") or {}
    inputs = data.get("inputs")
    if actor.get("type") != "agent" or not isinstance(decision, Mapping):
        return None  # not a decision of the governed path (an operator's permission check)
    tally.events += 1
    if not isinstance(inputs, Mapping):
        no_policy = body.get("kind") == "decision" and data.get("errors") and not decision.get("policies")
        tally.skip(REFUSED_BEFORE_POLICY if no_policy else NO_INPUTS)
        return None
    if inputs.get("v") != INPUTS_VERSION or "unrecorded" in inputs:
        tally.skip(f"inputs not recorded: {inputs.get('unrecorded', 'unknown inputs format')}")
        return None
    principal = entities.get(str(inputs.get("principal")))
    resource = entities.get(str(inputs.get("resource")))
    task = tasks.get(str(inputs.get("task")))
    if principal is None or resource is None or task is None:
        tally.skip(MISSING_SNAPSHOT)
        return None
    ctx = dict(inputs.get("ctx") or {})
    per_use = {name: ctx.pop(name, 0) for name in PER_USE_TASK_FIELDS}
    context = {**ctx, "task": {**task, **per_use}}
    return RecordedDecision(
        ref=str(seq),
        at=from_time_us(int(body["time_us"])),
        principal=principal,
        action=str(inputs["action"]),
        resource=resource,
        context=context,
        allowed=bool(decision.get("allowed")),
        policies=tuple(decision.get("policies") or ()),
        approved=bool(inputs.get("approved")),
        policy_version=inputs.get("policy_version"),
    )
