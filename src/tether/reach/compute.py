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

Pure: no I/O.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cedarpy

from tether.policy import SCHEMA_TEXT, CompiledPolicySet, Entity
from tether.reach.grid import (
    DIMENSIONS,
    REACH_ACTIONS,
    UNKNOWN_FIELDS,
    Grid,
    reads_unknown_fields,
    referenced_dimensions,
)

__all__ = ["AgentGroup", "Point", "ReachRule", "Residual", "SecretTarget", "compute_reach", "group_agents"]

_SCHEMA: Final = cedarpy.Schema.from_str(SCHEMA_TEXT)
_UNKNOWN_CALL: Final = re.compile(r'unknown\("(context(?:\.[a-z_]+)+)"\)')
_WHEN_BODY: Final = re.compile(r"when\s*\{\s*(.*)\s*\}\s*;\s*$", re.DOTALL)

#: One grid point: a value per dimension, in :data:`~tether.reach.grid.DIMENSIONS` order.
Point = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AgentGroup:
    """Agents that decide identically: one entity (a representative) and every member's name."""

    entity: Entity
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecretTarget:
    """A secret as policies see it; ``dynamic_is_reveal``: its engine hands out the stored value,
    so a ``dynamic`` grant is decided as ``reveal`` (as the broker's ``policy_mode`` does)."""

    entity: Entity
    dynamic_is_reveal: bool = True


@dataclass(frozen=True, slots=True)
class Residual:
    """What is left of the policies once the grid point is known: the permits and forbids whose
    conditions still depend on unknown fields (Cedar JSON), and those that hold outright."""

    permits: tuple[tuple[str, Mapping[str, Any]], ...]
    forbids: tuple[tuple[str, Mapping[str, Any]], ...]
    principal: Mapping[str, str]
    resource: Mapping[str, str]
    text: str

    def allows(self, values: Mapping[str, Any]) -> bool:
        """The decision once every unknown field is bound (``"context.uses": 3``, …); an unbound
        field or an evaluation error is a deny (fail closed)."""
        statics: dict[str, Any] = {}
        for policy_id, est in (*self.permits, *self.forbids):
            bound = _bind(est, values)
            if bound is None:
                return False
            statics[policy_id] = bound
        handle = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": statics, "templates": {}, "templateLinks": []})
        )
        request = {
            "principal": dict(self.principal),
            "action": {"type": "Action", "id": "activate"},
            "resource": dict(self.resource),
            "context": {},
        }
        try:
            result = cedarpy.is_authorized(request, handle, [])
        except Exception:  # noqa: BLE001 - fail closed
            return False
        return not result.diagnostics.errors and result.decision is cedarpy.Decision.Allow


