"""SQL storage for destinations; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

from tether.store._sqlbase import SQLBase

__all__ = ["DestinationStore"]


class DestinationStore(SQLBase):
    """Storage methods for destinations."""
