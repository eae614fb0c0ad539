"""Shared Signals (SSF 1.0 / CAEP) transmitter: ``/.well-known/ssf-configuration`` and stream
management (``/v1/ssf/…``: admins manage streams, auditors read them and their delivery logs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field

from tether.api.deps import BrokerDep, OperatorDep
from tether.api.models import Request as RequestBody
from tether.broker import Broker
from tether.broker.signals import SignalService
from tether.evidence.signals import DELIVERY_PUSH

router = APIRouter(tags=["signals"])


class DeliveryIn(RequestBody):
    method: Annotated[Literal["urn:ietf:rfc:8935"], Field(description="Push delivery (RFC 8935).")] = (
        DELIVERY_PUSH
    )
    endpoint_url: Annotated[
        str, Field(min_length=1, max_length=2048, description="The receiver: https (http only for loopback).")
    ]


class StreamIn(RequestBody):
    delivery: DeliveryIn
    events_requested: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=256)]],
        Field(
            min_length=1,
            max_length=16,
            description="session-revoked, credential-change, task-context-change, or their URIs.",
        ),
    ]
    aud: Annotated[str | None, Field(min_length=1, max_length=512)] = None
    description: Annotated[str, Field(max_length=256)] = ""


class StatusIn(RequestBody):
    stream_id: Annotated[str, Field(min_length=1, max_length=64)]
    status: Literal["enabled", "paused", "disabled"]
    reason: Annotated[str, Field(max_length=200)] = ""


class VerifyIn(RequestBody):
    stream_id: Annotated[str, Field(min_length=1, max_length=64)]
    state: Annotated[str | None, Field(max_length=256)] = None


def _service(broker: Broker) -> SignalService:
    return SignalService(
        broker.storage, broker.audit, broker.clock, broker.settings, transmitter=broker.signals
    )


@router.get("/.well-known/ssf-configuration")
async def ssf_configuration(request: Request, broker: BrokerDep) -> dict[str, Any]:
    """The transmitter's configuration (SSF 1.0 §7.1): issuer, JWKS, delivery method, endpoints."""
    base = str(broker.settings.public_url or str(request.base_url)).rstrip("/")
    return _service(broker).configuration(base)


@router.post("/v1/ssf/streams", status_code=201)
async def create_stream(body: StreamIn, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """Register a receiver and the events it wants (``signals.manage``: admins)."""
    stream = await _service(broker).create_stream(
        actor,
        endpoint_url=body.delivery.endpoint_url,
        events_requested=body.events_requested,
        audience=body.aud,
        description=body.description,
    )
    return stream.to_json()


@router.get("/v1/ssf/streams")
async def list_streams(
    actor: OperatorDep,
    broker: BrokerDep,
    stream_id: Annotated[str | None, Query(max_length=64, description="One stream (SSF style).")] = None,
) -> dict[str, Any]:
    """Every stream (``audit.read``), or the one named by ``stream_id``."""
    service = _service(broker)
    if stream_id is not None:
        return (await service.get_stream(actor, stream_id)).to_json()
    return {"items": [s.to_json() for s in await service.list_streams(actor)]}


@router.get("/v1/ssf/streams/{stream_id}")
async def get_stream(stream_id: str, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    return (await _service(broker).get_stream(actor, stream_id)).to_json()


@router.delete("/v1/ssf/streams/{stream_id}", status_code=204)
async def delete_stream(stream_id: str, actor: OperatorDep, broker: BrokerDep) -> Response:
    """Remove the stream and its delivery log (``signals.manage``)."""
    await _service(broker).delete_stream(actor, stream_id)
    return Response(status_code=204)


@router.get("/v1/ssf/status")
async def stream_status(
    actor: OperatorDep, broker: BrokerDep, stream_id: Annotated[str, Query(min_length=1, max_length=64)]
) -> dict[str, Any]:
    stream = await _service(broker).get_stream(actor, stream_id)
    return {"stream_id": stream.id, "status": stream.status}


@router.post("/v1/ssf/status")
async def update_status(body: StatusIn, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """``enabled``, ``paused`` (SETs are kept and sent when enabled again) or ``disabled``."""
    stream = await _service(broker).set_status(actor, body.stream_id, body.status, body.reason)
    return {"stream_id": stream.id, "status": stream.status}


@router.post("/v1/ssf/verify", status_code=202)
async def verify(body: VerifyIn, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """Send the stream a verification SET (with ``state`` echoed); see its delivery log for the outcome."""
    delivery = await _service(broker).verify(actor, body.stream_id, body.state)
    return delivery.to_json()


@router.get("/v1/ssf/streams/{stream_id}/deliveries")
async def deliveries(
    stream_id: str,
    actor: OperatorDep,
    broker: BrokerDep,
    status: Annotated[Literal["pending", "delivered", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """The stream's delivery log, newest first: each SET's type, subject, status, attempts, last error."""
    found = await _service(broker).deliveries(actor, stream_id, status=status, limit=limit)
    return {"items": [d.to_json() for d in found]}
