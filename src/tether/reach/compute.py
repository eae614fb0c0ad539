"""Who can reach what: every (agent, secret, action) over the grid, decided by Cedar itself.

For one agent and one secret, each point of the grid (:class:`~tether.reach.grid.Grid`) is a
context built exactly as the broker builds it (:func:`tether.domain.tasks.decision_context` shape:
the task declares the secret and the destination), with the fields the grid does not enumerate left
*unknown*. Cedar's partial evaluation then answers allow, deny, or "allow when <residual>". The
policies handed to Cedar are the ones the engine's index selects for that request
(:meth:`CompiledPolicySet.applicable`), so reach decides against what the broker decides against.

Agents with identical attributes decide identically unless a policy names an agent, so they are
decided once, as a group. A dimension no applicable policy reads is decided once ("any value").

Fail closed, as the broker: a point whose evaluation reports an error is a deny; a residual that
errors once its unknowns are bound is a deny (:meth:`Residual.allows`).

The targets and rules it fills in are :mod:`tether.reach.rules`. Pure: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final

import cedarpy

from tether.policy import SCHEMA_TEXT, CompiledPolicySet, Entity
from tether.policy.reads import Projection, context_projection, project
from tether.reach.grid import (
    DIMENSIONS,
    REACH_ACTIONS,
    TOOL_UNKNOWN_FIELDS,
    UNKNOWN_FIELDS,
    Grid,
    in_grid_order,
    reads_unknown_fields,
    referenced_dimensions,
    string_classes,
)
from tether.reach.residual import (
    Residual,
    holds,
    may_fail,
    may_hold,
    residual_key,
    residual_text,
    simplify_condition,
)
from tether.reach.rules import (
    AgentGroup,
    DestinationRule,
    DestinationTarget,
    Point,
    ReachRule,
    SecretTarget,
    Target,
    ToolRule,
    ToolTarget,
)

__all__ = [
    "compute_reach",
    "compute_tool_reach",
    "destination_reach",
    "group_agents",
    "point_context",
]

_SCHEMA: Final = cedarpy.Schema.from_str(SCHEMA_TEXT)

#: An allowing outcome: the determining permits and the residual (None: allowed outright).
Allowed = tuple[tuple[str, ...], "Residual | None"]
#: A merged box of the grid: the values per dimension, the determining permits, the residual.
Box = tuple[dict[str, tuple[Any, ...]], tuple[str, ...], "Residual | None"]
#: At one point, the policies that read no unknown field: the permits that hold (None: deny).
Exact = tuple[str, ...] | None
#: At one point, the policies that read unknown fields: their residuals by id (None: deny).
Partial = dict[str, Any] | None


def compute_reach(
    policies: CompiledPolicySet,
    agents: Sequence[AgentGroup],
    secrets: Sequence[SecretTarget],
    grid: Grid,
    actions: Sequence[str] = REACH_ACTIONS,
) -> list[ReachRule]:
    """Every rule under which an agent of ``agents`` may issue or activate a secret of ``secrets``.

    Rules are disjoint and together cover exactly the allowed (or conditionally allowed) points of
    the grid; a point no rule covers is denied.
    """
    estimator = _evaluator(policies)
    rules: list[ReachRule] = []
    for secret in secrets:
        for action in actions:
            rules.extend(
                ReachRule(names, secret.entity.id, action, box, permits, residual)
                for names, box, permits, residual in estimator.reach(agents, secret, action, grid)
            )
    return rules


def compute_tool_reach(
    policies: CompiledPolicySet, agents: Sequence[AgentGroup], tools: Sequence[ToolTarget], grid: Grid
) -> list[ToolRule]:
    """Every rule under which an agent of ``agents`` may call a tool of ``tools`` (``call_tool``),
    over the grid's purposes, sensitivities, depths and approvals. Disjoint; a point no rule covers
    is denied."""
    estimator = _evaluator(policies)
    rules: list[ToolRule] = []
    for tool in tools:
        rules.extend(
            ToolRule(names, tool, box, permits, residual)
            for names, box, permits, residual in estimator.reach(agents, tool, "call_tool", grid)
        )
    return rules


def destination_reach(
    rules: Iterable[ReachRule], destinations: Sequence[DestinationTarget], grid: Grid
) -> list[DestinationRule]:
    """The rules of each destination: the slice of its injected secret's rules (``rules``, computed
    over a grid that lists the destination) at mode ``inject`` and that destination, as egress
    decides issuance and activation of an ``inject`` grant. Disjoint, as ``rules`` are."""
    by_secret: dict[str, list[ReachRule]] = {}
    for rule in rules:
        by_secret.setdefault(rule.secret, []).append(rule)
    found: list[DestinationRule] = []
    for destination in destinations:
        # Per (agents, action): the sliced boxes, merged again (the slice may leave neighbours).
        sliced: dict[tuple[tuple[str, ...], str], list[tuple[dict[str, tuple[Any, ...]], Allowed]]] = {}
        for rule in by_secret.get(destination.secret, ()):
            if "inject" not in rule.values["mode"] or destination.name not in rule.values["destination"]:
                continue
            box = {**rule.values, "mode": ("inject",), "destination": (destination.name,)}
            sliced.setdefault((rule.agents, rule.action), []).append((box, (rule.policies, rule.residual)))
        for (agents, action), boxes in sliced.items():
            found.extend(
                DestinationRule(agents, destination, action, in_grid_order(box, grid), permits, residual)
                for box, (permits, residual) in _merge(boxes)
            )
    return found


#: An outcome at one grid point: None (deny), or the determining permits and a residual (or None).
Outcome = tuple[tuple[str, ...], "Residual | None"] | None


#: Evaluators of the last few policy sets (a set is immutable once compiled): their parsed
#: policies, handles and what they proved about agents and secrets carry over between answers.
_EVALUATORS: Final[dict[str, _Evaluator]] = {}
_EVALUATORS_KEPT: Final = 4
#: How many "never holds" answers an evaluator remembers before it starts afresh (bounded memory).
_MAX_REMEMBERED: Final = 1_000_000


def _evaluator(policies: CompiledPolicySet) -> _Evaluator:
    key = hashlib.sha256(policies.text.encode()).hexdigest()
    found = _EVALUATORS.pop(key, None)
    if found is None or found.size() > _MAX_REMEMBERED:
        found = _Evaluator(policies)
    _EVALUATORS[key] = found  # most recently used last
    while len(_EVALUATORS) > _EVALUATORS_KEPT:
        _EVALUATORS.pop(next(iter(_EVALUATORS)))
    return found


class _Evaluator:
    def __init__(self, policies: CompiledPolicySet) -> None:
        self._compiled = policies
        document = json.loads(cedarpy.policies_to_json_str(policies.text)) if policies.text.strip() else {}
        statics: dict[str, Any] = document.get("staticPolicies", {})
        self._ests: dict[str, Mapping[str, Any]] = {}
        for est in statics.values():
            policy_id = (est.get("annotations") or {}).get("id")
            if isinstance(policy_id, str):
                self._ests[policy_id] = est
        self._handles: dict[tuple[str, ...], cedarpy.PolicySet] = {}
        self._never: dict[tuple[Any, ...], bool] = {}
        self._reads: dict[str, frozenset[str] | None] = {}
        self._unknown_readers: dict[tuple[str, tuple[tuple[str, ...], ...]], bool] = {}
        self._boxes: dict[Any, list[Box]] = {}
        self._plans: dict[tuple[str, ...], tuple[tuple[str, frozenset[str] | None, bool], ...]] = {}
        self._policy_dimensions: dict[str, frozenset[str]] = {}
        self._projections: dict[tuple[str, ...], Projection | None] = {}

    def size(self) -> int:
        return len(self._never) + len(self._handles) + len(self._boxes)

    def _handle(self, ids: tuple[str, ...]) -> cedarpy.PolicySet:
        handle = self._handles.get(ids)
        if handle is None:
            document = {
                "staticPolicies": {policy_id: self._ests[policy_id] for policy_id in ids},
                "templates": {},
                "templateLinks": [],
            }
            handle = cedarpy.PolicySet.from_json_str(json.dumps(document))
            self._handles[ids] = handle
        return handle

    def _principal_reads(self, policy_id: str) -> frozenset[str] | None:
        """The principal attributes a policy reads; None when it can tell agents apart otherwise
        (``principal`` used whole, a principal scope, an agent named anywhere)."""
        if policy_id not in self._reads:
            est = self._ests[policy_id]
            reads = _principal_reads(est.get("conditions", []), set())
            whole = (est.get("principal") or {}).get("op", "All") != "All" or '"type": "Agent"' in json.dumps(
                est
            )
            self._reads[policy_id] = None if reads is None or whole else frozenset(reads)
        return self._reads[policy_id]

    def _reads_unknown(self, policy_id: str, target: Target) -> bool:
        unknown = _unknown_fields(target)
        key = (policy_id, unknown)
        found = self._unknown_readers.get(key)
        if found is None:
            found = self._unknown_readers[key] = reads_unknown_fields([self._ests[policy_id]], unknown)
        return found

    def _never_hold(
        self,
        ids: tuple[str, ...],
        principal: Entity,
        secret: Target,
        action: str,
        entities: cedarpy.Entities,
    ) -> dict[str, bool]:
        """For each policy of ``ids``: whether it is false for this agent and secret whatever the
        context (Cedar's partial evaluation, the context unknown; one call for all of them). An
        error, or anything unclear, is not "never": the policy stays in (fail closed)."""
        request = {
            "principal": _uid(principal.type, principal.id),
            "action": _uid("Action", action),
            "resource": _uid(secret.entity.type, secret.entity.id),
            "context": None,  # unknown as a whole: cheaper to evaluate than unknown field by field
        }
        try:
            result = cedarpy.is_authorized_partial(request, self._handle(ids), entities)
        except Exception:  # noqa: BLE001 - unclear: keep every policy
            return dict.fromkeys(ids, False)
        if result.diagnostics.errors:
            return dict.fromkeys(ids, False)
        residuals = result.residuals
        return {i: i in residuals and holds(residuals[i]) == "false" for i in ids}

    def reach(
        self, groups: Sequence[AgentGroup], secret: Target, action: str, grid: Grid
    ) -> list[tuple[tuple[str, ...], dict[str, tuple[Any, ...]], tuple[str, ...], Residual | None]]:
        """The boxes of every group for one secret (or tool) and action, with the agents each
        holds for. Policies that cannot hold for a group are set aside first; groups left with the
        same policies that see the same of their agents decide identically and are decided once,
        together."""
        resource = secret.entity
        if isinstance(secret, ToolTarget):
            # A tool call's mode and destination are the gateway's, not the task's choice.
            grid = replace(grid, fixed=(("mode", ("call",)), ("destination", (f"mcp:{secret.server}",))))
        target = (resource.type, resource.id, _frozen(dict(resource.attributes)), tuple(resource.parents))
        classes: dict[Any, tuple[Entity, cedarpy.Entities | None, list[str], tuple[str, ...]]] = {}
        for group in groups:
            principal = group.entity
            ids = self._compiled.applicable(action, resource.type, resource.id, principal.id)
            plan = self._plans.get(ids)
            if plan is None:
                plan = self._plans[ids] = tuple(
                    (i, self._principal_reads(i), self._ests[i].get("effect") == "permit") for i in ids
                )
            if not any(permit for _, _, permit in plan):
                continue  # default deny: nothing can permit this request
            seen = _PrincipalView(principal)
            kept, reads, entities = self._kept(plan, seen, principal, secret, action, target)
            if not any(self._ests[i].get("effect") == "permit" for i in kept):
                continue
            signature = (tuple(kept), seen.key(reads))
            found = classes.get(signature)
            if found is None:
                classes[signature] = (principal, entities, list(group.names), tuple(kept))
            else:
                found[2].extend(group.names)
        rules: list[tuple[tuple[str, ...], dict[str, tuple[Any, ...]], tuple[str, ...], Residual | None]] = []
        where = (action, target, isinstance(secret, SecretTarget) and secret.dynamic_is_reveal, grid)
        for signature, (principal, entities, names, kept_ids) in classes.items():
            # The same policies, the same view of the agent, the same secret and grid: the same boxes.
            boxes = self._boxes.get((where, signature))
            if boxes is None:
                boxes = self._boxes[(where, signature)] = self._reach_class(
                    principal, entities or _entities(principal, resource), kept_ids, secret, action, grid
                )
            rules.extend((tuple(names), box, policies, residual) for box, policies, residual in boxes)
        return rules

    def _kept(
        self,
        plan: tuple[tuple[str, frozenset[str] | None, bool], ...],
        seen: _PrincipalView,
        principal: Entity,
        secret: Target,
        action: str,
        target: Any,
    ) -> tuple[list[str], frozenset[str] | None, cedarpy.Entities | None]:
        """The policies of ``plan`` that may hold for this agent, what of it they read (None: all of
        it), and the agent's entities if they had to be built."""
        entities: cedarpy.Entities | None = None
        keys = [(policy_id, action, target, seen.key(policy_reads)) for policy_id, policy_reads, _ in plan]
        missing = tuple(key[0] for key in keys if key not in self._never)
        if missing:
            entities = _entities(principal, secret.entity)
            # Asked all at once (the plan's handle is shared by every agent with this plan).
            ids = missing if len(missing) == 1 else tuple(p for p, _, _ in plan)
            found = self._never_hold(ids, principal, secret, action, entities)
            for key in keys:
                if key not in self._never:
                    self._never[key] = found[key[0]]
        kept: list[str] = []
        reads: frozenset[str] | None = frozenset()
        for key, (policy_id, policy_reads, _) in zip(keys, plan, strict=True):
            if not self._never[key]:
                kept.append(policy_id)
                if reads is not None:
                    reads = None if policy_reads is None else reads | policy_reads
        return kept, reads, entities

    def _reach_class(
        self,
        principal: Entity,
        entities: cedarpy.Entities,
        ids: tuple[str, ...],
        secret: Target,
        action: str,
        grid: Grid,
    ) -> list[Box]:
        """The merged boxes of one class of agents (decided with its representative ``principal``)."""
        resource = secret.entity
        referenced = referenced_dimensions(self._ests[i] for i in ids)
        exact = tuple(i for i in ids if not self._reads_unknown(i, secret))
        partial = tuple(i for i in ids if self._reads_unknown(i, secret))
        stands_for = string_classes(
            [self._ests[i] for i in ids],
            referenced - referenced_dimensions(self._ests[i] for i in partial),
            (principal, resource),
            grid,
            _context_strings(secret),
        )
        axes = [
            (tuple(stands_for[d]) if d in stands_for else grid.values(d))
            if d in referenced
            else grid.values(d)[:1]
            for d in DIMENSIONS
        ]
        points = list(itertools.product(*axes))
        base = {
            "principal": _uid(principal.type, principal.id),
            "action": _uid("Action", action),
            "resource": _uid(resource.type, resource.id),
        }
        decided_exactly = self._decide_exactly(exact, entities, base, secret, points, grid) if exact else None
        decided_partially = (
            self._decide_partially(self._handle(partial), entities, base, secret, points, partial, grid)
            if partial
            else None
        )
        outcomes: list[tuple[dict[str, tuple[Any, ...]], tuple[tuple[str, ...], Residual | None]]] = []
        for index, point in enumerate(points):
            outcome = _combine(
                () if decided_exactly is None else decided_exactly[index],
                {} if decided_partially is None else decided_partially[index],
                functools.partial(self._residual, action=action),
                principal,
                resource,
            )
            if outcome is None:
                continue
            box = {
                d: (stands_for[d][value] if d in stands_for else (value,))
                if d in referenced
                else grid.values(d)
                for d, value in zip(DIMENSIONS, point, strict=True)
            }
            outcomes.append((box, outcome))
        return [
            (in_grid_order(box, grid), policies, residual) for box, (policies, residual) in _merge(outcomes)
        ]

    def _decide_partially(
        self,
        handle: cedarpy.PolicySet,
        entities: cedarpy.Entities,
        base: Mapping[str, str],
        secret: Target,
        points: Sequence[Point],
        ids: tuple[str, ...],
        grid: Grid,
    ) -> list[Partial]:
        """The policies that read unknown fields, partially evaluated at each point. They see only
        the dimensions they read, so each point is decided at its projection on those (the others at
        their first value), once per distinct context."""
        mine = referenced_dimensions(self._ests[i] for i in ids)
        seen: dict[str, Partial] = {}
        decided = []
        for point in points:
            values = {
                d: value if d in mine else grid.values(d)[0]
                for d, value in zip(DIMENSIONS, point, strict=True)
            }
            context = point_context(secret, values)
            key = json.dumps(context, sort_keys=True)
            if key not in seen:
                try:
                    # Entities parsed with the schema carry the action hierarchy; the request
                    # itself is not validated (its unknowns would fail validation).
                    result = cedarpy.is_authorized_partial({**base, "context": context}, handle, entities)
                except Exception:  # noqa: BLE001 - fail closed on anything the engine throws
                    seen[key] = None
                else:
                    seen[key] = None if result.diagnostics.errors else dict(result.residuals)
            decided.append(seen[key])
        return decided

    def _decide_exactly(
        self,
        ids: tuple[str, ...],
        entities: cedarpy.Entities,
        base: Mapping[str, str],
        secret: Target,
        points: Sequence[Point],
        grid: Grid,
    ) -> list[Exact]:
        """The policies that read no unknown field: any value of those decides exactly, so the
        points are decided outright: per point, the permits that hold, or None when a forbid holds
        or evaluation errs (a deny either way).

        Policies that read the same dimensions are decided together, each group at the projections
        of the points on its dimensions (the others at their first value), with only the context
        attributes it reads: a policy's value at a point depends on nothing else. A point then
        combines the groups as Cedar combines policies: a forbid that holds or an error anywhere
        denies; otherwise the permits that hold (in any group) allow."""
        by_dimensions: dict[frozenset[str], list[str]] = {}
        for policy_id in ids:
            by_dimensions.setdefault(self._dimensions(policy_id), []).append(policy_id)
        combined: list[Exact] = [() for _ in points]
        for dimensions, members in by_dimensions.items():
            group = tuple(members)
            decided = self._decide_group(group, dimensions, entities, base, secret, points, grid)
            for index, outcome in enumerate(decided):
                before = combined[index]
                if before is None:
                    continue
                combined[index] = None if outcome is None else (*before, *outcome)
        return [None if c is None else tuple(sorted(c)) for c in combined]

    def _dimensions(self, policy_id: str) -> frozenset[str]:
        found = self._policy_dimensions.get(policy_id)
        if found is None:
            found = self._policy_dimensions[policy_id] = referenced_dimensions([self._ests[policy_id]])
        return found

    def _decide_group(
        self,
        ids: tuple[str, ...],
        dimensions: frozenset[str],
        entities: cedarpy.Entities,
        base: Mapping[str, str],
        secret: Target,
        points: Sequence[Point],
        grid: Grid,
    ) -> list[Exact]:
        """Policies that read ``dimensions`` (and no unknown field), at each point's projection."""
        reads = self._reads_of(ids)
        firsts = {d: grid.values(d)[0] for d in DIMENSIONS}
        projected: dict[Point, str] = {}  # a projection -> its context's JSON
        contexts: dict[str, dict[str, Any]] = {}
        keys = []
        for point in points:
            at = tuple(v if d in dimensions else firsts[d] for d, v in zip(DIMENSIONS, point, strict=True))
            key = projected.get(at)
            if key is None:
                context = point_context(secret, dict(zip(DIMENSIONS, at, strict=True)), bound=True)
                if reads is not None:
                    context = project(context, reads)
                key = projected[at] = json.dumps(context, sort_keys=True)
                contexts[key] = context
            keys.append(key)
        try:
            results = cedarpy.is_authorized_batch(
                [{**base, "context": key} for key in contexts], self._handle(ids), entities
            )
        except Exception:  # noqa: BLE001 - fail closed on anything the engine throws
            return [None] * len(points)
        outcomes: dict[str, Exact] = {}
        for key, result in zip(contexts, results, strict=True):
            reasons = tuple(sorted(str(r) for r in result.diagnostics.reasons))
            if result.diagnostics.errors:
                outcomes[key] = None
            elif result.decision is cedarpy.Decision.Allow:
                outcomes[key] = (
                    reasons if all(self._ests[r].get("effect") == "permit" for r in reasons) else None
                )
            else:
                outcomes[key] = None if reasons else ()  # a forbid holds, or no permit does
        return [outcomes[key] for key in keys]

    def _reads_of(self, ids: tuple[str, ...]) -> Projection | None:
        if ids not in self._projections:
            self._projections[ids] = context_projection(self._ests[i] for i in ids)
        return self._projections[ids]

    def _residual(
        self, residuals: Mapping[str, Any], principal: Entity, resource: Entity, *, action: str
    ) -> tuple[tuple[str, ...], Residual | None] | None:
        permits: list[tuple[str, Mapping[str, Any]]] = []
        forbids: list[tuple[str, Mapping[str, Any]]] = []
        for est in residuals.values():
            policy_id = (est.get("annotations") or {}).get("id")
            if not isinstance(policy_id, str) or policy_id not in self._ests:
                return None  # fail closed: a residual Tether cannot name
            simplified = {**est, "conditions": [simplify_condition(c) for c in est.get("conditions", [])]}
            target = permits if est.get("effect") == "permit" else forbids
            target.append((policy_id, simplified))
        # A permit that can only be false (or fail) never allows; it stays in the residual, because
        # its failing would still be a deny (fail closed), but it is not what allows.
        possible = sorted(p for p in permits if may_hold(p[1]))
        if not possible:
            return None
        permits.sort()
        forbids = sorted(f for f in forbids if may_hold(f[1]) or may_fail(f[1]))
        text = residual_text(possible, forbids)
        residual = Residual(
            permits=tuple(permits),
            forbids=tuple(forbids),
            principal={"type": principal.type, "id": principal.id},
            resource={"type": resource.type, "id": resource.id},
            text=text,
            action=action,
        )
        return tuple(policy_id for policy_id, _ in possible), residual


class _PrincipalView:
    """What of one agent a set of policies can see (by the attributes they read), as a hashable
    key: agents with equal keys decide equally under those policies."""

    def __init__(self, principal: Entity) -> None:
        self._principal = principal
        self._keys: dict[frozenset[str] | None, Any] = {}

    def key(self, reads: frozenset[str] | None) -> Any:
        found = self._keys.get(reads)
        if found is None:
            principal = self._principal
            if reads is None:
                # The agent itself; its attributes too, as they may change between answers.
                found = ("agent", principal.id, _frozen(dict(principal.attributes)), tuple(principal.parents))
            else:
                found = (
                    tuple(principal.parents),
                    tuple((a, _frozen(principal.attributes.get(a))) for a in sorted(reads)),
                )
            self._keys[reads] = found
        return found


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return ("set", tuple(sorted((_frozen(v) for v in value), key=repr)))
    return (type(value).__name__, value)


def _entities(principal: Entity, resource: Entity) -> cedarpy.Entities:
    return cedarpy.Entities.from_json_str(
        json.dumps([_entity_json(principal), _entity_json(resource)]), _SCHEMA
    )


_ALWAYS: Final = {
    "principal": {"op": "All"},
    "action": {"op": "All"},
    "resource": {"op": "All"},
    "conditions": [{"kind": "when", "body": {"Value": True}}],
}


def _combine(
    exact: Exact,
    partial: Partial,
    residual_of: Callable[[Mapping[str, Any], Entity, Entity], Outcome],
    principal: Entity,
    resource: Entity,
) -> Outcome:
    """The decision at one point from its two halves, by Cedar's rules (a forbid that holds or any
    error denies; otherwise a permit that holds allows), with the broker's fail-closed reading of
    residuals: while any residual is open, the answer is a residual over all of them."""
    if exact is None or partial is None:
        return None  # a half denies: a forbid holds or evaluation erred
    permits = exact
    states = {policy_id: holds(est) for policy_id, est in partial.items()}
    effects = {policy_id: est.get("effect") for policy_id, est in partial.items()}
    if any(states[i] == "true" and effects[i] != "permit" for i in states):
        return None  # a forbid holds
    if all(state != "open" for state in states.values()):
        allowing = sorted({*permits, *(i for i in states if states[i] == "true")})
        return (tuple(allowing), None) if allowing else None
    combined = dict(partial)
    for policy_id in permits:
        combined[policy_id] = {**_ALWAYS, "effect": "permit", "annotations": {"id": policy_id}}
    return residual_of(combined, principal, resource)


_PLACEHOLDERS: Final[Mapping[tuple[str, ...], Any]] = {
    ("task", "id"): "",
    ("task", "objective_sha256"): "",
    ("task", "tools"): [],
    ("task", "chain"): [],
    ("task", "age_seconds"): 0,
    ("task", "remaining_seconds"): 0,
    ("task", "secrets"): [],
    ("task", "destinations"): [],
    ("arguments",): [],
    ("request", "method"): "",
    ("request", "path"): "",
    ("uses",): 0,
}


def _unknown_fields(target: Target) -> tuple[tuple[str, ...], ...]:
    return TOOL_UNKNOWN_FIELDS if isinstance(target, ToolTarget) else UNKNOWN_FIELDS


def _context_strings(target: Target) -> tuple[str, ...]:
    """Strings a target's contexts carry besides the grid's values (they name values too)."""
    if isinstance(target, ToolTarget):
        return ("tools/call", target.entity.id)
    return (target.entity.id,)


def point_context(target: Target, values: Mapping[str, Any], *, bound: bool = False) -> dict[str, Any]:
    """The ``Ctx`` record of one grid point, with the target's unknown fields
    (:data:`UNKNOWN_FIELDS`, :data:`TOOL_UNKNOWN_FIELDS`) left unknown (``bound``: given placeholder
    values instead, for policies that do not read them). For a secret: the shape
    :func:`tether.domain.tasks.decision_context` builds, for a task that declared the secret and the
    destination; for a tool: the shape the MCP gateway builds for ``tools/call``."""
    if isinstance(target, ToolTarget):
        return _tool_context(target, values, bound=bound)
    secret = target
    destination = values["destination"]
    mode = values["mode"]
    if mode == "dynamic" and secret.dynamic_is_reveal:
        mode = "reveal"
    context: dict[str, Any] = {
        "task": {
            "purpose": values["purpose"],
            "sensitivity": values["sensitivity"],
            "secrets": [secret.entity.id],
            "destinations": [destination] if destination else [],
            "depth": values["depth"],
        },
        "approval": values["approval"],
        "mode": mode,
        "destination": destination,
        "request": {},
    }
    _leave_unknown(context, UNKNOWN_FIELDS, bound=bound)
    return context


def _tool_context(tool: ToolTarget, values: Mapping[str, Any], *, bound: bool) -> dict[str, Any]:
    """``McpGateway._context`` at one grid point: mode ``call``, destination ``mcp:<server>``,
    request ``tools/call`` on ``server/name``; :data:`TOOL_UNKNOWN_FIELDS` left unknown."""
    context: dict[str, Any] = {
        "task": {
            "purpose": values["purpose"],
            "sensitivity": values["sensitivity"],
            "depth": values["depth"],
        },
        "approval": values["approval"],
        "mode": "call",
        "destination": f"mcp:{tool.server}",
        "request": {"method": "tools/call", "path": tool.entity.id},
    }
    _leave_unknown(context, TOOL_UNKNOWN_FIELDS, bound=bound)
    return context


def _leave_unknown(context: dict[str, Any], fields: Sequence[tuple[str, ...]], *, bound: bool) -> None:
    for path in fields:
        record = context
        for key in path[:-1]:
            record = record.setdefault(key, {})
        unknown = {"__extn": {"fn": "unknown", "arg": "context." + ".".join(path)}}
        record[path[-1]] = _PLACEHOLDERS[path] if bound else unknown


def _uid(kind: str, ident: str) -> str:
    return f"{kind}::{json.dumps(ident)}"


def _entity_json(entity: Entity) -> dict[str, Any]:
    return {
        "uid": {"type": entity.type, "id": entity.id},
        "attrs": dict(entity.attributes),
        "parents": [{"type": kind, "id": ident} for kind, ident in entity.parents],
    }


def _merge(
    outcomes: Iterable[tuple[dict[str, tuple[Any, ...]], tuple[tuple[str, ...], Residual | None]]],
) -> list[tuple[dict[str, tuple[Any, ...]], tuple[tuple[str, ...], Residual | None]]]:
    """Merge boxes with the same outcome that differ in one dimension, one dimension at a time;
    the result stays disjoint and covers the same points."""
    boxes = list(outcomes)
    for dimension in reversed(DIMENSIONS):
        merged: dict[Any, tuple[dict[str, tuple[Any, ...]], tuple[tuple[str, ...], Residual | None]]] = {}
        for box, outcome in boxes:
            policies, residual = outcome
            key = (
                policies,
                None if residual is None else residual_key(residual),
                tuple(box[d] for d in DIMENSIONS if d != dimension),
            )
            found = merged.get(key)
            if found is None:
                merged[key] = (dict(box), outcome)
            else:
                found[0][dimension] = (*found[0][dimension], *box[dimension])
        boxes = list(merged.values())
    return boxes


def group_agents(
    policies: CompiledPolicySet, agents: Sequence[tuple[str, Entity]], actions: Sequence[str] = REACH_ACTIONS
) -> list[AgentGroup]:
    """Agents grouped by the attributes the policies of ``actions`` read: agents whose read
    attributes are identical decide identically. Unless such a policy names an agent (in its scope
    or its conditions) or uses ``principal`` other than to read an attribute: then every agent is
    its own group."""
    statics: dict[str, Any] = {}
    if policies.text.strip():
        statics = json.loads(cedarpy.policies_to_json_str(policies.text)).get("staticPolicies", {})
    statics = {k: est for k, est in statics.items() if _may_apply_to(est.get("action", {}), actions)}
    if '"type": "Agent"' in json.dumps(statics):
        return [AgentGroup(entity, (name,)) for name, entity in agents]
    reads: set[str] | None = set()
    for est in statics.values():
        reads = _principal_reads(est.get("conditions", []), reads)
        if reads is None:
            break
    groups: dict[str, tuple[Entity, list[str]]] = {}
    for name, entity in agents:
        attrs = {k: v for k, v in entity.attributes.items() if reads is None or k in reads}
        key = json.dumps({"attrs": attrs, "parents": entity.parents}, sort_keys=True, default=list)
        found = groups.get(key)
        if found is None:
            groups[key] = (entity, [name])
        else:
            found[1].append(name)
    return [AgentGroup(entity, tuple(names)) for entity, names in groups.values()]


def _may_apply_to(scope: Mapping[str, Any], actions: Sequence[str]) -> bool:
    """Whether an action scope can match one of ``actions`` (an unknown shape: yes)."""
    op = scope.get("op")
    if op == "==" and isinstance(scope.get("entity"), dict):
        return scope["entity"].get("id") in actions
    if op == "in":
        entities = scope.get("entities", [scope.get("entity")])
        if isinstance(entities, list) and all(isinstance(e, dict) for e in entities):
            return any(e.get("id") in actions for e in entities)
    return True


def _principal_reads(node: Any, reads: set[str] | None) -> set[str] | None:
    """Add the attributes of ``principal`` that ``node`` reads (``principal.x``, ``principal has x``)
    to ``reads``; None when ``principal`` is used any other way (then every attribute counts)."""
    if reads is None:
        return None
    if isinstance(node, list):
        for item in node:
            reads = _principal_reads(item, reads)
        return reads
    if not isinstance(node, dict):
        return reads
    if node.get("Var") == "principal":
        return None  # used whole: compared, tested for membership, ...
    for op in (".", "has"):
        inner = node.get(op)
        if isinstance(inner, dict) and inner.get("left") == {"Var": "principal"} and "attr" in inner:
            reads.add(str(inner["attr"]))
            return reads
    for key, value in node.items():
        if key != "Value":
            reads = _principal_reads(value, reads)
    return reads
