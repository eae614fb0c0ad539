"""Residuals: what is left of policies once a grid point is known (pure: no I/O).

Cedar's partial evaluation leaves, per policy, an expression over the fields reach does not
enumerate (``unknown("context.uses")``, ...). Here they are simplified (only folds that keep Cedar's
meaning, errors included), classified (:func:`holds`), rendered for people (:func:`residual_text`) and
decided once values are bound (:meth:`Residual.allows`), failing closed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cedarpy

__all__ = [
    "FALSE",
    "TRUE",
    "Residual",
    "bind",
    "holds",
    "may_fail",
    "may_hold",
    "residual_key",
    "residual_text",
    "simplify",
    "simplify_condition",
]

UNKNOWN_CALL: Final = re.compile(r'unknown\("(context(?:\.[a-z_]+)+)"\)')


WHEN_BODY: Final = re.compile(r"when\s*\{\s*(.*)\s*\}\s*;\s*$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Residual:
    """What is left of the policies once the grid point is known: the permits and forbids whose
    conditions still depend on unknown fields (Cedar JSON), and those that hold outright."""

    permits: tuple[tuple[str, Mapping[str, Any]], ...]
    forbids: tuple[tuple[str, Mapping[str, Any]], ...]
    principal: Mapping[str, str]
    resource: Mapping[str, str]
    text: str
    action: str = "activate"

    def allows(self, values: Mapping[str, Any]) -> bool:
        """The decision once every unknown field is bound (``"context.uses": 3``, …); an unbound
        field or an evaluation error is a deny (fail closed)."""
        statics: dict[str, Any] = {}
        for policy_id, est in (*self.permits, *self.forbids):
            bound = bind(est, values)
            if bound is None:
                return False
            statics[policy_id] = bound
        handle = cedarpy.PolicySet.from_json_str(
            json.dumps({"staticPolicies": statics, "templates": {}, "templateLinks": []})
        )
        request = {
            "principal": dict(self.principal),
            "action": {"type": "Action", "id": self.action},
            "resource": dict(self.resource),
            "context": {},
        }
        try:
            result = cedarpy.is_authorized(request, handle, [])
        except Exception:  # noqa: BLE001 - fail closed
            return False
        return not result.diagnostics.errors and result.decision is cedarpy.Decision.Allow


def holds(est: Mapping[str, Any]) -> str:
    """A residual policy's state: ``true`` (every condition holds), ``false`` (one cannot), or ``open``."""
    state = "true"
    for condition in est.get("conditions", []):
        body = simplify(condition.get("body"))
        satisfied, refuted = (TRUE, FALSE) if condition.get("kind") != "unless" else (FALSE, TRUE)
        if body == refuted:
            return "false"
        if body != satisfied:
            state = "open"
    return state


def residual_key(residual: Residual) -> str:
    return json.dumps([residual.permits, residual.forbids], sort_keys=True)


def simplify_condition(condition: Mapping[str, Any]) -> dict[str, Any]:
    return {**condition, "body": simplify(condition.get("body"))}


def simplify(node: Any) -> Any:
    """Fold the ``true &&`` / ``false ||`` scaffolding partial evaluation leaves behind. Only folds
    that keep Cedar's meaning, errors included: ``x && false`` is not ``false`` (``x`` may error)."""
    if not isinstance(node, dict):
        return node
    op = "&&" if "&&" in node else "||" if "||" in node else None
    if op is not None:
        return fold(op, simplify(node[op]["left"]), simplify(node[op]["right"]))
    if "!" in node:
        arg = simplify(node["!"]["arg"])
        if arg in (TRUE, FALSE):
            return {"Value": not arg["Value"]}
        return {"!": {"arg": arg}}
    return node


TRUE: Final = {"Value": True}


FALSE: Final = {"Value": False}


def fold(op: str, left: Any, right: Any) -> Any:
    unit, zero = (TRUE, FALSE) if op == "&&" else (FALSE, TRUE)
    if left == zero:
        return zero  # short-circuit: the right side is never evaluated
    if left == unit:
        return right
    if right == unit:
        return left
    return {op: {"left": left, "right": right}}


