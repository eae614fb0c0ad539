"""Operator administration."""

from __future__ import annotations

from fastapi import APIRouter

from tether.api.deps import BrokerDep, OperatorDep
from tether.api.models import OperatorCreate, OperatorCreated, OperatorList, OperatorOut
from tether.domain.operators import Role

router = APIRouter(tags=["operators"])


@router.get("/v1/operators/me")
async def whoami(operator: OperatorDep) -> OperatorOut:
    """The operator behind the presented token."""
    return OperatorOut.of(operator)


@router.post("/v1/operators", status_code=201)
async def create_operator(body: OperatorCreate, broker: BrokerDep, operator: OperatorDep) -> OperatorCreated:
    """A new operator. Its token is in this response and nowhere else, ever."""
    record, token = await broker.operators.create(operator, body.name, Role.parse(body.role))
    return OperatorCreated(**OperatorOut.of(record).model_dump(), token=token)


@router.get("/v1/operators")
async def list_operators(broker: BrokerDep, operator: OperatorDep) -> OperatorList:
    return OperatorList(operators=[OperatorOut.of(r) for r in await broker.operators.list(operator)])


@router.post("/v1/operators/{name_or_id}/revoke")
async def revoke_operator(name_or_id: str, broker: BrokerDep, operator: OperatorDep) -> OperatorOut:
    """Revoke an operator's token at once. The last active admin cannot be revoked."""
    return OperatorOut.of(await broker.operators.revoke(operator, name_or_id))
