"""Secret administration. Values are write-only: no route returns one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from tether.api.deps import BrokerDep, OperatorDep
from tether.api.models import SecretList, SecretOut, SecretPatch, SecretRotate, SecretWrite
from tether.api.problems import Problem
from tether.broker.secrets import MetadataChange
from tether.domain.secrets import SecretMetadata, Sensitivity

router = APIRouter(tags=["secrets"])

ROTATE_SUFFIX = ":rotate"


@router.get("/v1/secrets")
async def list_secrets(
    broker: BrokerDep,
    operator: OperatorDep,
    prefix: Annotated[str, Query(max_length=256)] = "",
    after: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SecretList:
    """Secrets whose path starts with ``prefix``, in path order, a page at a time."""
    page = await broker.secrets.list(operator, prefix, after=after, limit=limit)
    now = broker.clock.now()
    return SecretList(secrets=[SecretOut.of(r, now) for r in page.items], next_after=page.next_after)


@router.put(
    "/v1/secrets/{path:path}",
    status_code=200,
    responses={201: {"description": "Created: the first version of a new secret", "model": SecretOut}},
)
async def put_secret(
    path: str,
    body: SecretWrite,
    broker: BrokerDep,
    operator: OperatorDep,
    request: Request,
    response: Response,
) -> SecretOut:
    """Write a new version of a secret with its metadata. The value is never returned."""
    metadata = SecretMetadata(
        sensitivity=Sensitivity.parse(body.sensitivity),
        purposes=frozenset(body.purposes),
        destinations=frozenset(body.destinations),
        owner=body.owner,
        rotation_period_seconds=body.rotation_period_seconds,
    )
    record = await broker.secrets.put(operator, path, body.value, metadata, cas=body.cas)
    request.app.state.metrics.secret_writes.labels("put").inc()
    if record.current_version == 1:
        response.status_code = 201
    return SecretOut.of(record, broker.clock.now())


@router.post("/v1/secrets/{path:path}")
async def rotate_secret(
    path: str, body: SecretRotate, broker: BrokerDep, operator: OperatorDep, request: Request
) -> SecretOut:
    """``POST /v1/secrets/{path}:rotate``: a new version with a new value; metadata is kept.
    (``:`` never occurs in a secret path, so the suffix is unambiguous.)"""
    if not path.endswith(ROTATE_SUFFIX):
        raise Problem(405, "method-not-allowed", "Method not allowed", "POST is only for {path}:rotate")
    record = await broker.secrets.rotate(operator, path.removesuffix(ROTATE_SUFFIX), body.value)
    request.app.state.metrics.secret_writes.labels("rotate").inc()
    return SecretOut.of(record, broker.clock.now())


@router.patch("/v1/secrets/{path:path}")
async def update_secret(path: str, body: SecretPatch, broker: BrokerDep, operator: OperatorDep) -> SecretOut:
    """Change a secret's metadata only (sensitivity, purposes, destinations, owner, rotation
    period): no value is sent, no version is added, and what is omitted stays as it is."""
    change = MetadataChange(
        sensitivity=Sensitivity.parse(body.sensitivity) if body.sensitivity is not None else None,
        purposes=frozenset(body.purposes) if body.purposes is not None else None,
        add_purposes=frozenset(body.add_purposes),
        remove_purposes=frozenset(body.remove_purposes),
        destinations=frozenset(body.destinations) if body.destinations is not None else None,
        add_destinations=frozenset(body.add_destinations),
        remove_destinations=frozenset(body.remove_destinations),
        owner=body.owner,
        rotation_period_seconds=body.rotation_period_seconds,
        set_rotation_period="rotation_period_seconds" in body.model_fields_set,
    )
    record = await broker.secrets.update_metadata(operator, path, change)
    return SecretOut.of(record, broker.clock.now())


@router.get("/v1/secrets/{path:path}")
async def show_secret(path: str, broker: BrokerDep, operator: OperatorDep) -> SecretOut:
    """A secret's metadata and versions."""
    record = await broker.secrets.show(operator, path)
    return SecretOut.of(record, broker.clock.now(), versions=True)


@router.delete("/v1/secrets/{path:path}", status_code=204, response_class=Response)
async def delete_secret(path: str, broker: BrokerDep, operator: OperatorDep) -> Response:
    """Soft delete: the secret disappears from reads; its versions are kept."""
    await broker.secrets.delete(operator, path)
    return Response(status_code=204)
