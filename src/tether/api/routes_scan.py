"""The sprawl scan (scanners, admins): ``POST /v1/scan``. Paths and fingerprints only, never a value."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import Field

from tether.api.deps import BrokerDep, OperatorDep
from tether.api.models import Request as RequestBody
from tether.broker.scan import Document, ScanLimiter, ScanLimits, ScanService
from tether.errors import InvalidInputError

router = APIRouter(tags=["scan"])

_MAX_CHARS = 1024 * 1024


class ScanDocumentIn(RequestBody):
    name: Annotated[str, Field(min_length=1, max_length=1024, description="A label: a file path, 'prompt'.")]
    text: Annotated[str, Field(max_length=_MAX_CHARS)]
    first_line: Annotated[
        int,
        Field(ge=1, le=2**53, description="The line number of the text's first line (a file sent in parts)."),
    ] = 1


class ScanRequest(RequestBody):
    """Either ``text`` (one document, named ``text``) or ``documents``; at most 1 MiB in all."""

    text: Annotated[str | None, Field(max_length=_MAX_CHARS)] = None
    documents: Annotated[list[ScanDocumentIn] | None, Field(max_length=1000)] = None
    ungoverned: Annotated[
        bool, Field(description="Also look for secrets Tether does not govern (detect-secrets plugins).")
    ] = True


def _service(request: Request, broker: BrokerDep) -> ScanService:
    limiter = getattr(request.app.state, "scan_limiter", None)
    if not isinstance(limiter, ScanLimiter):
        limiter = ScanLimiter(ScanLimits())
        request.app.state.scan_limiter = limiter
    return ScanService(broker.storage, broker.audit, broker.clock, broker.secrets, limiter)


@router.post("/v1/scan")
async def scan(body: ScanRequest, request: Request, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """Find governed secret values (plain, base64 at any alignment, hex, URL-encoded) and ungoverned
    secrets in text: each finding names the line, and the secret's path and HMAC fingerprint (or the
    kind of ungoverned secret), never a value. Rate-limited per operator."""
    if (body.text is None) == (body.documents is None):
        raise InvalidInputError("send either text or documents", field="text")
    if body.text is not None:
        documents = [Document("text", body.text)]
    else:
        documents = [Document(d.name, d.text, d.first_line) for d in body.documents or ()]
    report = await _service(request, broker).scan(actor, documents, ungoverned=body.ungoverned)
    return report.to_json()
