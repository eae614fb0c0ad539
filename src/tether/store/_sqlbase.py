"""The plumbing every SQL store module shares: the engine, transactions, error translation.

:class:`SQLBase` holds it; ``tether.store._sql`` and the per-area modules (tasks, destinations)
add methods on top, and :class:`~tether.store._sql.SQLStorage` combines them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.errors import StorageError, StorageUnavailableError, TetherError

__all__ = ["SQLBase", "from_us", "like_escape", "to_us"]


def to_us(value: datetime) -> int:
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


def like_escape(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SQLBase:
    """A SQLAlchemy async engine and one-transaction-at-a-time helpers."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        backend: str,
        migrate_hook: Callable[[AsyncConnection], Any] | None = None,
        unavailable_hint: str = "",
    ) -> None:
        self._engine = engine
        self.backend = backend
        self._migrate_hook = migrate_hook
        self._hint = unavailable_hint
        self._binary_collation = "BINARY" if backend == "sqlite" else "C"
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    @property
    def _write_lock(self) -> asyncio.Lock | None:
        """SQLite: this process's writers take turns here (one lock per event loop)."""
        if self.backend != "sqlite":
            return None
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            for stale in [other for other in self._locks if other.is_closed()]:
                del self._locks[stale]
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    # -- plumbing ------------------------------------------------------------------------
    def _translate(self, exc: SQLAlchemyError) -> StorageError:
        text = str(getattr(exc, "orig", exc))
        sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", "") or "")
        if sqlstate[:2] in {"08", "28", "3D", "57"}:  # connection, auth, no such database, shutdown
            first = text.splitlines()[0][:200] if text else type(exc).__name__
            return StorageUnavailableError(f"{self.backend} store unavailable{self._hint}: {first}")
        if (
            "no such table" in text
            or "UndefinedTable" in type(getattr(exc, "orig", None)).__name__
            or ("does not exist" in text and "relation" in text)
        ):
            return StorageError(
                f"{self.backend} store has no Tether schema{self._hint}: run `tether migrate`"
            )
        if isinstance(exc, InterfaceError | OperationalError) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        ):
            detail = str(getattr(exc, "orig", exc)).splitlines()[0][:200]
            return StorageUnavailableError(f"{self.backend} store unavailable{self._hint}: {detail}")
        return StorageError(f"{self.backend} store error: {type(exc).__name__}")

    @asynccontextmanager
    async def _tx(
        self, *, write: bool = True, on_duplicate: Callable[[], TetherError] | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction. Reads say so: on SQLite they then take no write lock (WAL lets
        them run beside a writer); writes start with BEGIN IMMEDIATE and queue. On SQLite the
        writers of this process queue on an asyncio lock first: SQLite admits one writer anyway,
        and a writer waiting in SQLite's busy handler sleeps in steps of milliseconds."""
        async with (
            self._writer_turn(write),
            self._transaction(write=write, on_duplicate=on_duplicate) as conn,
        ):
            yield conn

    @asynccontextmanager
    async def _writer_turn(self, write: bool) -> AsyncIterator[None]:
        lock = self._write_lock if write else None
        if lock is not None:
            async with lock:
                yield
        else:
            yield

    @asynccontextmanager
    async def _transaction(
        self, *, write: bool, on_duplicate: Callable[[], TetherError] | None
    ) -> AsyncIterator[AsyncConnection]:
        try:
            async with self._engine.connect() as conn:
                if not write:
                    await conn.execution_options(tether_read_only=True)
                async with conn.begin():
                    yield conn
        except TetherError:
            raise
        except SQLAlchemyError as exc:
            if on_duplicate is not None and isinstance(exc, IntegrityError):
                raise on_duplicate() from None  # a unique key taken: the caller's conflict
            raise self._translate(exc) from exc
        except OSError as exc:  # connection refused and friends, raised by the driver
            raise StorageUnavailableError(
                f"{self.backend} store unavailable{self._hint}: {exc.strerror or exc}"
            ) from exc
