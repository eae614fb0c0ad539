"""Operator authorisation: one place that says whether an operator may do a thing.

A refusal is a decision like any other: it is audited (who, what, which permission was
missing) before the caller learns of it.
"""

from __future__ import annotations

from tether.audit import Actor, AuditLog, DecisionSummary
from tether.domain.operators import OperatorRecord, Permission, role_allows
from tether.errors import PermissionDeniedError

__all__ = ["authorize", "operator_actor", "require"]


def operator_actor(operator: OperatorRecord) -> Actor:
    return Actor.operator(operator.name)


def require(actor: OperatorRecord, permission: Permission) -> None:
    """Raise unless ``actor`` may do ``permission`` (no audit; for pure checks)."""
    if not actor.active or not role_allows(actor.role, permission):
        raise PermissionDeniedError(f"role {actor.role.value!r} may not {permission.value}")


async def authorize(audit: AuditLog, actor: OperatorRecord, permission: Permission, resource: str) -> None:
    """:func:`require`, recording a ``decision`` event when the answer is no."""
    try:
        require(actor, permission)
    except PermissionDeniedError as exc:
        await audit.record(
            "decision",
            operator_actor(actor),
            resource=resource,
            decision=DecisionSummary(
                allowed=False,
                policies=(f"role:{actor.role.value}",),
                missing=(f"permission:{permission.value}",),
            ),
            reason=str(exc),
        )
        raise
