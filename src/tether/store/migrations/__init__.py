"""Versioned schema migrations (Alembic), run by ``tether migrate`` and at server start."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from tether.errors import StorageError

__all__ = ["VERSION_TABLE", "current_revision", "head_revision", "upgrade"]

VERSION_TABLE = "tether_schema_version"
_HERE = Path(__file__).parent


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection) -> None:
    """Apply every migration not yet applied, on ``connection`` (inside its transaction)."""
    try:
        command.upgrade(_config(connection), "head")
    except CommandError as exc:
        current = current_revision(connection)
        raise StorageError(
            f"the store's schema revision {current!r} is unknown to this Tether (newest known: "
            f"{head_revision()!r}); is it newer than this version?"
        ) from exc


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found")
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()
