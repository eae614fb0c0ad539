"""The finite grid reach is computed over, and which of its dimensions a policy can see.

A decision's context has fields that range over finite, known sets (the purpose vocabulary,
sensitivity levels, modes, registered destinations, delegation depth, approval) and fields that do
not (a task's age and remaining lifetime, a grant's use count, the request's method and path, ids
and hashes). Reach enumerates the first kind and leaves the second *unknown* to Cedar's partial
evaluation, so a condition on them comes back as a residual expression instead of being dropped.

A dimension that no applicable policy reads (:func:`referenced_dimensions`) cannot change a
decision, so it is evaluated once and reported as "any value". Likewise, purposes and destinations
that nothing names (:func:`string_classes`) are evaluated once for all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from tether.errors import InvalidInputError
from tether.policy import Entity

__all__ = [
    "DIMENSIONS",
    "MODES",
    "REACH_ACTIONS",
    "SENSITIVITIES",
    "TOOL_UNKNOWN_FIELDS",
    "UNKNOWN_FIELDS",
    "Grid",
    "in_grid_order",
    "reads_unknown_fields",
    "referenced_dimensions",
    "string_classes",
]

#: The actions reach answers for: issuance and activation of a secret.
REACH_ACTIONS: Final = ("issue", "activate")
#: The activation modes policies see.
MODES: Final = ("inject", "reveal", "dynamic")
#: public, internal, confidential, restricted.
SENSITIVITIES: Final = (0, 1, 2, 3)
#: The enumerated dimensions, in the order rules are reported.
DIMENSIONS: Final = ("purpose", "sensitivity", "mode", "destination", "depth", "approval")
#: The context fields left unknown (continuous or per-task values), by their path under ``context``.
UNKNOWN_FIELDS: Final = (
    ("task", "id"),
    ("task", "objective_sha256"),
    ("task", "tools"),
    ("task", "chain"),
    ("task", "age_seconds"),
    ("task", "remaining_seconds"),
    ("request", "method"),
    ("request", "path"),
    ("uses",),
)
#: For a tool call (``call_tool``), the fields left unknown: the task's declared secrets,
#: destinations and tools are whatever the task declared, and the arguments' shape is the call's;
#: the request's method and path are known (``tools/call``, the tool's id).
TOOL_UNKNOWN_FIELDS: Final = (
    ("task", "id"),
    ("task", "objective_sha256"),
    ("task", "secrets"),
    ("task", "destinations"),
    ("task", "tools"),
    ("task", "chain"),
    ("task", "age_seconds"),
    ("task", "remaining_seconds"),
    ("uses",),
    ("arguments",),
)

# Which context paths each dimension's value lands in (a policy reading any of them depends on it).
_DIMENSION_PATHS: Final[Mapping[str, tuple[tuple[str, ...], ...]]] = {
    "purpose": (("task", "purpose"),),
    "sensitivity": (("task", "sensitivity"),),
    "mode": (("mode",),),
    "destination": (("destination",), ("task", "destinations")),
    "depth": (("task", "depth"),),
    "approval": (("approval",),),
}


@dataclass(frozen=True, slots=True)
class Grid:
    """The values each enumerated dimension ranges over.

    Attributes:
        purposes: The purpose vocabulary (settings ``task_purposes``).
        destinations: Registered destination names; ``""`` (no destination) is always added.
        max_depth: The deepest delegation depth (settings ``max_delegation_depth``).
        fixed: Dimensions pinned to given values (a tool call's mode is ``call`` and its
            destination ``mcp:<server>``), as ``(dimension, values)`` pairs.
    """

    purposes: tuple[str, ...]
    destinations: tuple[str, ...]
    max_depth: int
    fixed: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not self.purposes:
            raise InvalidInputError("the purpose vocabulary is empty", field="purposes")
        if not 0 <= self.max_depth <= 64:
            raise InvalidInputError("max_depth must be 0 to 64", field="max_depth")
        object.__setattr__(self, "purposes", tuple(dict.fromkeys(self.purposes)))
        object.__setattr__(self, "destinations", ("", *dict.fromkeys(d for d in self.destinations if d)))

    def values(self, dimension: str) -> tuple[Any, ...]:  # noqa: PLR0911 - one return per dimension
        """Every value of ``dimension``."""
        for pinned, values in self.fixed:
            if pinned == dimension:
                return values
        if dimension == "purpose":
            return self.purposes
        if dimension == "sensitivity":
            return SENSITIVITIES
        if dimension == "mode":
            return MODES
        if dimension == "destination":
            return self.destinations
        if dimension == "depth":
            return tuple(range(self.max_depth + 1))
        if dimension == "approval":
            return (False, True)
        raise InvalidInputError(f"unknown dimension {dimension!r}", field="dimension")

    def size(self) -> int:
        total = 1
        for dimension in DIMENSIONS:
            total *= len(self.values(dimension))
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "purposes": list(self.purposes),
            "sensitivities": list(SENSITIVITIES),
            "modes": list(MODES),
            "destinations": list(self.destinations),
            "max_depth": self.max_depth,
        }


def _context_paths(node: Any, found: set[tuple[str, ...]]) -> None:
    """Collect the ``context`` attribute paths an EST expression reads; a bare ``context`` (used
    whole, e.g. compared to a record) is the empty path, which reads everything."""
    if isinstance(node, list):
        for item in node:
            _context_paths(item, found)
        return
    if not isinstance(node, dict):
        return
    path = _attribute_path(node)
    if path is not None:
        found.add(path)
        return
    for key, value in node.items():
        if key == "Value":
            continue  # a literal; entity literals and strings cannot read the context
        _context_paths(value, found)


def _attribute_path(node: Mapping[str, Any]) -> tuple[str, ...] | None:
    """``context.a.b`` (or ``context.a has b``, ``context has a``) as ``("a", "b")``; ``()`` for a bare
    ``context``; None when ``node`` is not rooted at ``context``."""
    if node.get("Var") == "context":
        return ()
    for op in (".", "has"):
        inner = node.get(op)
        if isinstance(inner, dict) and "left" in inner and "attr" in inner:
            left = inner["left"]
            if isinstance(left, dict):
                base = _attribute_path(left)
                if base is not None:
                    return (*base, str(inner["attr"]))
    return None


def referenced_dimensions(policies: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The dimensions whose value any of ``policies`` (Cedar JSON, EST) can read."""
    paths: set[tuple[str, ...]] = set()
    for est in policies:
        _context_paths(est.get("conditions", []), paths)
    referenced: set[str] = set()
    for dimension, targets in _DIMENSION_PATHS.items():
        if any(_overlaps(path, target) for path in paths for target in targets):
            referenced.add(dimension)
    return frozenset(referenced)


