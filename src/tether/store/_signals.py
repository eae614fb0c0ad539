"""SQL storage for Shared Signals: receivers' streams and the delivery log (an outbox of SETs).

Not on any hot path: the transmitter (``tether.broker.signals``) reads the audit log after its
cursor, writes one delivery row per signal and stream, and pushes due rows. Delivery ids are
derived from the stream and the signal, so a range of events processed twice (a crash, two nodes)
stores each SET once. A row holds the SET's claims (ids, types, times: no secret material); it is
signed when it is sent, with the key published then.

Tables are created by migration ``0008``; this module composes the node's SQL store (its
transactions, its error translation) rather than joining the ``Storage`` protocol.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tether.errors import ConfigError
from tether.evidence.signals import StreamConfig
from tether.store._sqlbase import SQLBase, from_us, to_us

__all__ = ["Delivery", "SignalStore"]

_metadata = MetaData()

ssf_streams = Table(
    "ssf_streams",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at_us", BigInteger, nullable=False),
    Column("updated_at_us", BigInteger, nullable=False),
)

ssf_deliveries = Table(
    "ssf_deliveries",
    _metadata,
    Column("id", String(64), primary_key=True),
    Column("stream_id", String(64), nullable=False),
    Column("event_seq", BigInteger, nullable=True),
    Column("event_type", String(256), nullable=False),
    Column("claims", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at_us", BigInteger, nullable=False),
    Column("last_error", String(256), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("created_at_us", BigInteger, nullable=False),
    Column("delivered_at_us", BigInteger, nullable=True),
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One SET for one stream and what became of it (``pending``, ``delivered``, ``failed``)."""

    id: str
    stream_id: str
    event_seq: int | None
    event_type: str
    claims: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    last_status: int | None
    created_at: datetime
    delivered_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stream_id": self.stream_id,
            "event_type": self.event_type,
            "event_seq": self.event_seq,
            "subject": self.claims.get("sub_id"),
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": None if self.status != "pending" else self.next_attempt_at.isoformat(),
            "last_error": self.last_error,
            "last_status": self.last_status,
            "created_at": self.created_at.isoformat(),
            "delivered_at": None if self.delivered_at is None else self.delivered_at.isoformat(),
        }


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        stream_id=row.stream_id,
        event_seq=row.event_seq,
        event_type=row.event_type,
        claims=json.loads(row.claims),
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=from_us(row.next_attempt_at_us),
        last_error=row.last_error,
        last_status=row.last_status,
        created_at=from_us(row.created_at_us),
        delivered_at=None if row.delivered_at_us is None else from_us(row.delivered_at_us),
    )


def _stream(row: Any) -> StreamConfig:
    return StreamConfig.from_body(row.id, json.loads(row.body), row.status, from_us(row.created_at_us))


