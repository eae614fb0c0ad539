"""The embedded default: SQLite in WAL mode, one file under the data dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from tether.store.sqlite._driver import SQLiteDriver
from tether.store.sqlite._storage import SQLiteStorage

__all__ = ["SQLiteStorage", "open_sqlite"]


def open_sqlite(path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 10_000) -> SQLiteStorage:
    """Storage in the SQLite file at ``path`` (created on first migration)."""
    if synchronous not in {"FULL", "NORMAL"}:
        raise ValueError("synchronous must be FULL or NORMAL")
    # A fixed pool: every connection is an aiosqlite thread and a file open, too dear to make and
    # drop per request under load (overflow connections would be).
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", pool_size=16, max_overflow=0, pool_timeout=30)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that every transaction starts with
        # BEGIN IMMEDIATE (reads: a plain BEGIN): writers queue on busy_timeout instead of
        # failing when a read transaction tries to upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get("tether_read_only", False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    hint = f" at {path}"
    driver = SQLiteDriver(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms, hint=hint)
    return SQLiteStorage(engine, driver, unavailable_hint=hint)
