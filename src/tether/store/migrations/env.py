"""Alembic environment: migrations always run on a connection Tether hands in."""

from __future__ import annotations

from alembic import context

from tether.store.migrations import VERSION_TABLE
from tether.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tether migrate`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
