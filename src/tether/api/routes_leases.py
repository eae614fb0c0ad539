"""Leases of engine-issued credentials (operators): ``GET /v1/leases``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from tether.api.deps import BrokerDep, OperatorDep
from tether.broker.leases import LeaseService, LeaseState
from tether.domain.tasks import Lease

router = APIRouter(tags=["leases"])


class LeaseOut(BaseModel):
    id: str
    task_id: str
    grant_id: str
    engine: str
    state: LeaseState
    handle: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    engine_revoked_at: datetime | None

    @classmethod
    def of(cls, lease: Lease, state: LeaseState) -> LeaseOut:
        return cls(
            id=lease.id,
            task_id=lease.task_id,
            grant_id=lease.grant_id,
            engine=lease.engine,
            state=state,
            handle=dict(lease.handle),  # what the engine revokes by (a role's name): never a credential
            created_at=lease.created_at,
            expires_at=lease.expires_at,
            revoked_at=lease.revoked_at,
            engine_revoked_at=lease.engine_revoked_at,
        )


@router.get("/v1/leases")
async def list_leases(
    actor: OperatorDep,
    broker: BrokerDep,
    state: Annotated[str | None, Query(max_length=16)] = None,
    task: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Leases newest first: ``state`` is ``active``, ``revoking``, ``failed`` (revocation still
    unconfirmed 30 s after the lease ended; retried) or ``revoked``."""
    service = LeaseService(broker.storage, broker.audit, broker.clock)
    listed = await service.list_for_operator(actor, state=state, task_id=task, limit=limit)
    return {
        "items": [LeaseOut.of(lease, lease_state).model_dump(mode="json") for lease, lease_state in listed]
    }
