"""Storage: the protocol and its SQLite and PostgreSQL implementations."""

from __future__ import annotations

from pathlib import Path

from tether.errors import ConfigError
from tether.store.base import Storage, StoredValue, VersionConflictError

__all__ = ["Storage", "StoredValue", "VersionConflictError", "open_storage"]


def open_storage(url: str, *, pg_schema: str | None = None, sqlite_synchronous: str = "full") -> Storage:
    """Open storage from a URL: ``sqlite:///path/to/tether.db`` or ``postgresql://...``."""
    if url.startswith("sqlite:///"):
        from tether.store.sqlite import open_sqlite

        return open_sqlite(Path(url.removeprefix("sqlite:///")), synchronous=sqlite_synchronous.upper())
    if url.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
        from tether.store.postgres import open_postgres

        return open_postgres(url, schema=pg_schema)
    raise ConfigError("database URL must start with sqlite:/// or postgresql://")
