"""Policy sets (operators, bearer tokens): deploy, validate, show, versions, rollback."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from tether.api.deps import BrokerDep, OperatorDep
from tether.broker.policies import MAX_COMMENT_CHARS
from tether.broker.policy_replay import PolicyReplayService
from tether.store.base import PolicySetRecord

MAX_INT64 = 2**63 - 1  # database integers: larger cursors and versions are invalid input

router = APIRouter(tags=["policies"])


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class PolicyDeploy(_Request):
    policies: Annotated[str, Field(description="The whole policy set, Cedar text.")]
    comment: Annotated[str, Field(max_length=MAX_COMMENT_CHARS)] = ""
    allow_empty: Annotated[
        bool,
        Field(
            description="Deploy a set without a single policy. Such a set denies every agent every "
            "action; without this flag it is refused (422)."
        ),
    ] = False


class PolicyValidate(_Request):
    policies: Annotated[str, Field(description="A policy set to check, Cedar text.")]


class PolicyReplay(_Request):
    policies: Annotated[
        str | None,
        Field(description="The candidate policy set, Cedar text (optional with verify)."),
    ] = None
    since: Annotated[str, Field(max_length=16, description="The audit window: 7d, 12h, 90m, 3600s.")] = "7d"
    agent: Annotated[str | None, Field(max_length=400, description="Only this agent's decisions.")] = None
    secret: Annotated[str | None, Field(max_length=256, description="Only decisions about this secret.")] = (
        None
    )
    verify: Annotated[
        bool,
        Field(
            description="Also replay each decision with the policy version that made it: every "
            "decision must be reproduced exactly (`verify.reproduced`)."
        ),
    ] = False


class PolicyRollback(_Request):
    version: Annotated[int, Field(ge=1, le=MAX_INT64, description="The stored version to make active again.")]


class PolicySetSummary(BaseModel):
    version: int
    sha256: str
    policy_ids: list[str] = Field(description="The policies' @id annotations, in order.")
    created_at: datetime
    created_by: str
    comment: str
    active: bool

    @classmethod
    def of(cls, record: PolicySetRecord, active: bool) -> PolicySetSummary:
        return cls(
            version=record.version,
            sha256=record.sha256,
            policy_ids=list(record.policy_ids),
            created_at=record.created_at,
            created_by=record.created_by,
            comment=record.comment,
            active=active,
        )


class PolicySetOut(PolicySetSummary):
    policies: str = Field(description="The policy set, Cedar text, exactly as deployed.")

    @classmethod
    def full(cls, record: PolicySetRecord, active: bool) -> PolicySetOut:
        return cls(**PolicySetSummary.of(record, active).model_dump(), policies=record.text)


class PolicyVersions(BaseModel):
    versions: list[PolicySetSummary]
    active_version: int | None
    next_after: int | None = Field(None, description="Pass as `after` to get the next (older) page.")


class ValidationOut(BaseModel):
    valid: bool
    policy_ids: list[str]
    sha256: str


@router.put("/v1/policies", status_code=201)
async def deploy_policies(body: PolicyDeploy, broker: BrokerDep, operator: OperatorDep) -> PolicySetSummary:
    """Deploy a policy set as the newest, active version. A set that fails validation against
    the schema is refused (422) with the validator's messages in `errors`; so is a set without
    a single policy (it denies everything) unless `allow_empty` is true."""
    record = await broker.policies.deploy(operator, body.policies, body.comment, allow_empty=body.allow_empty)
    return PolicySetSummary.of(record, True)


@router.get("/v1/policies")
async def active_policies(broker: BrokerDep, operator: OperatorDep) -> PolicySetOut:
    """The active policy set (404 before the first deploy: everything is denied)."""
    record = await broker.policies.show(operator)
    return PolicySetOut.full(record, True)


@router.get("/v1/policies/versions")
async def policy_versions(
    broker: BrokerDep,
    operator: OperatorDep,
    after: Annotated[int | None, Query(ge=1, le=MAX_INT64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> PolicyVersions:
    """Deployed versions, newest first."""
    records, active = await broker.policies.versions(operator, limit=limit + 1, after=after)
    more = len(records) > limit
    records = records[:limit]
    return PolicyVersions(
        versions=[PolicySetSummary.of(r, r.version == active) for r in records],
        active_version=active,
        next_after=records[-1].version if more and records else None,
    )


@router.get("/v1/policies/{version}")
async def show_policy_version(
    version: Annotated[int, Path(ge=1, le=MAX_INT64)], broker: BrokerDep, operator: OperatorDep
) -> PolicySetOut:
    """One deployed version, with its text."""
    record = await broker.policies.show(operator, version)
    return PolicySetOut.full(record, record.version == await broker.policies.active_version())


@router.post("/v1/policies/rollback")
async def rollback_policies(
    body: PolicyRollback, broker: BrokerDep, operator: OperatorDep
) -> PolicySetSummary:
    """Make a stored version active again."""
    record = await broker.policies.rollback(operator, body.version)
    return PolicySetSummary.of(record, True)


@router.post("/v1/policies/validate")
async def validate_policies(body: PolicyValidate, broker: BrokerDep, operator: OperatorDep) -> ValidationOut:
    """Check a policy set against the schema without deploying it (422 with messages if invalid)."""
    compiled = await broker.policies.validate(operator, body.policies)
    return ValidationOut(valid=True, policy_ids=list(compiled.policy_ids), sha256=compiled.sha256)


@router.post("/v1/policies/replay")
async def replay_policies(body: PolicyReplay, broker: BrokerDep, operator: OperatorDep) -> dict[str, Any]:
    """What a candidate policy set would have decided differently over the audit window
    (allowed → denied, denied → allowed, other determining policies), grouped by policy and by
    agent; with `verify`, the self-check. Deploys nothing. A candidate that does not parse or
    validate is a 422 whose `errors` give line and column; a window holding more decisions than
    the setting `replay_max_decisions` is a 422 saying how many and how to narrow it."""
    service = PolicyReplayService(
        broker.storage, broker.audit, broker.clock, broker.settings, broker.policies
    )
    answer = await service.replay(
        operator, body.policies, body.since, agent=body.agent, secret=body.secret, verify=body.verify
    )
    return answer.to_json()
