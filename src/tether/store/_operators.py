"""Operator storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update

from tether.domain.operators import OperatorRecord, Role
from tether.errors import (
    ConflictError,
)
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, from_us, to_us

__all__ = ["OperatorStore"]


class OperatorStore(SQLBase):
    """Operators and their hashed tokens."""

    # -- operators ----------------------------------------------------------------------
    @staticmethod
    def _operator(row: Any) -> OperatorRecord:
        return OperatorRecord(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            token_hash=bytes(row.token_hash),
            created_at=from_us(row.created_at_us),
            created_by=row.created_by,
            revoked_at=None if row.revoked_at_us is None else from_us(row.revoked_at_us),
        )

    async def create_operator(self, operator: OperatorRecord) -> None:
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"an operator named {operator.name!r} already exists")
        ) as conn:
            await conn.execute(
                t.operators.insert().values(
                    id=operator.id,
                    name=operator.name,
                    role=operator.role.value,
                    token_hash=operator.token_hash,
                    created_at_us=to_us(operator.created_at),
                    created_by=operator.created_by,
                    revoked_at_us=None if operator.revoked_at is None else to_us(operator.revoked_at),
                )
            )

    async def operator_by_token_hash(self, token_hash: bytes) -> OperatorRecord | None:
        async with self._tx(write=False) as conn:
            row = (
                await conn.execute(select(t.operators).where(t.operators.c.token_hash == token_hash))
            ).first()
        return None if row is None else self._operator(row)

    async def get_operator(self, operator_id: str) -> OperatorRecord | None:
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.operators).where(t.operators.c.id == operator_id))).first()
        return None if row is None else self._operator(row)

    async def list_operators(self) -> list[OperatorRecord]:
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(select(t.operators).order_by(t.operators.c.created_at_us))).all()
        return [self._operator(row) for row in rows]

    async def revoke_operator(self, operator_id: str, *, now: datetime, keep_an_admin: bool = True) -> bool:
        c = t.operators.c
        async with self._tx() as conn:
            if keep_an_admin:
                # Lock the active admins (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises).
                active_admins = select(c.id).where(and_(c.role == "admin", c.revoked_at_us.is_(None)))
                admins = (await conn.execute(active_admins.with_for_update())).scalars().all()
                if operator_id in admins and len(admins) == 1:
                    raise ConflictError("refusing to revoke the last active admin")
            result = await conn.execute(
                update(t.operators)
                .where(and_(c.id == operator_id, c.revoked_at_us.is_(None)))
                .values(revoked_at_us=to_us(now))
            )
        return bool(result.rowcount == 1)
