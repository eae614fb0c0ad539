"""Operator authorisation: one place that says whether an operator may do a thing.

A refusal is a decision like any other: it is audited (who, what, which permission was
missing) before the caller learns of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from tether.audit import Actor, AuditLog, DecisionSummary
from tether.domain.operators import OperatorRecord, Permission, role_allows
from tether.errors import PermissionDeniedError, TetherError

__all__ = ["authorize", "operator_actor", "record_failure", "require"]


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


async def record_failure(
    audit: AuditLog,
    kind: str,
    actor: OperatorRecord,
    resource: str,
    exc: Exception,
    data: Mapping[str, object] | None = None,
) -> None:
    """After an action whose request was recorded has failed, record the failure too.

    Best effort: the action already failed and that error is what the caller must see.
    """
    with contextlib.suppress(TetherError):
        await audit.record(
            kind,
            operator_actor(actor),
            resource=resource,
            reason=f"failed: {type(exc).__name__}",
            data={**(data or {}), "outcome": "failed"},
        )
