"""SQL reads for policy replay: decision events of a window (their bodies) and the snapshots they
name. Not on any hot path; composes the node's SQL store (its transactions, its error translation)
rather than joining the ``Storage`` protocol. Reads only: replay never changes stored state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from tether.domain.events import time_us
from tether.errors import ConfigError
from tether.store import schema as t
from tether.store._sqlbase import SQLBase

__all__ = ["ReplayStore"]

#: Snapshots read per query (bounded ``IN`` lists).
_SNAPSHOTS_PER_QUERY = 500


class ReplayStore:
    """Decision events and snapshots in the node's SQL store."""

    def __init__(self, storage: object) -> None:
        if not isinstance(storage, SQLBase):
            raise ConfigError("policy replay needs the SQL store (SQLite or PostgreSQL)")
        self._sql = storage

    async def count_events(
        self,
        kinds: Sequence[str],
        since: datetime,
        until: datetime | None = None,
        *,
        actor: str | None = None,
        resource: str | None = None,
    ) -> int:
        """How many events of ``kinds`` were recorded from ``since`` (inclusive) to ``until`` (by
        ``actor``, about ``resource``)."""
        c = t.audit_events.c
        query = select(func.count()).select_from(t.audit_events).where(c.kind.in_(list(kinds)))
        query = _window(query, since, until, actor, resource)
        async with self._sql._tx(write=False) as conn:
            return int((await conn.execute(query)).scalar_one())

    async def event_bodies(
        self,
        kinds: Sequence[str],
        since: datetime,
        *,
        after_seq: int = 0,
        limit: int,
        until: datetime | None = None,
        actor: str | None = None,
        resource: str | None = None,
    ) -> list[tuple[int, str]]:
        """``(seq, canonical JSON body)`` of events of ``kinds`` in the window, by seq."""
        c = t.audit_events.c
        query = (
            select(c.seq, c.body)
            .where(c.kind.in_(list(kinds)), c.seq > after_seq)
            .order_by(c.seq)
            .limit(limit)
        )
        query = _window(query, since, until, actor, resource)
        async with self._sql._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [(int(row.seq), str(row.body)) for row in rows]

    async def snapshots(self, hashes: Iterable[str]) -> dict[str, tuple[str, str]]:
        """``hash → (kind, canonical JSON)`` for the stored ones of ``hashes``."""
        wanted = sorted(set(hashes))
        found: dict[str, tuple[str, str]] = {}
        c = t.decision_snapshots.c
        async with self._sql._tx(write=False) as conn:
            for start in range(0, len(wanted), _SNAPSHOTS_PER_QUERY):
                chunk = wanted[start : start + _SNAPSHOTS_PER_QUERY]
                rows = (await conn.execute(select(c.hash, c.kind, c.body).where(c.hash.in_(chunk)))).all()
                found.update({str(row.hash): (str(row.kind), str(row.body)) for row in rows})
        return found


def _window(
    query: Any, since: datetime, until: datetime | None, actor: str | None, resource: str | None
) -> Any:
    c = t.audit_events.c
    query = query.where(c.time_us >= time_us(since))
    if until is not None:
        query = query.where(c.time_us < time_us(until))
    if actor is not None:
        query = query.where(c.actor_id == actor)
    if resource is not None:
        query = query.where(c.resource == resource)
    return query