def may_hold(est: Mapping[str, Any]) -> bool:
    """Whether a policy's conditions can all hold (a literal ``false`` conjunct says no)."""
    for condition in est.get("conditions", []):
        body = condition.get("body")
        if condition.get("kind") == "unless":
            if not may_be(body, value=False):
                return False
        elif not may_be(body, value=True):
            return False
    return True


def may_be(node: Any, *, value: bool) -> bool:
    if node == {"Value": not value}:
        return False
    if isinstance(node, dict) and "&&" in node and value:
        return may_be(node["&&"]["left"], value=True) and may_be(node["&&"]["right"], value=True)
    if isinstance(node, dict) and "||" in node and not value:
        return may_be(node["||"]["left"], value=False) and may_be(node["||"]["right"], value=False)
    return True


def may_fail(est: Mapping[str, Any]) -> bool:
    """Whether a policy's residual holds any expression at all (which might fail at run time)."""
    return any(c.get("body") not in (TRUE, FALSE) for c in est.get("conditions", []))


def condition_text(est: Mapping[str, Any]) -> str:
    bodies = [
        c["body"] if c.get("kind") != "unless" else {"!": {"arg": c["body"]}}
        for c in est.get("conditions", [])
        if c.get("body") != ({"Value": True} if c.get("kind") != "unless" else {"Value": False})
    ]
    if not bodies:
        return "true"
    probe = {**est, "annotations": {}, "conditions": [{"kind": "when", "body": conjoin(bodies)}]}
    try:
        text = cedarpy.policies_from_json_str(
            json.dumps({"staticPolicies": {"p": probe}, "templates": {}, "templateLinks": []})
        )
    except Exception:  # noqa: BLE001 - rendering is for people; the EST stays exact
        return "(a condition on unknown fields)"
    match = WHEN_BODY.search(text.strip())
    body = match.group(1) if match else text.strip()
    return UNKNOWN_CALL.sub(lambda m: m.group(1), body)


def conjoin(bodies: Sequence[Any]) -> Any:
    result = bodies[0]
    for body in bodies[1:]:
        result = {"&&": {"left": result, "right": body}}
    return result


def residual_text(
    permits: Sequence[tuple[str, Mapping[str, Any]]], forbids: Sequence[tuple[str, Mapping[str, Any]]]
) -> str:
    allow = " || ".join(f"({condition_text(est)}) [{pid}]" for pid, est in permits)
    if not forbids:
        return allow
    deny = " || ".join(f"({condition_text(est)}) [{pid}]" for pid, est in forbids)
    return f"{allow}, unless {deny}"


def value_est(value: Any) -> Any:
    if isinstance(value, bool | int | str):
        return {"Value": value}
    if isinstance(value, list | tuple | set | frozenset):
        return {"Set": [value_est(item) for item in value]}
    if isinstance(value, Mapping):
        return {"Record": {str(k): value_est(v) for k, v in value.items()}}
    raise TypeError(f"cannot bind a {type(value).__name__}")


def bind(node: Any, values: Mapping[str, Any]) -> Any:
    """``node`` with each ``unknown("context.x")`` replaced by ``values["context.x"]``; None if one
    is not bound."""
    if isinstance(node, list):
        items = [bind(item, values) for item in node]
        return None if any(item is None for item in items) else items
    if not isinstance(node, dict):
        return node
    unknown = node.get("unknown")
    if isinstance(unknown, list) and len(node) == 1:
        name = unknown[0].get("Value") if unknown and isinstance(unknown[0], dict) else None
        if not isinstance(name, str) or name not in values:
            return None
        return value_est(values[name])
    bound: dict[str, Any] = {}
    for key, value in node.items():
        if key == "Value":
            bound[key] = value
            continue
        result = bind(value, values)
        if result is None and value is not None:
            return None
        bound[key] = result
    return bound
