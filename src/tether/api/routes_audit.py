"""Audit: query, export, verify, checkpoints, fingerprints (auditor or admin)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tether.api.deps import BrokerDep, OperatorDep
from tether.api.models import Request
from tether.audit import MAX_QUERY_LIMIT, AuditFilter, checkpoint_to_json, event_to_json
from tether.broker.access import authorize
from tether.domain.operators import Permission
from tether.errors import InvalidInputError, NotFoundError

MAX_INT64 = 2**63 - 1  # database integers: larger cursors and versions are invalid input

router = APIRouter(tags=["audit"])

_EXPORT_PAGE = 1000


class EventPage(BaseModel):
    events: list[dict[str, Any]]
    next_after: int | None = Field(None, description="Pass as `after` to get the next page.")


class HashRequest(Request):
    value: Annotated[
        str, Field(min_length=1, max_length=1024 * 1024, description="A value you already know.")
    ]


class HashResponse(BaseModel):
    fingerprint: str


def _filter(
    kind: str | None,
    actor: str | None,
    task: str | None,
    resource: str | None,
    secret: str | None,
    allowed: bool | None,
    since: datetime | None,
    until: datetime | None,
) -> AuditFilter:
    if secret is not None:
        if resource is not None:
            raise InvalidInputError("give either secret or resource, not both", field="secret")
        resource = f"secret:{secret}"
    return AuditFilter(
        kind=kind, actor=actor, task_id=task, resource=resource, allowed=allowed, since=since, until=until
    )


@router.get("/v1/audit/events")
async def query_events(
    broker: BrokerDep,
    operator: OperatorDep,
    kind: Annotated[
        str | None, Query(max_length=64, description="A kind, or a family such as `secret.*`")
    ] = None,
    actor: Annotated[str | None, Query(max_length=512)] = None,
    task: Annotated[str | None, Query(max_length=512)] = None,
    resource: Annotated[str | None, Query(max_length=512)] = None,
    secret: Annotated[
        str | None, Query(max_length=256, description="Shorthand for resource=secret:<path>")
    ] = None,
    allowed: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: Annotated[int, Query(ge=0, le=MAX_INT64, description="Cursor: the last seq already seen")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 100,
) -> EventPage:
    """Events in sequence order, filtered, a page at a time."""
    await authorize(broker.audit, operator, Permission.AUDIT_READ, "audit:events")
    where = _filter(kind, actor, task, resource, secret, allowed, since, until)
    page = await broker.audit.query(where, after_seq=after, limit=limit)
    return EventPage(events=[event_to_json(e) for e in page.events], next_after=page.next_after)


@router.get("/v1/audit/export", response_class=StreamingResponse)
async def export_events(
    broker: BrokerDep, operator: OperatorDep, after: Annotated[int, Query(ge=0, le=MAX_INT64)] = 0
) -> StreamingResponse:
    """The whole chain (from ``after``) as JSON Lines, for offline verification."""
    await authorize(broker.audit, operator, Permission.AUDIT_READ, "audit:export")

    async def lines() -> AsyncIterator[bytes]:
        cursor = after
        while True:
            page = await broker.audit.query(None, after_seq=cursor, limit=_EXPORT_PAGE)
            if page.events:
                yield "".join(
                    json.dumps(event_to_json(e), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                    + "\n"
                    for e in page.events
                ).encode("utf-8")
            if page.next_after is None:
                return
            cursor = page.next_after

    return StreamingResponse(lines(), media_type="application/jsonl")


@router.get("/v1/audit/verify")
async def verify(broker: BrokerDep, operator: OperatorDep) -> dict[str, Any]:
    """Walk the whole chain and the stored checkpoints: ok, or the first broken seq and why."""
    await authorize(broker.audit, operator, Permission.AUDIT_READ, "audit:verify")
    return (await broker.audit.verify()).to_json()


@router.post("/v1/audit/checkpoints", status_code=201)
async def checkpoint(broker: BrokerDep, operator: OperatorDep) -> dict[str, Any]:
    """Sign the chain's head now. Keep the result outside Tether: it is what proves truncation."""
    await authorize(broker.audit, operator, Permission.AUDIT_READ, "audit:checkpoint")
    return checkpoint_to_json(await broker.audit.checkpoint())


@router.get("/v1/audit/checkpoints/latest")
async def latest_checkpoint(broker: BrokerDep, operator: OperatorDep) -> dict[str, Any]:
    await authorize(broker.audit, operator, Permission.AUDIT_READ, "audit:checkpoint")
    found = await broker.audit.latest_checkpoint()
    if found is None:
        raise NotFoundError("no checkpoint yet")
    return checkpoint_to_json(found)


@router.post("/v1/audit/hash")
async def fingerprint(body: HashRequest, broker: BrokerDep, operator: OperatorDep) -> HashResponse:
    """The deployment's HMAC fingerprint of a value you know, to find its uses in the log."""
    await authorize(broker.audit, operator, Permission.AUDIT_READ, "audit:hash")
    return HashResponse(fingerprint=broker.audit.fingerprint(body.value))