@dataclass(frozen=True, slots=True)
class ReachRule:
    """A box of the grid where ``agents`` may do ``action`` on ``secret``: every combination of the
    listed values is allowed (by ``policies``), or allowed when ``residual`` holds."""

    agents: tuple[str, ...]
    secret: str
    action: str
    values: Mapping[str, tuple[Any, ...]]
    policies: tuple[str, ...]
    residual: Residual | None = None

    def covers(self, point: Point) -> bool:
        return all(value in self.values[d] for d, value in zip(DIMENSIONS, point, strict=True))

    @property
    def approval(self) -> str:
        """``not needed``, ``required`` (allowed only with an approval) or ``only without``."""
        approvals = set(self.values["approval"])
        if approvals == {False, True}:
            return "not needed"
        return "required" if approvals == {True} else "only without"

    def to_json(self) -> dict[str, Any]:
        return {
            "agents": list(self.agents),
            "secret": self.secret,
            "action": self.action,
            "purposes": list(self.values["purpose"]),
            "sensitivities": list(self.values["sensitivity"]),
            "modes": list(self.values["mode"]),
            "destinations": list(self.values["destination"]),
            "depths": list(self.values["depth"]),
            "approval": self.approval,
            "policies": list(self.policies),
            "residual": None if self.residual is None else self.residual.text,
        }


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
    estimator = _Evaluator(policies)
    rules: list[ReachRule] = []
    for secret in secrets:
        for group in agents:
            for action in actions:
                rules.extend(estimator.reach(group, secret, action, grid))
    return rules


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

    def reach(self, group: AgentGroup, secret: SecretTarget, action: str, grid: Grid) -> list[ReachRule]:
        principal, resource = group.entity, secret.entity
        ids = self._compiled.applicable(action, resource.type, resource.id, principal.id)
        if not any(self._ests[i].get("effect") == "permit" for i in ids):
            return []  # default deny: nothing can permit this request
        handle = self._handle(ids)
        referenced = referenced_dimensions(self._ests[i] for i in ids)
        entities = cedarpy.Entities.from_json_str(
            json.dumps([_entity_json(principal), _entity_json(resource)]), _SCHEMA
        )
        axes = [grid.values(d) if d in referenced else grid.values(d)[:1] for d in DIMENSIONS]
        outcomes: list[tuple[dict[str, tuple[Any, ...]], tuple[tuple[str, ...], Residual | None]]] = []
        points = list(itertools.product(*axes))
        if reads_unknown_fields(self._ests[i] for i in ids):
            decided = self._decide_partially(handle, entities, principal, resource, action, secret, points)
        else:
            decided = self._decide_exactly(handle, entities, principal, resource, action, secret, points)
        for point, outcome in zip(points, decided, strict=True):
            if outcome is None:
                continue
            box = {
                d: (value,) if d in referenced else grid.values(d)
                for d, value in zip(DIMENSIONS, point, strict=True)
            }
            outcomes.append((box, outcome))
        return [
            ReachRule(group.names, resource.id, action, box, policies, residual)
            for box, (policies, residual) in _merge(outcomes)
        ]

    def _decide_partially(
        self,
        handle: cedarpy.PolicySet,
        entities: cedarpy.Entities,
        principal: Entity,
        resource: Entity,
        action: str,
        secret: SecretTarget,
        points: Sequence[Point],
    ) -> list[tuple[tuple[str, ...], Residual | None] | None]:
        seen: dict[str, tuple[tuple[str, ...], Residual | None] | None] = {}
        decided = []
        for point in points:
            # Points whose contexts are equal (``dynamic`` decided as ``reveal``) decide equally.
            key = json.dumps(point_context(secret, dict(zip(DIMENSIONS, point, strict=True))), sort_keys=True)
            if key not in seen:
                seen[key] = self._decide(handle, entities, principal, resource, action, secret, point)
            decided.append(seen[key])
        return decided

    def _decide_exactly(
        self,
        handle: cedarpy.PolicySet,
        entities: cedarpy.Entities,
        principal: Entity,
        resource: Entity,
        action: str,
        secret: SecretTarget,
        points: Sequence[Point],
    ) -> list[tuple[tuple[str, ...], Residual | None] | None]:
        """No applicable policy reads an unknown field: any value of those decides exactly, so the
        points are decided outright, in one batch."""
        contexts = [point_context(secret, dict(zip(DIMENSIONS, p, strict=True)), bound=True) for p in points]
        keys = [json.dumps(context, sort_keys=True) for context in contexts]
        unique = dict(zip(keys, contexts, strict=True))
        base = {
            "principal": _uid(principal.type, principal.id),
            "action": _uid("Action", action),
            "resource": _uid(resource.type, resource.id),
        }
        try:
            results = cedarpy.is_authorized_batch(
                [{**base, "context": context} for context in unique.values()], handle, entities
            )
        except Exception:  # noqa: BLE001 - fail closed on anything the engine throws
            return [None] * len(points)
        outcomes: dict[str, tuple[tuple[str, ...], Residual | None] | None] = {}
        for key, result in zip(unique, results, strict=True):
            outcomes[key] = None
            if result.diagnostics.errors or result.decision is not cedarpy.Decision.Allow:
                continue
            reasons = tuple(sorted(str(r) for r in result.diagnostics.reasons))
            if reasons and all(self._ests[r].get("effect") == "permit" for r in reasons):
                outcomes[key] = (reasons, None)
        return [outcomes[key] for key in keys]

    def _decide(
        self,
        handle: cedarpy.PolicySet,
        entities: cedarpy.Entities,
        principal: Entity,
        resource: Entity,
        action: str,
        secret: SecretTarget,
        point: Point,
    ) -> tuple[tuple[str, ...], Residual | None] | None:
        """The outcome at ``point``: None (deny), the determining permits (allow), or a residual."""
        values = dict(zip(DIMENSIONS, point, strict=True))
        context = point_context(secret, values)
        request = {
            "principal": _uid(principal.type, principal.id),
            "action": _uid("Action", action),
            "resource": _uid(resource.type, resource.id),
            "context": context,
        }
        try:
            # Entities parsed with the schema carry the action hierarchy; the request itself is not
            # validated (its unknowns would fail validation).
            result = cedarpy.is_authorized_partial(request, handle, entities)
        except Exception:  # noqa: BLE001 - fail closed on anything the engine throws
            return None
        if result.diagnostics.errors:
            return None  # fail closed: the broker denies on any evaluation error
        if result.decision is cedarpy.Decision.Deny:
            return None
        if result.decision is cedarpy.Decision.Allow and not _open_residuals(result.residuals):
            reasons = tuple(str(r) for r in result.diagnostics.reasons)
            if not reasons or any(self._ests[r].get("effect") != "permit" for r in reasons):
                return None
            return tuple(sorted(reasons)), None
        # Undecided, or allowed while some policy still depends on unknown fields: Cedar's Allow
        # would skip such a policy if it failed at run time, where the broker denies (fail closed).
        return self._residual(result.residuals, principal, resource)

    def _residual(
        self, residuals: Mapping[str, Any], principal: Entity, resource: Entity
    ) -> tuple[tuple[str, ...], Residual | None] | None:
        permits: list[tuple[str, Mapping[str, Any]]] = []
        forbids: list[tuple[str, Mapping[str, Any]]] = []
        for est in residuals.values():
            policy_id = (est.get("annotations") or {}).get("id")
            if not isinstance(policy_id, str) or policy_id not in self._ests:
                return None  # fail closed: a residual Tether cannot name
            simplified = {**est, "conditions": [_simplify_condition(c) for c in est.get("conditions", [])]}
            target = permits if est.get("effect") == "permit" else forbids
            target.append((policy_id, simplified))
        # A permit that can only be false (or fail) never allows; it stays in the residual, because
        # its failing would still be a deny (fail closed), but it is not what allows.
        possible = sorted(p for p in permits if _may_hold(p[1]))
        if not possible:
            return None
        permits.sort()
        forbids = sorted(f for f in forbids if _may_hold(f[1]) or _may_fail(f[1]))
        text = _residual_text(possible, forbids)
        residual = Residual(
            permits=tuple(permits),
            forbids=tuple(forbids),
            principal={"type": principal.type, "id": principal.id},
            resource={"type": resource.type, "id": resource.id},
            text=text,
        )
        return tuple(policy_id for policy_id, _ in possible), residual


