"""Policy test cases (``tether policy test``): requests with the decision users expect."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.domain.decision import Decision
from tether.errors import InvalidInputError
from tether.policy.engine import CompiledPolicySet
from tether.policy.request import DecisionRequest, Entity

__all__ = ["CaseReport", "run_cases"]

_CASE_KEYS = frozenset(
    {"name", "principal", "action", "resource", "context", "entities", "expect", "expect_missing"}
)
_ENTITY_KEYS = frozenset({"type", "id", "attributes", "parents"})


@dataclass(frozen=True, slots=True)
class CaseReport:
    """The outcome of running cases.

    Attributes:
        passed: How many cases got the decision they expected.
        failed: ``(name, expected, decision)`` for each case that did not.
    """

    passed: int
    failed: list[tuple[str, str, Decision]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every case passed."""
        return not self.failed

    def __bool__(self) -> bool:
        return self.ok


def _entity(case: str, key: str, raw: Any) -> Entity:
    if not isinstance(raw, Mapping) or not {"type", "id"} <= raw.keys() or not raw.keys() <= _ENTITY_KEYS:
        raise InvalidInputError(
            f"case {case!r}: {key} must be a mapping with type, id and optional attributes, parents",
            field=key,
        )
    parents = raw.get("parents") or ()
    if not isinstance(parents, Sequence) or isinstance(parents, str):
        raise InvalidInputError(f"case {case!r}: {key}.parents must be a list", field=key)
    try:
        return Entity(
            type=raw["type"],
            id=raw["id"],
            attributes=raw.get("attributes") or {},
            parents=tuple(_parent(parent) for parent in parents),
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"case {case!r}: {key}: {exc}", field=key) from None


def _parent(raw: Any) -> tuple[str, str]:
    if isinstance(raw, Mapping) and {"type", "id"} == raw.keys():
        return (raw["type"], raw["id"])
    if isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == 2:
        return (raw[0], raw[1])
    raise InvalidInputError("a parent must be {type, id}", field="parents")


def _case(position: int, raw: Any) -> tuple[str, DecisionRequest, str, tuple[str, ...] | None]:
    if not isinstance(raw, Mapping):
        raise InvalidInputError(f"case #{position} must be a mapping", field="cases")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"case #{position} needs a name", field="name")
    unknown = sorted(str(key) for key in raw.keys() - _CASE_KEYS)
    if unknown:
        raise InvalidInputError(f"case {name!r}: unknown fields {', '.join(unknown)}", field="cases")
    expect = raw.get("expect")
    if expect not in ("allow", "deny"):
        raise InvalidInputError(f"case {name!r}: expect must be allow or deny", field="expect")
    missing = raw.get("expect_missing")
    if missing is not None and (
        isinstance(missing, str)
        or not isinstance(missing, Sequence)
        or not all(isinstance(item, str) for item in missing)
    ):
        raise InvalidInputError(f"case {name!r}: expect_missing must be a list of strings", field="expect")
    extra = raw.get("entities") or ()
    if not isinstance(extra, Sequence) or isinstance(extra, str):
        raise InvalidInputError(f"case {name!r}: entities must be a list", field="entities")
    try:
        request = DecisionRequest(
            principal=_entity(name, "principal", raw.get("principal")),
            action=raw.get("action"),  # type: ignore[arg-type]  # validated by DecisionRequest
            resource=_entity(name, "resource", raw.get("resource")),
            context=raw.get("context") or {},
            entities=tuple(_entity(name, "entities", item) for item in extra),
        )
    except InvalidInputError as exc:
        message = str(exc) if str(exc).startswith("case ") else f"case {name!r}: {exc}"
        raise InvalidInputError(message, field=exc.field) from None
    return name, request, expect, tuple(missing) if missing is not None else None


def run_cases(compiled: CompiledPolicySet, cases: Sequence[Mapping[str, Any]]) -> CaseReport:
    """Decide each case and compare with what it expects.

    Every case is checked for shape before any is decided.

    Args:
        compiled: The policy set under test.
        cases: Mappings with ``name``, ``principal`` and ``resource`` (``{type, id, attributes}``),
            ``action``, ``context``, ``expect`` (``"allow"`` or ``"deny"``), optionally
            ``expect_missing`` (e.g. ``["approval"]``) and ``entities``.

    Returns:
        How many passed, and each failure with the decision it got.

    Raises:
        InvalidInputError: a case is malformed; the message names it.
    """
    if isinstance(cases, str | bytes) or not isinstance(cases, Sequence):
        raise InvalidInputError("cases must be a list", field="cases")
    parsed = [_case(position, raw) for position, raw in enumerate(cases, start=1)]
    names = [name for name, *_ in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidInputError(f"case names repeat: {', '.join(duplicates)}", field="name")
    passed = 0
    failed: list[tuple[str, str, Decision]] = []
    for name, request, expect, missing in parsed:
        decision = compiled.decide(request)
        ok = decision.allowed == (expect == "allow")
        if missing is not None:
            ok = ok and sorted(decision.missing) == sorted(missing)
        if ok:
            passed += 1
        else:
            expected = expect if missing is None else f"{expect} (missing: {', '.join(missing) or 'nothing'})"
            failed.append((name, expected, decision))
    return CaseReport(passed=passed, failed=failed)
