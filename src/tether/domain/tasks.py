"""Tasks, grants and approvals: the governed path as values.

A :class:`Task` is one agent's declared intent with a lifetime; a :class:`Grant` is a
key-bound, task-scoped permission to use one secret or destination in one mode (issuance);
an :class:`Approval` is a human decision bound to one task context, action and resource.
Everything here is pure: expiry takes ``now``, nothing reads a clock or a store.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets as _random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from tether.domain.secrets import MAX_SET_SIZE, Sensitivity, validate_path
from tether.errors import InvalidInputError

__all__ = [
    "LIVE_STATUSES",
    "MAX_OBJECTIVE_CHARS",
    "Approval",
    "ApprovalStatus",
    "Ended",
    "Grant",
    "GrantMode",
    "Intent",
    "Lease",
    "Task",
    "TaskStatus",
    "decision_context",
    "new_id",
    "request_hash",
    "validate_id",
]

MAX_OBJECTIVE_CHARS: Final = 2000
MAX_TOOL_CHARS: Final = 128
_ID: Final = re.compile(r"(tsk|grt|apr|lse)_[A-Za-z0-9_-]{22,43}")
_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# A tool, or every tool of one MCP upstream (``server/*``, see tether.mcp).
_TOOL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}|[a-z0-9][a-z0-9-]{0,31}/\*")
_OBJECTIVE: Final = re.compile(r"[^\x00-\x08\x0b-\x1f\x7f]+")


def new_id(prefix: str) -> str:
    """A fresh random id: ``tsk_``, ``grt_``, ``apr_`` or ``lse_`` and 128 bits, URL-safe."""
    return f"{prefix}_{_random.token_urlsafe(16)}"


def validate_id(value: object, prefix: str, field: str = "id") -> str:
    """``value`` if it is a well-formed id with ``prefix``, else :class:`InvalidInputError`."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or not value.startswith(prefix + "_"):
        raise InvalidInputError(f"{field} is not a well-formed {prefix}_ id", field=field)
    return value