def _open_residuals(residuals: Mapping[str, Any]) -> bool:
    """Whether any policy's residual still holds an expression (not a literal true or false)."""
    return any(
        _simplify(condition.get("body")) not in (_TRUE, _FALSE)
        for est in residuals.values()
        for condition in est.get("conditions", [])
    )


_PLACEHOLDERS: Final[Mapping[tuple[str, ...], Any]] = {
    ("task", "id"): "",
    ("task", "objective_sha256"): "",
    ("task", "tools"): [],
    ("task", "chain"): [],
    ("task", "age_seconds"): 0,
    ("task", "remaining_seconds"): 0,
    ("request", "method"): "",
    ("request", "path"): "",
    ("uses",): 0,
}


def point_context(secret: SecretTarget, values: Mapping[str, Any], *, bound: bool = False) -> dict[str, Any]:
    """The ``Ctx`` record of one grid point, with :data:`UNKNOWN_FIELDS` left unknown (``bound``:
    given placeholder values instead, for policies that do not read them): the shape
    :func:`tether.domain.tasks.decision_context` builds, for a task that declared the secret and the
    destination."""
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
    for path in UNKNOWN_FIELDS:
        record = context
        for key in path[:-1]:
            record = record[key]
        unknown = {"__extn": {"fn": "unknown", "arg": "context." + ".".join(path)}}
        record[path[-1]] = _PLACEHOLDERS[path] if bound else unknown
    return context


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
                None if residual is None else _residual_key(residual),
                tuple(box[d] for d in DIMENSIONS if d != dimension),
            )
            found = merged.get(key)
            if found is None:
                merged[key] = (dict(box), outcome)
            else:
                found[0][dimension] = (*found[0][dimension], *box[dimension])
        boxes = list(merged.values())
    return boxes


def _residual_key(residual: Residual) -> str:
    return json.dumps([residual.permits, residual.forbids], sort_keys=True)


def _simplify_condition(condition: Mapping[str, Any]) -> dict[str, Any]:
    return {**condition, "body": _simplify(condition.get("body"))}


def _simplify(node: Any) -> Any:
    """Fold the ``true &&`` / ``false ||`` scaffolding partial evaluation leaves behind. Only folds
    that keep Cedar's meaning, errors included: ``x && false`` is not ``false`` (``x`` may error)."""
    if not isinstance(node, dict):
        return node
    op = "&&" if "&&" in node else "||" if "||" in node else None
    if op is not None:
        return _fold(op, _simplify(node[op]["left"]), _simplify(node[op]["right"]))
    if "!" in node:
        arg = _simplify(node["!"]["arg"])
        if arg in (_TRUE, _FALSE):
            return {"Value": not arg["Value"]}
        return {"!": {"arg": arg}}
    return node


