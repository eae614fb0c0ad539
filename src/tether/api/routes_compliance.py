"""The compliance report (auditors, admins): ``GET /v1/compliance/report``. Counts, ids and paths
only, never a secret value."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, PlainTextResponse

from tether.api.deps import BrokerDep, OperatorDep
from tether.broker.compliance import ComplianceService
from tether.evidence.compliance_render import render_html, render_markdown

router = APIRouter(tags=["compliance"])


class ReportFormat(StrEnum):
    JSON = "json"
    MD = "md"
    HTML = "html"


@router.get(
    "/v1/compliance/report",
    response_model=None,
    responses={
        200: {
            "content": {
                "application/json": {},
                "text/markdown": {},
                "text/html": {},
            },
            "description": "The report: JSON (default), Markdown or a self-contained HTML page.",
        }
    },
)
async def compliance_report(
    actor: OperatorDep,
    broker: BrokerDep,
    since: Annotated[
        str, Query(max_length=16, description="The window: 30d, 12h, 90m (at most 366d)")
    ] = "30d",
    format: Annotated[ReportFormat, Query(description="json, md or html")] = ReportFormat.JSON,
) -> dict[str, Any] | PlainTextResponse | HTMLResponse:
    """Tether's controls mapped to OWASP ASI01-ASI10, OWASP NHI1-NHI10 and NIST AI RMF subcategories,
    each with evidence computed from this deployment's data over the window; the mapping's version
    and a one-paragraph ``summary`` come first. A control with no evidence in the window says so."""
    service = ComplianceService(
        broker.storage, broker.audit, broker.clock, broker.settings, broker.policies, broker.engines
    )
    report = await service.report(actor, since)
    if format is ReportFormat.MD:
        return PlainTextResponse(render_markdown(report), media_type="text/markdown; charset=utf-8")
    if format is ReportFormat.HTML:
        return HTMLResponse(render_html(report))
    return report.to_json()
