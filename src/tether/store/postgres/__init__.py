"""PostgreSQL: one database shared by several Tether nodes."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tether.errors import ConfigError
from tether.store.postgres._storage import PostgresStorage

__all__ = ["PostgresStorage", "open_postgres"]

_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _asyncpg_url(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgres", "postgresql", "postgresql+asyncpg"}:
        raise ConfigError(f"not a PostgreSQL DSN (scheme {parts.scheme!r}); expected postgresql://...")
    return urlunsplit(("postgresql+asyncpg", *parts[1:]))


def _redacted(dsn: str) -> str:
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path}"


def open_postgres(dsn: str, *, schema: str | None = None, pool_size: int = 10) -> PostgresStorage:
    """Storage in PostgreSQL at ``dsn``; ``schema`` keeps Tether's tables in their own schema."""
    connect_args: dict[str, object] = {"timeout": 10}
    if schema is not None:
        if not _SCHEMA.fullmatch(schema):
            raise ConfigError(f"PostgreSQL schema name {schema!r} is not a plain lowercase identifier")
        connect_args["server_settings"] = {"search_path": schema}
    engine = create_async_engine(
        _asyncpg_url(dsn),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args=connect_args,
    )

    async def create_schema(conn: AsyncConnection) -> None:
        # Nodes starting together must not race on DDL: one migrates, the others wait.
        await conn.execute(text("SELECT pg_advisory_xact_lock(7420001)"))
        if schema is not None:
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))

    url = _asyncpg_url(dsn)
    return PostgresStorage(
        engine,
        dsn=urlunsplit(("postgresql", *urlsplit(url)[1:])),
        server_settings={} if schema is None else {"search_path": schema},
        pool_size=pool_size,
        migrate_hook=create_schema,
        unavailable_hint=f" at {_redacted(dsn)}",
    )
