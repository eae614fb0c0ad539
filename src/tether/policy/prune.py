"""Which policies can never apply to a given principal and resource, whatever the context.

For policy replay (:meth:`CompiledPolicySet.decide_many`): a policy whose condition starts with
conjuncts about the principal's or the resource's attributes alone (``principal.team == "sre"``,
``resource.sensitivity <= 2``, ``principal.labels.contains("oncall")``) and one of them is false for
this principal or resource, is false for every request about them — Cedar evaluates ``&&`` left to
right and stops at the first false operand, so the policy neither applies nor errors. Setting it
aside gives the same decision with fewer policies to evaluate, and its context reads no longer
split requests that decide alike.

Exact by construction: only a *prefix* of the conjunction is looked at, and only conjuncts of a
few forms that cannot error on entities valid against the schema (attribute of ``principal`` or
``resource`` compared with a literal; ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``contains``;
``&&``, ``||``, ``!`` of such). The prefix ends at the first conjunct of any other form (one that
reads the context, say), because that one could error before a later false conjunct is reached. A
conjunct the entity does not let us decide (an attribute it lacks) also ends what can be concluded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["NEVER", "Prefix", "dropped", "side_results", "static_prefix"]

#: The decidable leading conjuncts of one policy: (``principal`` | ``resource``, expression, the
#: expression's canonical JSON — equal conjuncts of different policies are decided once).
Prefix = tuple[tuple[str, Mapping[str, Any], str], ...]
_SIDES: Final = ("principal", "resource")
_COMPARE: Final = frozenset({"==", "!=", "<", "<=", ">", ">="})
_UNKNOWN: Final = object()
#: "No such conjunct" in a side's (first false, first undecided) pair.
NEVER: Final = 1 << 30
_NEVER: Final = NEVER


def _and_items(body: Any) -> list[Any]:
    """``a && b && c`` as ``[a, b, c]``, in evaluation order."""
    if isinstance(body, Mapping) and len(body) == 1 and "&&" in body:
        inner = body["&&"]
        return [*_and_items(inner.get("left")), *_and_items(inner.get("right"))]
    return [body]


def _side(expr: Any) -> str | None:
    """The one entity a supported expression reads (``principal`` or ``resource``), else None."""
    sides: set[str] = set()
    if not _supported(expr, sides) or len(sides) != 1:
        return None
    return next(iter(sides))


def _supported(expr: Any, sides: set[str]) -> bool:  # noqa: PLR0911
    if not isinstance(expr, Mapping) or len(expr) != 1:
        return False
    op, arg = next(iter(expr.items()))
    if op == "Value":
        return isinstance(arg, str | int | bool)
    if op == ".":
        left = arg.get("left") if isinstance(arg, Mapping) else None
        if isinstance(left, Mapping) and left.get("Var") in _SIDES and len(left) == 1:
            sides.add(left["Var"])
            return isinstance(arg.get("attr"), str)
        return False
    if op == "!":
        return isinstance(arg, Mapping) and _supported(arg.get("arg"), sides)
    if op in _COMPARE or op in {"&&", "||", "contains"}:
        return (
            isinstance(arg, Mapping)
            and _supported(arg.get("left"), sides)
            and _supported(arg.get("right"), sides)
        )
    return False


def static_prefix(est: Mapping[str, Any]) -> Prefix:
    """The leading conjuncts of a policy's conditions that read one entity only, in a supported form."""
    items: list[Any] = []
    for condition in est.get("conditions") or ():
        if not isinstance(condition, Mapping):
            return ()
        if condition.get("kind") == "when":
            items.extend(_and_items(condition.get("body")))
        elif condition.get("kind") == "unless":
            items.append({"!": {"arg": condition.get("body")}})
        else:
            break
    prefix: list[tuple[str, Mapping[str, Any], str]] = []
    for item in items:
        side = _side(item)
        if side is None:
            break
        prefix.append((side, item, json.dumps(item, sort_keys=True)))
    return tuple(prefix)


def _same_scalar(left: Any, right: Any) -> bool:
    return type(left) is type(right) and left == right


def _value(expr: Mapping[str, Any], attrs: Mapping[str, Any]) -> Any:  # noqa: PLR0911, PLR0912
    """The expression's value on an entity with ``attrs``, or _UNKNOWN."""
    op, arg = next(iter(expr.items()))
    if op == "Value":
        return arg
    if op == ".":
        value = attrs.get(arg["attr"], _UNKNOWN)
        if isinstance(value, list | tuple | set | frozenset):
            return frozenset(value) if all(isinstance(v, str | int) for v in value) else _UNKNOWN
        return value if isinstance(value, str | int | bool) else _UNKNOWN
    if op == "!":
        inner = _value(arg["arg"], attrs)
        return (not inner) if isinstance(inner, bool) else _UNKNOWN
    if op in {"&&", "||"}:
        left = _value(arg["left"], attrs)
        if not isinstance(left, bool):
            return _UNKNOWN
        if (op == "&&" and not left) or (op == "||" and left):
            return left
        right = _value(arg["right"], attrs)
        return right if isinstance(right, bool) else _UNKNOWN
    left, right = _value(arg["left"], attrs), _value(arg["right"], attrs)
    if left is _UNKNOWN or right is _UNKNOWN:
        return _UNKNOWN
    if op == "contains":
        if not isinstance(left, frozenset) or isinstance(right, frozenset):
            return _UNKNOWN
        return any(_same_scalar(item, right) for item in left)
    if op in {"==", "!="}:
        if isinstance(left, frozenset) or isinstance(right, frozenset):
            return _UNKNOWN
        equal = _same_scalar(left, right)
        return equal if op == "==" else not equal
    # <, <=, >, >=: Longs only (a bool is no Long in Cedar)
    if type(left) is not int or type(right) is not int:
        return _UNKNOWN
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


def side_results(
    prefixes: Sequence[Prefix], side: str, attrs: Mapping[str, Any]
) -> dict[int, tuple[int, int]]:
    """For each policy (by index) whose prefix has a conjunct on ``side`` that is false or cannot be
    decided for this entity: (index of the first false one, index of the first undecided one)."""
    found: dict[int, tuple[int, int]] = {}
    values: dict[str, Any] = {}
    for index, prefix in enumerate(prefixes):
        first_false = first_unknown = _NEVER
        for position, (which, expr, key) in enumerate(prefix):
            if which != side:
                continue
            value = values.get(key, _UNKNOWN)
            if value is _UNKNOWN:
                value = values[key] = _value(expr, attrs)
            if value is False:
                first_false = position
                break
            if value is not True:
                first_unknown = position
                break
        if first_false != _NEVER or first_unknown != _NEVER:
            found[index] = (first_false, first_unknown)
    return found


def dropped(principal: Mapping[int, tuple[int, int]], resource: Mapping[int, tuple[int, int]]) -> set[int]:
    """The policies (by index) that are false for this principal and resource together: a false
    conjunct comes before any undecided one."""
    if all(unknown == _NEVER for _, unknown in (*principal.values(), *resource.values())):
        return principal.keys() | resource.keys()  # each entry has a false conjunct, nothing undecided
    out: set[int] = set()
    for index in principal.keys() | resource.keys():
        p_false, p_unknown = principal.get(index, (_NEVER, _NEVER))
        r_false, r_unknown = resource.get(index, (_NEVER, _NEVER))
        if min(p_false, r_false) < min(p_unknown, r_unknown):
            out.add(index)
    return out