class TaskStatus(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    REVOKED = "revoked"
    EXPIRED = "expired"


LIVE_STATUSES: Final = frozenset({TaskStatus.PENDING_APPROVAL, TaskStatus.ACTIVE})


class GrantMode(StrEnum):
    INJECT = "inject"
    REVEAL = "reveal"
    DYNAMIC = "dynamic"

    @classmethod
    def parse(cls, value: object) -> GrantMode:
        try:
            return cls(str(value))
        except ValueError:
            raise InvalidInputError("mode must be one of inject|reveal|dynamic", field="mode") from None


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    VOIDED = "voided"


def _names(values: Iterable[str], field: str, pattern: re.Pattern[str], what: str) -> frozenset[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidInputError(f"{field} must be a list of {what}", field=field)
    items = list(values)
    if len(items) > MAX_SET_SIZE:
        raise InvalidInputError(f"{field} holds more than {MAX_SET_SIZE} entries", field=field)
    for item in items:
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise InvalidInputError(
                f"{field} holds an ill-formed {what[:-1]}: {str(item)[:80]!r}", field=field
            )
    return frozenset(items)


def _aware(value: datetime | None, field: str) -> None:
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise InvalidInputError(f"{field} must be a timezone-aware datetime", field=field)


@dataclass(frozen=True, slots=True)
class Intent:
    """What a task declares it is doing. Validated when built; the purpose vocabulary is checked
    by the broker (it is configuration)."""

    purpose: str
    objective: str
    sensitivity: Sensitivity
    secrets: frozenset[str] = frozenset()
    destinations: frozenset[str] = frozenset()
    tools: frozenset[str] = frozenset()
    #: The objective's SHA-256, computed once (every decision's context carries it).
    _objective_sha256: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.purpose, str) or not _NAME.fullmatch(self.purpose):
            raise InvalidInputError("purpose must be a lowercase name", field="purpose")
        if (
            not isinstance(self.objective, str)
            or not self.objective.strip()
            or len(self.objective) > MAX_OBJECTIVE_CHARS
            or not _OBJECTIVE.fullmatch(self.objective)
        ):
            raise InvalidInputError(
                f"objective must be 1-{MAX_OBJECTIVE_CHARS} characters of text", field="objective"
            )
        object.__setattr__(self, "sensitivity", Sensitivity.parse(self.sensitivity))
        secrets = _names(self.secrets, "secrets", re.compile(r".+"), "paths")
        for path in secrets:
            try:
                validate_path(path)
            except InvalidInputError as exc:
                raise InvalidInputError(f"secrets: {exc}", field="secrets") from None
        object.__setattr__(self, "secrets", secrets)
        object.__setattr__(self, "destinations", _names(self.destinations, "destinations", _NAME, "names"))
        object.__setattr__(self, "tools", _names(self.tools, "tools", _TOOL, "tools"))
        object.__setattr__(
            self, "_objective_sha256", hashlib.sha256(self.objective.encode("utf-8")).hexdigest()
        )

    @property
    def objective_sha256(self) -> str:
        return self._objective_sha256

    def widening(self, parent: Intent) -> list[str]:
        """How this intent exceeds ``parent`` (empty when it only narrows)."""
        problems = []
        for name in ("secrets", "destinations", "tools"):
            extra = sorted(getattr(self, name) - getattr(parent, name))
            if extra:
                problems.append(f"{name} not in the parent task: {', '.join(extra[:5])}")
        if self.sensitivity > parent.sensitivity:
            problems.append(
                f"sensitivity {self.sensitivity.label} exceeds the parent's {parent.sensitivity.label}"
            )
        return problems


def _canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Task:
    """One agent, one intent, a lifetime.

    ``chain`` lists the ancestor task ids, root first (empty for a root task); ``depth`` is its
    length. ``context_version`` grows with every change of intent, so an approval bound to the
    old context (via :attr:`context_hash`) no longer matches.
    """

    id: str
    agent_id: str
    intent: Intent
    status: TaskStatus
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None
    parent_id: str | None = None
    root_id: str = ""
    depth: int = 0
    chain: tuple[str, ...] = ()
    context_version: int = 1
    approval_id: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.id, "tsk")
        if not isinstance(self.intent, Intent):
            raise InvalidInputError("intent must be an Intent", field="intent")
        object.__setattr__(self, "status", TaskStatus(self.status))
        _aware(self.created_at, "created_at")
        _aware(self.expires_at, "expires_at")
        _aware(self.ended_at, "ended_at")
        if self.expires_at <= self.created_at:
            raise InvalidInputError("a task must expire after it starts", field="ttl_seconds")
        if not self.root_id:
            object.__setattr__(self, "root_id", self.chain[0] if self.chain else self.id)
        object.__setattr__(self, "chain", tuple(self.chain))
        if self.depth != len(self.chain) or (self.parent_id is None) != (self.depth == 0):
            raise InvalidInputError("a task's depth, chain and parent disagree", field="depth")
        if self.chain and self.chain[-1] != self.parent_id:
            raise InvalidInputError("a task's chain must end with its parent", field="chain")

    def effective_status(self, now: datetime) -> TaskStatus:
        """The status at ``now``: a live task past its expiry is expired, swept or not."""
        if self.status in LIVE_STATUSES and now >= self.expires_at:
            return TaskStatus.EXPIRED
        return self.status

    def is_active(self, now: datetime) -> bool:
        return self.effective_status(now) is TaskStatus.ACTIVE

    def remaining_seconds(self, now: datetime) -> int:
        return max(0, int((self.expires_at - now).total_seconds()))

    @property
    def context_hash(self) -> str:
        """SHA-256 over the task's identity, context version and intent: what approvals bind."""
        intent = self.intent
        body = {
            "id": self.id,
            "context_version": self.context_version,
            "purpose": intent.purpose,
            "objective_sha256": intent.objective_sha256,
            "sensitivity": int(intent.sensitivity),
            "secrets": sorted(intent.secrets),
            "destinations": sorted(intent.destinations),
            "tools": sorted(intent.tools),
            "chain": list(self.chain),
        }
        return hashlib.sha256(_canonical(body)).hexdigest()

    def cedar_context(self, now: datetime) -> dict[str, Any]:
        """The ``TaskCtx`` record policies see."""
        intent = self.intent
        return {
            "id": self.id,
            "purpose": intent.purpose,
            "objective_sha256": intent.objective_sha256,
            "sensitivity": int(intent.sensitivity),
            "secrets": sorted(intent.secrets),
            "destinations": sorted(intent.destinations),
            "tools": sorted(intent.tools),
            "depth": self.depth,
            "chain": list(self.chain),
            "age_seconds": max(0, int((now - self.created_at).total_seconds())),
            "remaining_seconds": self.remaining_seconds(now),
        }


def decision_context(
    task: Task,
    now: datetime,
    *,
    mode: str = "",
    destination: str = "",
    method: str = "",
    path: str = "",
    uses: int = 0,
    approval: bool = False,
) -> dict[str, Any]:
    """The ``Ctx`` record of one decision, built from the live task."""
    return {
        "task": task.cedar_context(now),
        "approval": approval,
        "mode": mode,
        "destination": destination,
        "request": {"method": method, "path": path},
        "uses": uses,
    }


