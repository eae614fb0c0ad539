"""The result of one policy evaluation: allowed or not, and why.

A :class:`Decision` is truthy when allowed (like TUF's ``VerificationResult``) and
always says which policies determined it, which errors occurred and what is
missing (for example ``"approval"``), so every deny can answer *why*.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tether.errors import InvalidInputError

__all__ = ["Decision"]


def _strings(name: str, values: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(values, tuple) or not all(isinstance(value, str) for value in values):
        raise InvalidInputError(f"decision {name} must be a tuple of strings", field=name)
    return values


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy decision.

    Attributes:
        allowed: Whether the request is allowed. Fail closed: never true when ``errors`` is not empty.
        policies: The determining policy ids, as users wrote them in ``@id``. For an allow, the permits
            that matched; for a deny, the forbids that matched (empty for a default deny), the policies
            that failed to evaluate when ``errors`` is set, or, when ``missing`` is set, the permits that
            would allow once it is provided.
        errors: Evaluation errors; any error makes the decision a deny.
        missing: What the request lacks to be allowed, e.g. ``("approval",)``.
    """

    allowed: bool
    policies: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.allowed, bool):
            raise InvalidInputError("decision allowed must be a bool", field="allowed")
        _strings("policies", self.policies)
        _strings("errors", self.errors)
        _strings("missing", self.missing)
        if self.allowed and (self.errors or self.missing):
            raise InvalidInputError("a decision with errors or missing items cannot allow", field="allowed")

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def deny(
        cls, *, policies: tuple[str, ...] = (), errors: tuple[str, ...] = (), missing: tuple[str, ...] = ()
    ) -> Decision:
        """A deny with the given explanation."""
        return cls(allowed=False, policies=policies, errors=errors, missing=missing)

    def to_json(self) -> dict[str, Any]:
        """The decision as a JSON-ready dict (the shape API denials carry)."""
        return {
            "allowed": self.allowed,
            "policies": list(self.policies),
            "errors": list(self.errors),
            "missing": list(self.missing),
        }