_TRUE: Final = {"Value": True}
_FALSE: Final = {"Value": False}


def _fold(op: str, left: Any, right: Any) -> Any:
    unit, zero = (_TRUE, _FALSE) if op == "&&" else (_FALSE, _TRUE)
    if left == zero:
        return zero  # short-circuit: the right side is never evaluated
    if left == unit:
        return right
    if right == unit:
        return left
    return {op: {"left": left, "right": right}}


def _may_hold(est: Mapping[str, Any]) -> bool:
    """Whether a policy's conditions can all hold (a literal ``false`` conjunct says no)."""
    for condition in est.get("conditions", []):
        body = condition.get("body")
        if condition.get("kind") == "unless":
            if not _may_be(body, value=False):
                return False
        elif not _may_be(body, value=True):
            return False
    return True


def _may_be(node: Any, *, value: bool) -> bool:
    if node == {"Value": not value}:
        return False
    if isinstance(node, dict) and "&&" in node and value:
        return _may_be(node["&&"]["left"], value=True) and _may_be(node["&&"]["right"], value=True)
    if isinstance(node, dict) and "||" in node and not value:
        return _may_be(node["||"]["left"], value=False) and _may_be(node["||"]["right"], value=False)
    return True


def _may_fail(est: Mapping[str, Any]) -> bool:
    """Whether a policy's residual holds any expression at all (which might fail at run time)."""
    return any(c.get("body") not in (_TRUE, _FALSE) for c in est.get("conditions", []))


def _condition_text(est: Mapping[str, Any]) -> str:
    bodies = [
        c["body"] if c.get("kind") != "unless" else {"!": {"arg": c["body"]}}
        for c in est.get("conditions", [])
        if c.get("body") != ({"Value": True} if c.get("kind") != "unless" else {"Value": False})
    ]
    if not bodies:
        return "true"
    probe = {**est, "annotations": {}, "conditions": [{"kind": "when", "body": _conjoin(bodies)}]}
    try:
        text = cedarpy.policies_from_json_str(
            json.dumps({"staticPolicies": {"p": probe}, "templates": {}, "templateLinks": []})
        )
    except Exception:  # noqa: BLE001 - rendering is for people; the EST stays exact
        return "(a condition on unknown fields)"
    match = _WHEN_BODY.search(text.strip())
    body = match.group(1) if match else text.strip()
    return _UNKNOWN_CALL.sub(lambda m: m.group(1), body)


def _conjoin(bodies: Sequence[Any]) -> Any:
    result = bodies[0]
    for body in bodies[1:]:
        result = {"&&": {"left": result, "right": body}}
    return result


def _residual_text(
    permits: Sequence[tuple[str, Mapping[str, Any]]], forbids: Sequence[tuple[str, Mapping[str, Any]]]
) -> str:
    allow = " || ".join(f"({_condition_text(est)}) [{pid}]" for pid, est in permits)
    if not forbids:
        return allow
    deny = " || ".join(f"({_condition_text(est)}) [{pid}]" for pid, est in forbids)
    return f"{allow}, unless {deny}"


def _value_est(value: Any) -> Any:
    if isinstance(value, bool | int | str):
        return {"Value": value}
    if isinstance(value, list | tuple | set | frozenset):
        return {"Set": [_value_est(item) for item in value]}
    if isinstance(value, Mapping):
        return {"Record": {str(k): _value_est(v) for k, v in value.items()}}
    raise TypeError(f"cannot bind a {type(value).__name__}")


def _bind(node: Any, values: Mapping[str, Any]) -> Any:
    """``node`` with each ``unknown("context.x")`` replaced by ``values["context.x"]``; None if one
    is not bound."""
    if isinstance(node, list):
        items = [_bind(item, values) for item in node]
        return None if any(item is None for item in items) else items
    if not isinstance(node, dict):
        return node
    unknown = node.get("unknown")
    if isinstance(unknown, list) and len(node) == 1:
        name = unknown[0].get("Value") if unknown and isinstance(unknown[0], dict) else None
        if not isinstance(name, str) or name not in values:
            return None
        return _value_est(values[name])
    bound: dict[str, Any] = {}
    for key, value in node.items():
        if key == "Value":
            bound[key] = value
            continue
        result = _bind(value, values)
        if result is None and value is not None:
            return None
        bound[key] = result
    return bound


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