@dataclass(frozen=True, slots=True)
class Grant:
    """Issuance: a permission to use ``secret`` (or ``destination``) in ``mode`` within one task,
    bound to the key (``jkt``) of the access token it was issued to. Carries no secret material."""

    id: str
    task_id: str
    agent_id: str
    jkt: str
    secret: str | None
    destination: str | None
    mode: GrantMode
    created_at: datetime
    expires_at: datetime
    max_uses: int | None = None
    uses: int = 0
    revoked_at: datetime | None = None
    revoke_reason: str | None = None

    def __post_init__(self) -> None:
        validate_id(self.id, "grt")
        validate_id(self.task_id, "tsk", "task_id")
        object.__setattr__(self, "mode", GrantMode.parse(self.mode))
        if self.secret is None and self.destination is None:
            raise InvalidInputError("a grant names a secret or a destination", field="secret")
        if self.max_uses is not None and not (1 <= self.max_uses <= 1_000_000):
            raise InvalidInputError("max_uses must be between 1 and 1000000", field="max_uses")
        if self.uses < 0:
            raise InvalidInputError("uses cannot be negative", field="uses")
        _aware(self.created_at, "created_at")
        _aware(self.expires_at, "expires_at")
        _aware(self.revoked_at, "revoked_at")

    @property
    def uses_left(self) -> int | None:
        return None if self.max_uses is None else max(0, self.max_uses - self.uses)

    @property
    def resource(self) -> tuple[str, str]:
        """The Cedar resource this grant is about: ``("Secret", path)`` or ``("Destination", name)``."""
        if self.secret is not None:
            return ("Secret", self.secret)
        assert self.destination is not None  # checked in __post_init__
        return ("Destination", self.destination)

    def unusable(self, now: datetime) -> str | None:
        """Why this grant cannot be used at ``now`` (regardless of its task), or None."""
        if self.revoked_at is not None:
            return f"grant revoked ({self.revoke_reason or 'revoked'})"
        if now >= self.expires_at:
            return "grant expired"
        if self.uses_left == 0:
            return "grant has no uses left"
        return None


@dataclass(frozen=True, slots=True)
class Approval:
    """A human decision on one task context, action and resource (``"Secret::prod/x"``)."""

    id: str
    task_id: str
    agent_id: str
    action: str
    resource: str
    context_hash: str
    status: ApprovalStatus
    policies: tuple[str, ...]
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str = ""
    #: The exact request approved (mode, destination, method and path; or the delegated scope):
    #: an approval allows that request, not any other on the same resource.
    request: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id(self.id, "apr")
        object.__setattr__(self, "request", MappingProxyType(dict(self.request)))
        object.__setattr__(self, "status", ApprovalStatus(self.status))
        _aware(self.requested_at, "requested_at")
        _aware(self.expires_at, "expires_at")
        _aware(self.decided_at, "decided_at")

    def effective_status(self, now: datetime) -> ApprovalStatus:
        if self.status in {ApprovalStatus.PENDING, ApprovalStatus.APPROVED} and now >= self.expires_at:
            return ApprovalStatus.EXPIRED
        return self.status

    @property
    def request_hash(self) -> str:
        return request_hash(self.request)

    def grants(self, task: Task, action: str, resource: str, now: datetime) -> bool:
        """Whether this approval allows ``action`` on ``resource`` in ``task`` as it is now."""
        return (
            self.effective_status(now) is ApprovalStatus.APPROVED
            and self.task_id == task.id
            and self.action == action
            and self.resource == resource
            and self.context_hash == task.context_hash
        )


def request_hash(request: Mapping[str, Any]) -> str:
    """SHA-256 of a request's canonical JSON: what an approval binds besides the task context."""
    return hashlib.sha256(_canonical(dict(request))).hexdigest()


@dataclass(frozen=True, slots=True)
class Lease:
    """A credential a secret engine issued for a grant (``dynamic`` mode). ``handle`` is what the
    engine needs to revoke it — never the credential itself."""

    id: str
    grant_id: str
    task_id: str
    engine: str
    handle: Mapping[str, Any]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
    engine_revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        validate_id(self.id, "lse")
        validate_id(self.grant_id, "grt", "grant_id")
        validate_id(self.task_id, "tsk", "task_id")
        _aware(self.created_at, "created_at")
        _aware(self.expires_at, "expires_at")


@dataclass(frozen=True, slots=True)
class Ended:
    """What ending a task (or a sweep) did: the tasks ended, grants revoked, and the leases whose
    engine-side credential must now be revoked."""

    task_ids: tuple[str, ...] = ()
    grants_revoked: int = 0
    leases: tuple[Lease, ...] = ()

    def __add__(self, other: Ended) -> Ended:
        return Ended(
            self.task_ids + other.task_ids,
            self.grants_revoked + other.grants_revoked,
            self.leases + other.leases,
        )
