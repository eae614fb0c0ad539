"""Policy replay, the pure part: re-decide recorded decisions with a candidate policy set and say
what would change (no I/O; :mod:`tether.broker.policy_replay` feeds it from the audit log).

A :class:`RecordedDecision` holds what a decision needs to be made again — the principal's and the
resource's decision-relevant attributes (entities), the action and the context the broker built —
and what was decided (allowed, determining policies). :func:`replay` decides each one again with the
candidate set (:meth:`CompiledPolicySet.decide`, exactly as the broker decides) and reports every
change — allowed → denied, denied → allowed, or the same outcome by different determining policies —
grouped by policy and by agent, with counts and a few examples each. Replaying with the set that made
the decisions must change nothing (:attr:`ReplayReport.reproduced`): that is the self-check
(``versions``: each decision with the set of its own ``policy_version``).

It is fast because recorded decisions repeat: the same agent, secret, action and the few context
fields the policies read. Decisions are taken in chunks; in each, requests that agree on the
policies selected, the entities and the context those policies read are decided once
(:meth:`CompiledPolicySet.decide_many`, with a memo across chunks), and the rest go to Cedar in
batches. Every answer equals what :meth:`CompiledPolicySet.decide` answers for it alone.

:func:`compile_candidate` compiles candidate text; a set that does not parse or validate raises
:class:`~tether.policy.PolicyValidationError`, and :func:`locate_errors` gives each message its line
and column in the candidate text (parse errors carry them; a validation error is placed at its
policy's ``@id``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tether.domain.decision import Decision
from tether.policy import CompiledPolicySet, DecisionRequest, Entity, compile_policy_set

__all__ = [
    "ALLOWED_TO_DENIED",
    "DENIED_TO_ALLOWED",
    "POLICIES_CHANGED",
    "Change",
    "ChangeCounts",
    "RecordedDecision",
    "ReplayReport",
    "compile_candidate",
    "locate_errors",
    "replay",
]

ALLOWED_TO_DENIED: Final = "allowed->denied"
DENIED_TO_ALLOWED: Final = "denied->allowed"
POLICIES_CHANGED: Final = "policies-changed"
KINDS: Final = (ALLOWED_TO_DENIED, DENIED_TO_ALLOWED, POLICIES_CHANGED)
#: How many examples each group keeps.
EXAMPLES: Final = 3
#: Decisions decided together (one ``decide_many`` call per policy set).
CHUNK: Final = 4096
#: Answers remembered across chunks, per policy set.
MEMO_SIZE: Final = 200_000
_AT_LINE: Final = re.compile(r"line (\d+), column (\d+)")
_POLICY_PREFIX: Final = re.compile(r"^\[([^\]]+)\]")


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """One recorded decision: its inputs and what was decided. ``ref`` names it (an event id).

    ``approved``: an approval turned the policy's deny (which only lacked one) into the recorded
    allow, as the broker does. ``policy_version``: the set that decided (None: none deployed)."""

    ref: str
    at: datetime
    principal: Entity
    action: str
    resource: Entity
    context: Mapping[str, Any]
    allowed: bool
    policies: tuple[str, ...] = ()
    approved: bool = False
    policy_version: int | None = None

    @property
    def entities(self) -> tuple[Entity, ...]:
        """No further entities (as :class:`DecisionRequest` has them): read by ``decide_many``."""
        return ()

    def request(self) -> DecisionRequest:
        return DecisionRequest(
            principal=self.principal, action=self.action, resource=self.resource, context=self.context
        )


@dataclass(frozen=True, slots=True)
class Change:
    """A decision the candidate set makes differently: ``before`` and ``after`` determining policies."""

    kind: str
    decision: RecordedDecision
    before: tuple[str, ...]
    after: tuple[str, ...]

    @property
    def policies(self) -> tuple[str, ...]:
        """The policies the change is about: those that determined one outcome and not the other."""
        return tuple(sorted(set(self.before) ^ set(self.after))) or tuple(sorted({*self.before, *self.after}))

    def to_json(self) -> dict[str, Any]:
        d = self.decision
        return {
            "ref": d.ref,
            "at": d.at.isoformat(),
            "agent": d.principal.id,
            "action": d.action,
            "resource": f"{d.resource.type}::{d.resource.id}",
            "kind": self.kind,
            "before": list(self.before),
            "after": list(self.after),
        }


@dataclass(slots=True)
class ChangeCounts:
    """Changes of one group (a policy, an agent): a count per kind and the first few examples."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: list[Change] = field(default_factory=list)

    def add(self, change: Change) -> None:
        self.counts[change.kind] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(change)

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": [c.to_json() for c in self.examples]}


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What the candidate set would have decided differently."""

    total: int
    counts: Mapping[str, int]
    by_policy: Mapping[str, ChangeCounts]
    by_agent: Mapping[str, ChangeCounts]

    @property
    def changed(self) -> int:
        return sum(self.counts.values())

    @property
    def reproduced(self) -> bool:
        """Every recorded decision was made again exactly (the self-check with the active set)."""
        return self.changed == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "decisions": self.total,
            "changed": self.changed,
            "counts": dict(self.counts),
            "by_policy": {k: v.to_json() for k, v in sorted(self.by_policy.items())},
            "by_agent": {k: v.to_json() for k, v in sorted(self.by_agent.items())},
        }


def replay(
    candidate: CompiledPolicySet | None,
    decisions: Iterable[RecordedDecision],
    *,
    versions: Mapping[int | None, CompiledPolicySet] | None = None,
) -> ReplayReport:
    """Decide every recorded decision again with ``candidate`` and report what changes; with
    ``versions`` instead, each with the set of its own ``policy_version`` (the self-check)."""
    if (candidate is None) == (versions is None):
        raise ValueError("replay with a candidate set or with the recorded versions, not both")
    total = 0
    counts = dict.fromkeys(KINDS, 0)
    by_policy: dict[str, ChangeCounts] = {}
    by_agent: dict[str, ChangeCounts] = {}
    for recorded, made in _decided(candidate, versions, decisions):
        total += 1
        decision = made
        if recorded.approved and not made.allowed and made.missing == ("approval",):
            decision = Decision(
                allowed=True, policies=made.policies
            )  # the approval found, as the broker does
        before, after = tuple(sorted(recorded.policies)), tuple(sorted(decision.policies))
        if decision.allowed != recorded.allowed:
            kind = ALLOWED_TO_DENIED if recorded.allowed else DENIED_TO_ALLOWED
        elif before != after:
            kind = POLICIES_CHANGED
        else:
            continue
        change = Change(kind, recorded, before, after)
        counts[kind] += 1
        for policy_id in change.policies or ("(default deny)",):
            by_policy.setdefault(policy_id, ChangeCounts()).add(change)
        by_agent.setdefault(recorded.principal.id, ChangeCounts()).add(change)
    return ReplayReport(total, counts, by_policy, by_agent)


def _decided(
    candidate: CompiledPolicySet | None,
    versions: Mapping[int | None, CompiledPolicySet] | None,
    decisions: Iterable[RecordedDecision],
) -> Iterator[tuple[RecordedDecision, Decision]]:
    """Each recorded decision with the candidate's (or its own version's) decision, chunk by chunk."""
    memos: dict[int, dict[Any, Any]] = {}
    chunk: list[RecordedDecision] = []
    for recorded in decisions:
        chunk.append(recorded)
        if len(chunk) >= CHUNK:
            yield from _decide_chunk(candidate, versions, chunk, memos)
            chunk = []
    if chunk:
        yield from _decide_chunk(candidate, versions, chunk, memos)


def _decide_chunk(
    candidate: CompiledPolicySet | None,
    versions: Mapping[int | None, CompiledPolicySet] | None,
    chunk: list[RecordedDecision],
    memos: dict[int, dict[Any, Any]],
) -> list[tuple[RecordedDecision, Decision]]:
    by_set: dict[int, tuple[CompiledPolicySet, list[int]]] = {}
    for index, recorded in enumerate(chunk):
        if candidate is not None:
            compiled = candidate
        else:
            assert versions is not None
            compiled = versions[recorded.policy_version]
        by_set.setdefault(id(compiled), (compiled, []))[1].append(index)
    answers: list[Decision] = [Decision.deny()] * len(chunk)
    for key, (compiled, indexes) in by_set.items():
        memo = memos.setdefault(key, {})
        if len(memo) > MEMO_SIZE:
            memo.clear()
        # The recorded decisions themselves: their entities were checked when built.
        decided = compiled.decide_many([chunk[index] for index in indexes], memo)
        for index, decision in zip(indexes, decided, strict=True):
            answers[index] = decision
    return list(zip(chunk, answers, strict=True))


def compile_candidate(text: str) -> CompiledPolicySet:
    """Compile a candidate policy set (:class:`~tether.policy.PolicyValidationError` when it does not
    parse or validate; :func:`locate_errors` places its messages). Nothing is deployed."""
    return compile_policy_set(text)


def locate_errors(text: str, messages: Sequence[str]) -> list[dict[str, Any]]:
    """Each message of a refused candidate with its line and column (1-based) in ``text``: from the
    parser's own position, or the ``@id`` of the policy a validation message names; else null."""
    located = []
    for message in messages:
        line = column = None
        at = _AT_LINE.search(message)
        if at is not None:
            line, column = int(at.group(1)), int(at.group(2))
        else:
            named = _POLICY_PREFIX.match(message)
            if named is not None:
                line, column = _position_of_id(text, named.group(1))
        located.append({"message": message, "line": line, "column": column})
    return located


def _position_of_id(text: str, policy_id: str) -> tuple[int | None, int | None]:
    match = re.search(r'@id\(\s*"' + re.escape(policy_id) + r'"\s*\)', text)
    if match is None:
        return None, None
    before = text[: match.start()]
    return before.count("\n") + 1, match.start() - (before.rfind("\n") + 1) + 1
