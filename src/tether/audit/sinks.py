"""Secondary audit sinks: copies of the chain outside the store.

The store is the primary, transactional record; sinks receive each batch after it is
durable there. A sink that fails is reported by the audit log (logged with its name and
counted) and never fails the action or the primary write.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TextIO, runtime_checkable

from tether.domain.event_records import event_to_json
from tether.domain.events import Event

__all__ = ["AuditSink", "JsonlFileSink", "StdoutSink", "event_line"]


def event_line(event: Event) -> str:
    """One JSON Lines record (canonical, newline-terminated): the export format."""
    return json.dumps(event_to_json(event), sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


@runtime_checkable
class AuditSink(Protocol):
    """Somewhere committed audit events are copied to."""

    name: str

    async def write(self, events: Sequence[Event]) -> None:
        """Write ``events`` (one committed batch, in seq order); raise on failure."""
        ...


class JsonlFileSink:
    """Appends JSON Lines to a file (created 0600) and fsyncs after each batch."""

    def __init__(self, path: Path | str, *, name: str | None = None, fsync: bool = True) -> None:
        self.path = Path(path)
        self.name = name or f"jsonl:{self.path}"
        self._fsync = fsync

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    async def write(self, events: Sequence[Event]) -> None:
        data = "".join(event_line(event) for event in events).encode("utf-8")
        # File I/O and fsync block: keep them off the event loop.
        await asyncio.to_thread(self._append, data)


class StdoutSink:
    """Writes JSON Lines to standard output (or ``stream``), e.g. for a log collector."""

    def __init__(self, stream: TextIO | None = None, *, name: str = "stdout") -> None:
        self._stream = stream
        self.name = name

    async def write(self, events: Sequence[Event]) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write("".join(event_line(event) for event in events))
        stream.flush()
