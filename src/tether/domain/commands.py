"""Requests to the governed path as typed commands: built once (by the API from its request models,
by the CLI or by tests), validated in their constructors, handed to the broker as they are.

What needs configuration or the store (the purpose vocabulary, the maximum lifetime, whether a
secret exists, what policy says) is the broker's to check; everything else is checked here, so a
command that exists is well-formed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tether.domain.secrets import Sensitivity
from tether.domain.tasks import GrantMode, Intent
from tether.errors import InvalidInputError

__all__ = [
    "MAX_GRANTS_PER_TASK",
    "MAX_USES",
    "Delegate",
    "IssueGrant",
    "OpenTask",
    "UpdateTask",
]

#: How many grants one ``POST /v1/tasks`` may ask for (each is decided on its own).
MAX_GRANTS_PER_TASK: Final = 16
MAX_USES: Final = 1_000_000
_MAX_SECRET_CHARS: Final = 256
_MAX_DESTINATION_CHARS: Final = 64
_MAX_AGENT_CHARS: Final = 400


def _positive(value: object, name: str, maximum: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer", field=name)
    if maximum is not None and value > maximum:
        raise InvalidInputError(f"{name} must be at most {maximum}", field=name)


def _text(value: object, name: str, maximum: int) -> None:
    if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= maximum):
        raise InvalidInputError(f"{name} must be 1-{maximum} characters", field=name)


def _names(value: object, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidInputError(f"{name} must be a list of names", field=name)
    items = tuple(value)
    if not all(isinstance(item, str) for item in items):
        raise InvalidInputError(f"{name} must be a list of names", field=name)
    return items


@dataclass(frozen=True, slots=True)
class IssueGrant:
    """Ask for a grant: ``secret`` (or what ``destination`` injects) in ``mode``, for at most
    ``ttl_seconds`` (never beyond the task) and ``max_uses`` uses."""

    secret: str | None = None
    destination: str | None = None
    mode: GrantMode = GrantMode.INJECT
    ttl_seconds: int | None = None
    max_uses: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", GrantMode.parse(self.mode))
        _text(self.secret, "secret", _MAX_SECRET_CHARS)
        _text(self.destination, "destination", _MAX_DESTINATION_CHARS)
        if self.secret is None and self.destination is None:
            raise InvalidInputError("a grant names a secret or a destination", field="secret")
        _positive(self.ttl_seconds, "ttl_seconds")
        _positive(self.max_uses, "max_uses", MAX_USES)

    @property
    def label(self) -> str:
        """How audit events name what is asked for."""
        return f"secret:{self.secret}" if self.secret else f"destination:{self.destination}"

    def asked(self) -> dict[str, Any]:
        """What an approval of this grant binds: its mode, destination, lifetime and use budget."""
        return {
            "mode": self.mode.value,
            "destination": self.destination or "",
            "ttl_seconds": self.ttl_seconds,
            "max_uses": self.max_uses,
        }


@dataclass(frozen=True, slots=True)
class OpenTask:
    """Open a task with the declared intent, and (optionally) ask for its first grants in the same
    request: at most :data:`MAX_GRANTS_PER_TASK`, each decided on its own."""

    purpose: str
    objective: str
    sensitivity: Sensitivity | str = "internal"
    secrets: Iterable[str] = ()
    destinations: Iterable[str] = ()
    tools: Iterable[str] = ()
    ttl_seconds: int | None = None
    grants: Sequence[IssueGrant] = ()
    intent: Intent = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _positive(self.ttl_seconds, "ttl_seconds")
        if isinstance(self.grants, str | bytes) or not isinstance(self.grants, Iterable):
            raise InvalidInputError("grants must be a list of grant requests", field="grants")
        grants = tuple(self.grants)
        for index, item in enumerate(grants):
            if not isinstance(item, IssueGrant):
                raise InvalidInputError(f"grants.{index} must be a grant request", field=f"grants.{index}")
        if len(grants) > MAX_GRANTS_PER_TASK:
            raise InvalidInputError(
                f"grants: at most {MAX_GRANTS_PER_TASK} grants may be asked for with a task", field="grants"
            )
        object.__setattr__(self, "grants", grants)
        intent = Intent(
            purpose=self.purpose,
            objective=self.objective,
            sensitivity=Sensitivity.parse(self.sensitivity),
            secrets=frozenset(_names(self.secrets, "secrets")),
            destinations=frozenset(_names(self.destinations, "destinations")),
            tools=frozenset(_names(self.tools, "tools")),
        )
        for name in ("secrets", "destinations", "tools"):
            object.__setattr__(self, name, tuple(sorted(getattr(intent, name))))
        object.__setattr__(self, "sensitivity", intent.sensitivity)
        object.__setattr__(self, "intent", intent)


@dataclass(frozen=True, slots=True)
class Delegate:
    """Hand a narrower sub-task to ``agent`` (SPIFFE ID or name). Its purpose is the parent's; an
    unset ``sensitivity`` is the parent's, an unset ``ttl_seconds`` the parent's remaining time."""

    agent: str
    objective: str
    secrets: Iterable[str] = ()
    destinations: Iterable[str] = ()
    tools: Iterable[str] = ()
    sensitivity: Sensitivity | str | None = None
    ttl_seconds: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.agent, str) or not 1 <= len(self.agent) <= _MAX_AGENT_CHARS:
            raise InvalidInputError("agent (the delegate's id or name) is required", field="agent")
        if not isinstance(self.objective, str):
            raise InvalidInputError("objective must be text", field="objective")
        for name in ("secrets", "destinations", "tools"):
            object.__setattr__(self, name, _names(getattr(self, name) or (), name))
        if self.sensitivity is not None:
            object.__setattr__(self, "sensitivity", Sensitivity.parse(self.sensitivity))
        _positive(self.ttl_seconds, "ttl_seconds")


@dataclass(frozen=True, slots=True)
class UpdateTask:
    """Change a task's context; ``None`` leaves a field as it is."""

    purpose: str | None = None
    objective: str | None = None
    sensitivity: Sensitivity | str | None = None
    secrets: Iterable[str] | None = None
    destinations: Iterable[str] | None = None
    tools: Iterable[str] | None = None

    def __post_init__(self) -> None:
        if self.purpose is not None and not isinstance(self.purpose, str):
            raise InvalidInputError("purpose must be a name", field="purpose")
        if self.objective is not None and not isinstance(self.objective, str):
            raise InvalidInputError("objective must be text", field="objective")
        if self.sensitivity is not None:
            object.__setattr__(self, "sensitivity", Sensitivity.parse(self.sensitivity))
        for name in ("secrets", "destinations", "tools"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _names(value, name))

    def changes(self) -> dict[str, Any]:
        """The fields to change (those that are set)."""
        names = ("purpose", "objective", "sensitivity", "secrets", "destinations", "tools")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}
