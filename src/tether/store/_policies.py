"""Policy set storage on SQLAlchemy; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.errors import (
    ConflictError,
    NotFoundError,
    StorageError,
)
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, from_us, to_us
from tether.store.base import (
    PolicySetRecord,
)

__all__ = ["PolicyStore"]


class PolicyStore(SQLBase):
    """Deployed policy set versions and the active one."""

    # -- policy sets ------------------------------------------------------------------------------
    @staticmethod
    def _policy_set(row: Any) -> PolicySetRecord:
        try:
            ids = json.loads(row.policy_ids)
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise TypeError("policy_ids")
            return PolicySetRecord(
                version=int(row.version),
                text=row.text,
                sha256=row.sha256,
                policy_ids=tuple(ids),
                created_at=from_us(row.created_at_us),
                created_by=row.created_by,
                comment=row.comment,
            )
        except (ValueError, TypeError) as exc:
            raise StorageError(f"a stored policy set is invalid: {type(exc).__name__}") from None

    @staticmethod
    async def _locked_active(conn: AsyncConnection) -> int | None:
        a = t.policy_active.c
        value = (
            await conn.execute(select(a.version).where(a.id == 1).with_for_update())
        ).scalar_one_or_none()
        return None if value is None else int(value)

    @staticmethod
    async def _set_active(conn: AsyncConnection, version: int, expected_active: int | None) -> None:
        a = t.policy_active.c
        if expected_active is None:
            await conn.execute(t.policy_active.insert().values(id=1, version=version))
            return
        result = await conn.execute(
            update(t.policy_active)
            .where(and_(a.id == 1, a.version == expected_active))
            .values(version=version)
        )
        if result.rowcount != 1:
            raise ConflictError("the active policy set changed concurrently")

    async def put_policy_set(
        self,
        text: str,
        sha256: str,
        policy_ids: Sequence[str],
        created_by: str,
        now: datetime,
        *,
        comment: str = "",
        expected_active: int | None,
    ) -> PolicySetRecord:
        p = t.policy_sets.c
        async with self._tx(
            on_duplicate=lambda: ConflictError("another policy set was deployed concurrently")
        ) as conn:
            active = await self._locked_active(conn)
            if active != expected_active:
                raise ConflictError(
                    f"the active policy set is version {active}, not {expected_active}"
                    if active is not None
                    else "no policy set is active yet"
                )
            newest = (await conn.execute(select(func.max(p.version)))).scalar_one_or_none()
            version = int(newest or 0) + 1
            values = {
                "version": version,
                "text": text,
                "sha256": sha256,
                "policy_ids": json.dumps(list(policy_ids)),
                "created_at_us": to_us(now),
                "created_by": created_by,
                "comment": comment,
            }
            await conn.execute(t.policy_sets.insert().values(**values))
            await self._set_active(conn, version, expected_active)
        return PolicySetRecord(
            version=version,
            text=text,
            sha256=sha256,
            policy_ids=tuple(policy_ids),
            created_at=from_us(to_us(now)),
            created_by=created_by,
            comment=comment,
        )

    async def get_policy_set(self, version: int) -> PolicySetRecord | None:
        p = t.policy_sets.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.policy_sets).where(p.version == version))).first()
        return None if row is None else self._policy_set(row)

    async def active_policy_set(self) -> PolicySetRecord | None:
        p, a = t.policy_sets.c, t.policy_active.c
        query = select(t.policy_sets).join_from(t.policy_active, t.policy_sets, a.version == p.version)
        async with self._tx(write=False) as conn:
            row = (await conn.execute(query.where(a.id == 1))).first()
        return None if row is None else self._policy_set(row)

    async def active_policy_version(self) -> int | None:
        a = t.policy_active.c
        async with self._tx(write=False) as conn:
            value = (await conn.execute(select(a.version).where(a.id == 1))).scalar_one_or_none()
        return None if value is None else int(value)

    async def list_policy_sets(self, *, limit: int = 100, after: int | None = None) -> list[PolicySetRecord]:
        if limit < 1:
            raise StorageError("limit must be at least 1")
        p = t.policy_sets.c
        query = select(t.policy_sets).order_by(p.version.desc()).limit(limit)
        if after is not None:
            query = query.where(p.version < after)
        async with self._tx(write=False) as conn:
            rows = (await conn.execute(query)).all()
        return [self._policy_set(row) for row in rows]

    async def activate_policy_version(self, version: int, *, expected_active: int | None) -> None:
        p = t.policy_sets.c
        async with self._tx(
            on_duplicate=lambda: ConflictError("the active policy set changed concurrently")
        ) as conn:
            active = await self._locked_active(conn)
            if active != expected_active:
                raise ConflictError("the active policy set changed concurrently")
            found = (await conn.execute(select(p.version).where(p.version == version))).first()
            if found is None:
                raise NotFoundError(f"no policy set version {version}")
            await self._set_active(conn, version, expected_active)