def _overlaps(path: Sequence[str], target: Sequence[str]) -> bool:
    """One path is a prefix of the other: reading ``context.task`` reads ``context.task.purpose``."""
    n = min(len(path), len(target))
    return tuple(path[:n]) == tuple(target[:n])


def reads_unknown_fields(
    policies: Iterable[Mapping[str, Any]], unknown: Sequence[tuple[str, ...]] = UNKNOWN_FIELDS
) -> bool:
    """Whether any of ``policies`` can read a field of ``unknown`` (if none does, their values
    cannot change a decision, and any value decides exactly)."""
    paths: set[tuple[str, ...]] = set()
    for est in policies:
        _context_paths(est.get("conditions", []), paths)
    return any(_overlaps(path, target) for path in paths for target in unknown)


#: The EST keys whose meaning on strings is equality only (or that carry no string): a value the
#: policies never name is then indistinguishable from another such value.
_EQUALITY_ONLY_KEYS: Final = frozenset(
    {
        # structure
        "effect", "principal", "action", "resource", "conditions", "kind", "body", "op", "entity",
        "entities", "slot", "type", "id", "left", "right", "arg", "attr", "in", "if", "then", "else",
        "entity_type", "__entity", "Value", "Var", "Slot", "Set", "unknown",
        # operators
        "!", "neg", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "contains",
        "containsAll", "containsAny", "isEmpty", ".", "has", "is", "if-then-else",
    }
)  # fmt: skip
#: The dimensions whose values are strings, and so can be grouped into classes.
_STRING_DIMENSIONS: Final = ("purpose", "destination")


def string_classes(
    ests: Sequence[Mapping[str, Any]],
    dimensions: Iterable[str],
    entities: Sequence[Entity],
    grid: Grid,
    named: Iterable[str] = (),
) -> dict[str, dict[Any, tuple[Any, ...]]]:
    """For each string dimension of ``dimensions``: a representative value → every value it stands for.

    Policies that compare strings only for equality (no ``like``, no extension function, no record
    literal) cannot tell apart two values that neither they nor the entities' attributes nor the
    other dimensions' values name: such values decide identically, so one of them is evaluated for
    all (Cedar decides it; reach reports every value it stands for). ``""`` (no destination) is
    always its own class (an empty ``task.destinations`` is told apart by ``isEmpty``). ``named``:
    other strings the context carries (a tool call's request path, ...), which name values too.
    Only dimensions no unknown-reading policy reads are given (their residuals could name the value).
    """
    wanted = [d for d in _STRING_DIMENSIONS if d in set(dimensions)]
    if not wanted:
        return {}
    literals: set[str] = set(MODES) | set(named)
    for est in ests:
        if not _equality_only({k: v for k, v in est.items() if k != "annotations"}, literals):
            return {}
    for entity in entities:
        _strings_in(dict(entity.attributes), literals)
    classes: dict[str, dict[Any, tuple[Any, ...]]] = {}
    for dimension in wanted:
        # A purpose spelled like a destination (or the other way round) is named too.
        taken = literals | {str(v) for d in _STRING_DIMENSIONS if d != dimension for v in grid.values(d)}
        values = grid.values(dimension)
        unnamed = tuple(v for v in values if v != "" and v not in taken)
        mapping: dict[Any, tuple[Any, ...]] = {v: (v,) for v in values if v not in unnamed}
        if unnamed:
            mapping[unnamed[0]] = unnamed
        classes[dimension] = mapping
    return classes


def _equality_only(node: Any, named: set[str]) -> bool:
    """Whether an EST uses strings only for equality; collects every string literal in ``named``."""
    if isinstance(node, list):
        return all(_equality_only(item, named) for item in node)
    if isinstance(node, str):
        named.add(node)
        return True
    if not isinstance(node, dict):
        return True
    for key, value in node.items():
        if key not in _EQUALITY_ONLY_KEYS:
            return False
        if not _equality_only(value, named):
            return False
    return True


def _strings_in(node: Any, named: set[str]) -> None:
    if isinstance(node, str):
        named.add(node)
    elif isinstance(node, Mapping):
        for value in node.values():
            _strings_in(value, named)
    elif isinstance(node, list | tuple | set | frozenset):
        for item in node:
            _strings_in(item, named)


def in_grid_order(box: Mapping[str, tuple[Any, ...]], grid: Grid) -> dict[str, tuple[Any, ...]]:
    return {d: tuple(v for v in grid.values(d) if v in set(box[d])) for d in DIMENSIONS}
