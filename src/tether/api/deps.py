"""Request dependencies: the broker and the authenticated operator."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tether.broker import Broker
from tether.domain.operators import OperatorRecord
from tether.errors import AuthenticationError

__all__ = ["BrokerDep", "OperatorDep", "get_broker", "get_operator"]


async def get_broker(request: Request) -> Broker:
    """The app's broker. ``async`` on purpose: FastAPI runs a plain ``def`` dependency in its
    threadpool, a thread hand-off on every request for one attribute read."""
    broker: Broker = request.app.state.broker
    return broker


async def get_operator(request: Request, broker: Annotated[Broker, Depends(get_broker)]) -> OperatorRecord:
    """The operator behind ``Authorization: Bearer <token>``; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("an operator bearer token is required (Authorization: Bearer <token>)")
    return await broker.operators.authenticate(token.strip())


BrokerDep = Annotated[Broker, Depends(get_broker)]
OperatorDep = Annotated[OperatorRecord, Depends(get_operator)]
