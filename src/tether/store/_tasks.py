"""SQL storage for tasks; mixed into :class:`~tether.store._sql.SQLStorage`."""

from __future__ import annotations

from tether.store._sqlbase import SQLBase

__all__ = ["TaskStore"]


class TaskStore(SQLBase):
    """Storage methods for tasks."""
