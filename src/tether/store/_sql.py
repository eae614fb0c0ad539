"""One SQLAlchemy Core implementation of :class:`~tether.store.base.Storage`.

The SQLite and PostgreSQL backends differ only in how they connect (see
``tether.store.sqlite`` and ``tether.store.postgres``); the queries are the same.
"""

from __future__ import annotations

from sqlalchemy import and_, select, update

from tether.errors import (
    ConflictError,
)
from tether.store import schema as t
from tether.store._agents import JTI_SWEEP_LIMIT, AgentStore
from tether.store._approvals import ApprovalStore
from tether.store._audit import AuditStore
from tether.store._destinations import DestinationStore
from tether.store._leases import LeaseStore
from tether.store._mcp import McpServerStore
from tether.store._operators import OperatorStore
from tether.store._policies import PolicyStore
from tether.store._secrets import SecretStore
from tether.store._sqlbase import from_us, to_us
from tether.store._tasks import TaskStore

__all__ = ["JTI_SWEEP_LIMIT", "SQLStorage", "from_us", "to_us"]


class SQLStorage(
    SecretStore,
    OperatorStore,
    AuditStore,
    AgentStore,
    PolicyStore,
    TaskStore,
    ApprovalStore,
    LeaseStore,
    DestinationStore,
    McpServerStore,
):
    """Storage on a SQLAlchemy async engine: one mixin per aggregate (``_secrets``, ``_operators``,
    ``_audit``, ``_agents``, ``_policies``, ``_tasks``, ``_approvals``, ``_leases``,
    ``_destinations``); the store's lifecycle and its small named blobs here."""

    async def migrate(self) -> None:
        from tether.store.migrations import upgrade

        async with self._tx() as conn:
            if self._migrate_hook is not None:
                await self._migrate_hook(conn)
            await conn.run_sync(upgrade)

    async def ping(self) -> None:
        async with self._tx(write=False) as conn:
            await conn.execute(select(1))

    async def close(self) -> None:
        await self._engine.dispose()

    # -- meta ---------------------------------------------------------------------------
    async def get_meta(self, key: str) -> bytes | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.meta.c.value).where(t.meta.c.key == key))).first()
        return None if row is None else bytes(row[0])

    async def put_meta(self, key: str, value: bytes, *, expected: bytes | None) -> None:
        async with self._tx(on_duplicate=lambda: ConflictError(f"meta {key!r} already exists")) as conn:
            if expected is None:
                await conn.execute(t.meta.insert().values(key=key, value=value))
                return
            result = await conn.execute(
                update(t.meta)
                .where(and_(t.meta.c.key == key, t.meta.c.value == expected))
                .values(value=value)
            )
            if result.rowcount != 1:
                raise ConflictError(f"meta {key!r} changed concurrently")

    async def delete_meta(self, key: str, *, expected: bytes) -> bool:
        async with self._tx() as conn:
            result = await conn.execute(
                t.meta.delete().where(and_(t.meta.c.key == key, t.meta.c.value == expected))
            )
        return bool(result.rowcount == 1)
