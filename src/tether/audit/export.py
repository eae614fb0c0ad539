"""Export the audit log as JSON Lines, one :func:`~tether.domain.event_records.event_to_json` record
a line, in seq order. A full export (no filters) verifies offline with
:func:`tether.audit.verify_jsonl`; a filtered one is for reading, not for verification."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tether.audit.query import AuditFilter
from tether.audit.sinks import event_line
from tether.audit.verify import iter_jsonl
from tether.domain.events import Event, MalformedEventError
from tether.errors import InvalidInputError
from tether.store.base import Storage

__all__ = ["export_jsonl", "read_jsonl"]


async def export_jsonl(
    storage: Storage,
    out: TextIO,
    *,
    after_seq: int = 0,
    page: int = 1000,
    progress: Callable[[int], None] | None = None,
    **filters: Any,
) -> int:
    """Write the events matching ``filters`` (see :class:`~tether.audit.AuditFilter`) with
    seq > ``after_seq`` to ``out``; returns how many were written."""
    try:
        where = AuditFilter(**filters)
    except TypeError:
        raise InvalidInputError(f"unknown export filter in {sorted(filters)}") from None
    written = 0
    after = after_seq
    while True:
        events = await storage.read_audit_events(after_seq=after, limit=page, **where.as_kwargs())
        out.writelines(event_line(event) for event in events)
        written += len(events)
        if progress is not None:
            progress(written)
        if len(events) < page:
            return written
        after = events[-1].seq


def read_jsonl(path: Path | str) -> list[Event]:
    """Every event of an export file; a malformed line raises :class:`MalformedEventError`."""
    events: list[Event] = []
    with Path(path).open(encoding="utf-8", errors="surrogateescape") as lines:
        for entry in iter_jsonl(lines):
            if not isinstance(entry, Event):
                raise MalformedEventError(entry.detail)
            events.append(entry)
    return events