class SignalStore:
    """Streams and deliveries in the node's SQL store."""

    def __init__(self, storage: object) -> None:
        if not isinstance(storage, SQLBase):
            raise ConfigError("Shared Signals need the SQL store (SQLite or PostgreSQL)")
        self._sql = storage

    # -- streams ------------------------------------------------------------------------------
    async def put_stream(self, stream: StreamConfig) -> None:
        async with self._sql._tx() as conn:
            await conn.execute(
                insert(ssf_streams).values(
                    id=stream.id,
                    body=json.dumps(stream.to_body(), sort_keys=True),
                    status=stream.status,
                    created_at_us=to_us(stream.created_at),
                    updated_at_us=to_us(stream.created_at),
                )
            )

    async def get_stream(self, stream_id: str) -> StreamConfig | None:
        async with self._sql._tx(write=False) as conn:
            row = (await conn.execute(select(ssf_streams).where(ssf_streams.c.id == stream_id))).first()
        return None if row is None else _stream(row)

    async def list_streams(self) -> list[StreamConfig]:
        async with self._sql._tx(write=False) as conn:
            rows = (await conn.execute(select(ssf_streams).order_by(ssf_streams.c.created_at_us))).all()
        return [_stream(row) for row in rows]

    async def set_stream_status(self, stream_id: str, status: str, now: datetime) -> bool:
        async with self._sql._tx() as conn:
            result = await conn.execute(
                update(ssf_streams)
                .where(ssf_streams.c.id == stream_id)
                .values(status=status, updated_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)

    async def delete_stream(self, stream_id: str) -> bool:
        async with self._sql._tx() as conn:
            result = await conn.execute(ssf_streams.delete().where(ssf_streams.c.id == stream_id))
            await conn.execute(ssf_deliveries.delete().where(ssf_deliveries.c.stream_id == stream_id))
        return bool(result.rowcount == 1)

    # -- deliveries -----------------------------------------------------------------------------
    async def add_deliveries(self, rows: Sequence[dict[str, Any]], now: datetime) -> int:
        """Store new deliveries (``id``, ``stream_id``, ``event_seq``, ``event_type``, ``claims``),
        due now; ids already stored are left as they are. How many were new."""
        if not rows:
            return 0
        dialect_insert = sqlite_insert if self._sql.backend == "sqlite" else pg_insert
        added = 0
        async with self._sql._tx() as conn:
            for row in rows:
                # Another node may store the same SET at the same moment: the first one stays.
                result = await conn.execute(
                    dialect_insert(ssf_deliveries)
                    .values(
                        id=row["id"],
                        stream_id=row["stream_id"],
                        event_seq=row["event_seq"],
                        event_type=row["event_type"],
                        claims=json.dumps(row["claims"], sort_keys=True),
                        status="pending",
                        attempts=0,
                        next_attempt_at_us=to_us(now),
                        created_at_us=to_us(now),
                    )
                    .on_conflict_do_nothing(index_elements=["id"])
                )
                added += int(result.rowcount == 1)
        return added

    async def due_deliveries(self, now: datetime, *, limit: int = 50) -> list[Delivery]:
        c = ssf_deliveries.c
        async with self._sql._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(ssf_deliveries)
                    .where(and_(c.status == "pending", c.next_attempt_at_us <= to_us(now)))
                    .order_by(c.next_attempt_at_us, c.id)
                    .limit(limit)
                )
            ).all()
        return [_delivery(row) for row in rows]

    async def claim(self, delivery: Delivery, until: datetime) -> bool:
        """Take ``delivery`` for one attempt until ``until`` (compare-and-set: one node sends it)."""
        c = ssf_deliveries.c
        async with self._sql._tx() as conn:
            result = await conn.execute(
                update(ssf_deliveries)
                .where(
                    and_(
                        c.id == delivery.id,
                        c.status == "pending",
                        c.attempts == delivery.attempts,
                        c.next_attempt_at_us == to_us(delivery.next_attempt_at),
                    )
                )
                .values(next_attempt_at_us=to_us(until))
            )
        return bool(result.rowcount == 1)

    async def record_attempt(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        next_attempt_at: datetime,
        error: str | None,
        http_status: int | None,
        delivered_at: datetime | None,
    ) -> None:
        async with self._sql._tx() as conn:
            await conn.execute(
                update(ssf_deliveries)
                .where(ssf_deliveries.c.id == delivery_id)
                .values(
                    status=status,
                    attempts=attempts,
                    next_attempt_at_us=to_us(next_attempt_at),
                    last_error=None if error is None else error[:256],
                    last_status=http_status,
                    delivered_at_us=None if delivered_at is None else to_us(delivered_at),
                )
            )

    async def list_deliveries(
        self, stream_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[Delivery]:
        """A stream's deliveries, newest first."""
        c = ssf_deliveries.c
        where = (
            c.stream_id == stream_id if status is None else and_(c.stream_id == stream_id, c.status == status)
        )
        async with self._sql._tx(write=False) as conn:
            rows = (
                await conn.execute(
                    select(ssf_deliveries).where(where).order_by(c.created_at_us.desc(), c.id).limit(limit)
                )
            ).all()
        return [_delivery(row) for row in rows]
