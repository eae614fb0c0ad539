"""SQL storage for destinations; mixed into :class:`~tether.store._sql.SQLStorage`.

A row holds the name, base URL and secret path as columns (so they can be queried) and the
rest of the destination as a JSON ``body``; a row is validated again when it is read, so a
tampered row is refused rather than forwarded to.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from tether.domain.destinations import Destination
from tether.errors import ConflictError, InvalidInputError, StorageError
from tether.store import schema as t
from tether.store._sqlbase import SQLBase, from_us, to_us

__all__ = ["DestinationStore"]

# Fields kept in columns, not in the JSON body (``host`` is derived from ``base_url``).
_COLUMNS = frozenset({"name", "base_url", "secret", "created_at", "host"})


class DestinationStore(SQLBase):
    """Storage methods for destinations."""

    @staticmethod
    def _destination(row: Any, prefix: str = "") -> Destination:
        def col(name: str) -> Any:
            return getattr(row, prefix + name)

        try:
            body = json.loads(col("body"))
            if not isinstance(body, dict):
                raise TypeError("body")
            return Destination.from_json(
                {
                    **body,
                    "name": col("name"),
                    "base_url": col("base_url"),
                    "secret": col("secret"),
                    "created_at": from_us(col("created_at_us")).isoformat(),
                }
            )
        except (InvalidInputError, ValueError, TypeError, KeyError) as exc:
            raise StorageError(f"a stored destination is invalid: {type(exc).__name__}") from None

    async def put_destination(self, destination: Destination) -> None:
        body = {k: v for k, v in destination.to_json().items() if k not in _COLUMNS}
        async with self._tx(
            on_duplicate=lambda: ConflictError(f"a destination named {destination.name!r} already exists")
        ) as conn:
            await conn.execute(
                t.destinations.insert().values(
                    name=destination.name,
                    base_url=destination.base_url,
                    secret=destination.secret,
                    body=json.dumps(body, sort_keys=True),
                    created_at_us=to_us(destination.created_at),
                )
            )

    async def get_destination(self, name: str) -> Destination | None:
        c = t.destinations.c
        async with self._tx(write=False) as conn:
            row = (await conn.execute(select(t.destinations).where(c.name == name))).first()
        return None if row is None else self._destination(row)

    async def list_destinations(self) -> list[Destination]:
        c = t.destinations.c
        async with self._tx(write=False) as conn:
            rows = (
                await conn.execute(select(t.destinations).order_by(c.name.collate(self._binary_collation)))
            ).all()
        return [self._destination(row) for row in rows]

    async def delete_destination(self, name: str) -> bool:
        c = t.destinations.c
        async with self._tx() as conn:
            result = await conn.execute(t.destinations.delete().where(c.name == name))
        return bool(result.rowcount == 1)
