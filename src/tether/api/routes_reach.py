"""Reach (auditors and admins): ``GET /v1/reach/secrets/{path}``, ``GET /v1/reach/agents/{name}``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from tether.api.deps import BrokerDep, OperatorDep
from tether.broker.reach import ReachService, report_to_json

router = APIRouter(tags=["reach"])


def _service(broker: BrokerDep) -> ReachService:
    return ReachService(
        broker.storage, broker.audit, broker.clock, broker.settings, broker.policies, broker.engines
    )


@router.get("/v1/reach/findings")
async def reach_findings(
    actor: OperatorDep,
    broker: BrokerDep,
    since: Annotated[str, Query(max_length=16, description="The audit window: 30d, 12h, 90m")] = "30d",
) -> dict[str, Any]:
    """Standing-privilege findings, each naming the policies that cause it."""
    found, truncated = await _service(broker).findings(actor, since)
    return {"since": since, "findings": [finding.to_json() for finding in found], "truncated": truncated}


@router.get("/v1/reach/secrets/{path:path}")
async def reach_of_secret(path: str, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """Who could issue or activate the secret, under which conditions (exact, through the active
    policy set), and what is live now: tasks that declare it, usable grants, leases, destinations."""
    report = await _service(broker).of_secret(actor, path)
    return report_to_json(report, broker.clock.now())


@router.get("/v1/reach/agents/{name}")
async def reach_of_agent(name: str, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """Every secret the agent could issue or activate, under which conditions; its live tasks and grants."""
    report = await _service(broker).of_agent(actor, name)
    return report_to_json(report, broker.clock.now())
