"""Audit queries: validated filters and cursor-paginated pages over the stored events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tether.domain.events import EVENT_KINDS, Event, time_us
from tether.errors import InvalidInputError
from tether.store.base import AuditStorage

__all__ = ["MAX_QUERY_LIMIT", "AuditFilter", "AuditPage", "query_events"]

MAX_QUERY_LIMIT = 1000
_FAMILIES = frozenset(kind.split(".")[0] for kind in EVENT_KINDS)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which events: every given field must match. ``kind`` is a kind or a family
    (``approval.*``); ``actor`` an actor id (SPIFFE ID, operator name, node id);
    ``resource`` e.g. ``secret:prod/github/token``; ``since`` inclusive, ``until`` exclusive."""

    kind: str | None = None
    actor: str | None = None
    task_id: str | None = None
    resource: str | None = None
    allowed: bool | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in EVENT_KINDS:
            family = self.kind[:-2] if self.kind.endswith(".*") else None
            if family not in _FAMILIES:
                raise InvalidInputError(f"unknown event kind {self.kind!r}", field="kind")
        for name in ("actor", "task_id", "resource"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 512):
                raise InvalidInputError(f"{name} must be 1-512 characters", field=name)
        if self.allowed is not None and not isinstance(self.allowed, bool):
            raise InvalidInputError("allowed must be true or false", field="allowed")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, datetime) or value.tzinfo is None:
                    raise InvalidInputError(f"{name} must be an aware time", field=name)
                try:
                    object.__setattr__(self, name, value.astimezone(UTC))
                    time_us(getattr(self, name))
                except (OverflowError, ValueError):
                    raise InvalidInputError(f"{name} is out of range", field=name) from None
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidInputError("until must be after since", field="until")

    def as_kwargs(self) -> dict[str, Any]:
        """The filters as keyword arguments of :meth:`AuditStorage.read_audit_events`."""
        return {
            "kind": self.kind,
            "actor": self.actor,
            "task_id": self.task_id,
            "resource": self.resource,
            "allowed": self.allowed,
            "since": self.since,
            "until": self.until,
        }


@dataclass(frozen=True, slots=True)
class AuditPage:
    """One page of events; ``next_after`` is the cursor for the next page (None: no more)."""

    events: list[Event]
    next_after: int | None


async def query_events(
    storage: AuditStorage, where: AuditFilter | None = None, *, after_seq: int = 0, limit: int = 100
) -> AuditPage:
    """Events matching ``where`` with seq > ``after_seq``, oldest first, at most ``limit``."""
    if not 1 <= limit <= MAX_QUERY_LIMIT:
        raise InvalidInputError(f"limit must be between 1 and {MAX_QUERY_LIMIT}", field="limit")
    if after_seq < 0:
        raise InvalidInputError("after must be 0 or a sequence number", field="after")
    filters = (where or AuditFilter()).as_kwargs()
    events = await storage.read_audit_events(after_seq=after_seq, limit=limit + 1, **filters)
    more = len(events) > limit
    events = events[:limit]
    return AuditPage(events=events, next_after=events[-1].seq if more else None)
