"""Operator authorisation: one place that says whether an operator may do a thing."""

from __future__ import annotations

from tether.domain.operators import OperatorRecord, Permission, role_allows
from tether.errors import PermissionDeniedError

__all__ = ["require"]


def require(actor: OperatorRecord, permission: Permission) -> None:
    if not actor.active or not role_allows(actor.role, permission):
        raise PermissionDeniedError(f"role {actor.role.value!r} may not {permission.value}")
