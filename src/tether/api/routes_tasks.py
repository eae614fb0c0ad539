"""The governed path over HTTP: tasks, grants, activation, approvals, revocation.

Agents authenticate with ``Authorization: DPoP`` and a proof; operators with ``Bearer``. The
routes that both may call pick by the scheme. Denials are 403 problems carrying their decision.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.api.deps import BrokerDep, OperatorDep, get_operator
from tether.api.models import SensitivityName
from tether.api.routes_auth import ActivatingCallerDep, AgentCallerDep, agent_caller, get_agent_caller
from tether.broker import Broker
from tether.broker.auth import AgentCaller
from tether.broker.grants import GrantOutcome
from tether.broker.tasks import OpenedTask
from tether.domain.commands import MAX_GRANTS_PER_TASK, MAX_USES, Delegate, IssueGrant, OpenTask, UpdateTask
from tether.domain.decision import Decision
from tether.domain.operators import OperatorRecord
from tether.domain.tasks import Approval, Ended, Grant, GrantMode, Task
from tether.errors import InvalidInputError

router = APIRouter(tags=["tasks"])

IdParam = Annotated[str, Path(min_length=1, max_length=64)]
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


Names = Annotated[list[str], Field(max_length=64)]


class GrantCreate(_Request):
    secret: Annotated[str | None, Field(min_length=1, max_length=256)] = None
    destination: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    mode: Literal["inject", "reveal", "dynamic"] = "inject"
    ttl_seconds: Annotated[int | None, Field(ge=1, le=30 * 86_400)] = None
    max_uses: Annotated[int | None, Field(ge=1, le=MAX_USES)] = None

    def command(self) -> IssueGrant:
        return IssueGrant(
            secret=self.secret,
            destination=self.destination,
            mode=GrantMode(self.mode),
            ttl_seconds=self.ttl_seconds,
            max_uses=self.max_uses,
        )


class TaskCreate(_Request):
    purpose: Annotated[
        str, Field(min_length=1, max_length=64, description="A purpose from the deployment's vocabulary.")
    ]
    objective: Annotated[
        str, Field(min_length=1, max_length=2000, description="What the task is for, in words.")
    ]
    sensitivity: SensitivityName = "internal"
    secrets: Names = []
    destinations: Names = []
    tools: Names = []
    ttl_seconds: Annotated[int | None, Field(ge=1, le=30 * 86_400)] = None
    grants: Annotated[
        list[GrantCreate],
        Field(
            max_length=MAX_GRANTS_PER_TASK,
            description=f"Grants to issue in the same request (at most {MAX_GRANTS_PER_TASK}), each "
            "decided on its own; none is issued if the task is refused or waits for an approval.",
        ),
    ] = []

    def command(self) -> OpenTask:
        return OpenTask(
            purpose=self.purpose,
            objective=self.objective,
            sensitivity=self.sensitivity,
            secrets=self.secrets,
            destinations=self.destinations,
            tools=self.tools,
            ttl_seconds=self.ttl_seconds,
            grants=[_item(index, grant) for index, grant in enumerate(self.grants)],
        )


def _item(index: int, grant: GrantCreate) -> IssueGrant:
    """The command of the request's grant ``index`` (a 422 names the item)."""
    try:
        return grant.command()
    except InvalidInputError as exc:
        field = f"grants.{index}.{exc.field or 'secret'}"
        raise InvalidInputError(f"grants.{index}: {exc}", field=field) from None


class TaskPatch(_Request):
    purpose: Annotated[str | None, Field(min_length=1, max_length=64)] = None
    objective: Annotated[str | None, Field(min_length=1, max_length=2000)] = None
    sensitivity: SensitivityName | None = None
    secrets: Names | None = None
    destinations: Names | None = None
    tools: Names | None = None

    def command(self) -> UpdateTask:
        return UpdateTask(
            purpose=self.purpose,
            objective=self.objective,
            sensitivity=self.sensitivity,
            secrets=self.secrets,
            destinations=self.destinations,
            tools=self.tools,
        )


class DelegationCreate(_Request):
    agent: Annotated[str, Field(min_length=1, max_length=400, description="The delegate: SPIFFE ID or name.")]
    objective: Annotated[str, Field(min_length=1, max_length=2000)]
    secrets: Names = []
    destinations: Names = []
    tools: Names = []
    sensitivity: SensitivityName | None = Field(default=None, description="Default: the parent's.")
    ttl_seconds: Annotated[
        int | None,
        Field(ge=1, le=30 * 86_400, description="Default and maximum: the parent's remaining time."),
    ] = None

    def command(self) -> Delegate:
        return Delegate(
            agent=self.agent,
            objective=self.objective,
            secrets=self.secrets,
            destinations=self.destinations,
            tools=self.tools,
            sensitivity=self.sensitivity,
            ttl_seconds=self.ttl_seconds,
        )


class Reason(_Request):
    reason: Annotated[str, Field(max_length=500)] = ""


class ApprovalDecision(_Request):
    reason: Annotated[str, Field(min_length=1, max_length=500, description="Why (required, audited).")]


class RevocationCreate(_Request):
    task: Annotated[str | None, Field(max_length=64)] = None
    agent: Annotated[str | None, Field(max_length=400, description="Agent name or SPIFFE ID.")] = None
    secret: Annotated[str | None, Field(max_length=256)] = None
    reason: Annotated[str, Field(max_length=500)] = ""


class TaskOut(BaseModel):
    id: str
    agent: str
    status: str
    purpose: str
    objective: str
    objective_sha256: str
    sensitivity: str
    secrets: list[str]
    destinations: list[str]
    tools: list[str]
    created_at: datetime
    expires_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    parent_id: str | None
    root_id: str
    depth: int
    chain: list[str]
    context_version: int
    context_hash: str
    approval_id: str | None

    @classmethod
    def of(cls, task: Task, now: datetime) -> TaskOut:
        intent = task.intent
        status = task.effective_status(now)
        return cls(
            id=task.id,
            agent=task.agent_id,
            status=status.value,
            purpose=intent.purpose,
            objective=intent.objective,
            objective_sha256=intent.objective_sha256,
            sensitivity=intent.sensitivity.label,
            secrets=sorted(intent.secrets),
            destinations=sorted(intent.destinations),
            tools=sorted(intent.tools),
            created_at=task.created_at,
            expires_at=task.expires_at,
            ended_at=task.ended_at,
            end_reason=task.end_reason
            if task.end_reason
            else ("expired" if status.value == "expired" else None),
            parent_id=task.parent_id,
            root_id=task.root_id,
            depth=task.depth,
            chain=list(task.chain),
            context_version=task.context_version,
            context_hash=task.context_hash,
            approval_id=task.approval_id if status.value == "pending_approval" else None,
        )


class TaskUpdateOut(TaskOut):
    grants_revoked: int


class GrantOut(BaseModel):
    id: str
    task_id: str
    mode: str
    secret: str | None
    destination: str | None
    status: str
    created_at: datetime
    expires_at: datetime
    max_uses: int | None
    uses: int
    uses_left: int | None
    revoke_reason: str | None

    @classmethod
    def of(cls, grant: Grant, now: datetime) -> GrantOut:
        if grant.revoked_at is not None:
            status = "revoked"
        elif now >= grant.expires_at:
            status = "expired"
        elif grant.uses_left == 0:
            status = "used_up"
        else:
            status = "active"
        return cls(
            id=grant.id,
            task_id=grant.task_id,
            mode=grant.mode.value,
            secret=grant.secret,
            destination=grant.destination,
            status=status,
            created_at=grant.created_at,
            expires_at=grant.expires_at,
            max_uses=grant.max_uses,
            uses=grant.uses,
            uses_left=grant.uses_left,
            revoke_reason=grant.revoke_reason,
        )


class GrantNotIssuedOut(BaseModel):
    """A grant asked for with a task and not issued: denied (with the decision, as a denial carries
    it) or waiting for an approval (``approval_id``)."""

    index: int = Field(description="Its position in the request's `grants`.")
    secret: str | None
    destination: str | None
    mode: str
    detail: str
    decision: dict[str, Any]
    approval_id: str | None

    @classmethod
    def of(cls, outcome: GrantOutcome) -> GrantNotIssuedOut:
        request = outcome.request
        decision = Decision.deny(errors=(outcome.reason,)) if outcome.decision is None else outcome.decision
        return cls(
            index=outcome.index,
            secret=request.secret,
            destination=request.destination,
            mode=request.mode.value,
            detail=outcome.reason,
            decision=decision.to_json(),
            approval_id=outcome.approval_id,
        )


class TaskOpenedOut(TaskOut):
    """The task, and what became of each grant asked for with it."""

    grants: list[GrantOut] = Field(description="The grants issued, in request order.")
    grant_indexes: list[int] = Field(description="The request position of each issued grant.")
    grants_denied: list[GrantNotIssuedOut]
    grants_pending_approval: list[GrantNotIssuedOut]

    @classmethod
    def opened(cls, opened: OpenedTask, now: datetime) -> TaskOpenedOut:
        outcomes = opened.grants
        issued = [outcome for outcome in outcomes if outcome.grant is not None]
        # Every part is a model already validated as it was built: assembled, not validated again.
        return cls.model_construct(
            **dict(TaskOut.of(opened.task, now)),
            grants=[GrantOut.of(outcome.grant, now) for outcome in issued if outcome.grant is not None],
            grant_indexes=[outcome.index for outcome in issued],
            grants_denied=[GrantNotIssuedOut.of(o) for o in outcomes if o.status == "denied"],
            grants_pending_approval=[
                GrantNotIssuedOut.of(o) for o in outcomes if o.status == "approval_required"
            ],
        )


class ApprovalOut(BaseModel):
    id: str
    task_id: str
    agent: str
    action: str
    resource: str
    status: str
    policies: list[str]
    context_hash: str
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str
    request: dict[str, Any] = Field(
        default_factory=dict,
        description="Exactly what is approved (mode, destination, lifetime, uses; method and path; "
        "or the delegated scope): the approval allows that request only.",
    )

    @classmethod
    def of(cls, approval: Approval, now: datetime) -> ApprovalOut:
        return cls(
            id=approval.id,
            task_id=approval.task_id,
            agent=approval.agent_id,
            action=approval.action,
            resource=approval.resource,
            status=approval.effective_status(now).value,
            policies=list(approval.policies),
            context_hash=approval.context_hash,
            requested_at=approval.requested_at,
            expires_at=approval.expires_at,
            decided_at=approval.decided_at,
            decided_by=approval.decided_by,
            reason=approval.reason,
            request=dict(approval.request),
        )


class EndedOut(BaseModel):
    tasks_ended: list[str]
    grants_revoked: int

    @classmethod
    def of(cls, ended: Ended) -> EndedOut:
        return cls(tasks_ended=list(ended.task_ids), grants_revoked=ended.grants_revoked)


async def _caller(request: Request, broker: BrokerDep) -> AgentCaller | OperatorRecord:
    """An agent (``DPoP``) or an operator (``Bearer``), by the Authorization scheme."""
    scheme = request.headers.get("authorization", "").partition(" ")[0].lower()
    if scheme == "bearer":
        return await get_operator(request, broker)
    return await get_agent_caller(request, broker)


# -- tasks ---------------------------------------------------------------------------------------
@router.post("/v1/tasks", status_code=201, response_model=TaskOpenedOut)
async def open_task(body: TaskCreate, request: Request) -> Response:
    """Open a task: declare the intent; ``open_task`` is decided (or an approval is requested).
    The ``grants`` asked for with it are each decided on its own; the task, the grants and their
    audit events are one write (the request's proof too)."""
    del body  # read and validated by the endpoint, after authentication
    return await open_task_endpoint(request)


async def open_task_endpoint(request: Request) -> Response:
    """``POST /v1/tasks`` as a plain endpoint (the hot lane serves it; see ``tether.api.hot``): the
    caller is authenticated before the body is read, and the body is validated once."""
    broker: Broker = request.app.state.broker
    caller = await agent_caller(request, broker, defer_replay=True)
    try:
        body = TaskCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    opened = await broker.tasks.open_with_grants(caller, body.command())
    out = TaskOpenedOut.opened(opened, broker.clock.now())
    # pydantic writes the JSON itself (what model_dump(mode="json") + json.dumps would, in one step).
    return Response(out.model_dump_json(), status_code=201, media_type="application/json")


@router.get("/v1/tasks")
async def list_tasks(
    actor: OperatorDep,
    broker: BrokerDep,
    agent: Annotated[str | None, Query(max_length=400)] = None,
    status: Annotated[list[str] | None, Query(max_length=6)] = None,
    root: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Tasks (operators), filtered by agent (name or id), status and tree root."""
    agent_id = broker.agents.id_of(agent) if agent else None
    tasks = await broker.tasks.list_for_operator(
        actor, agent_id=agent_id, statuses=status or (), root_id=root, after=after, limit=limit
    )
    now = broker.clock.now()
    return {
        "items": [TaskOut.of(task, now).model_dump(mode="json") for task in tasks],
        "next_after": tasks[-1].id if len(tasks) == limit else None,
    }


@router.get("/v1/tasks/{task_id}")
async def get_task(task_id: IdParam, request: Request, broker: BrokerDep) -> TaskOut:
    """A task: its own agent, or an operator who may read tasks."""
    caller = await _caller(request, broker)
    if isinstance(caller, AgentCaller):
        task = await broker.tasks.get_for_agent(caller, task_id)
    else:
        task = await broker.tasks.get_for_operator(caller, task_id)
    return TaskOut.of(task, broker.clock.now())


@router.patch("/v1/tasks/{task_id}")
async def update_task(
    task_id: IdParam, body: TaskPatch, caller: AgentCallerDep, broker: BrokerDep
) -> TaskUpdateOut:
    """Change the task's context: decided again at once; grants no longer allowed are revoked."""
    if not body.model_fields_set:
        raise InvalidInputError("name at least one field to change", field="body")
    task, revoked = await broker.tasks.update(caller, task_id, body.command())
    return TaskUpdateOut(**TaskOut.of(task, broker.clock.now()).model_dump(), grants_revoked=revoked)


async def _end(broker: BrokerDep, caller: AgentCaller, task_id: str, how: str, reason: str = "") -> EndedOut:
    return EndedOut.of(await broker.tasks.end_by_agent(caller, task_id, how, reason))


@router.post("/v1/tasks/{task_id}/complete")
async def complete_task(task_id: IdParam, caller: AgentCallerDep, broker: BrokerDep) -> EndedOut:
    """The task is done: everything issued for it (and its sub-tasks) is revoked."""
    return await _end(broker, caller, task_id, "complete")


@router.post("/v1/tasks/{task_id}/fail")
async def fail_task(task_id: IdParam, caller: AgentCallerDep, broker: BrokerDep) -> EndedOut:
    """The task failed: everything issued for it (and its sub-tasks) is revoked."""
    return await _end(broker, caller, task_id, "fail")


@router.post("/v1/tasks/{task_id}/revoke")
async def revoke_task(
    task_id: IdParam, request: Request, broker: BrokerDep, body: Annotated[Reason | None, Body()] = None
) -> EndedOut:
    """Revoke a task: by its agent, or by an operator (``task.revoke``)."""
    caller = await _caller(request, broker)
    reason = body.reason if body is not None else ""
    if isinstance(caller, AgentCaller):
        return await _end(broker, caller, task_id, "revoke", reason)
    return EndedOut.of(await broker.tasks.revoke_by_operator(caller, task_id, reason))


@router.post("/v1/tasks/{task_id}/delegate", status_code=201)
async def delegate_task(
    task_id: IdParam, body: DelegationCreate, caller: AgentCallerDep, broker: BrokerDep
) -> TaskOut:
    """Hand a narrower sub-task to another agent: ``delegate`` then ``open_task`` are decided."""
    child = await broker.tasks.delegate(caller, task_id, body.command())
    return TaskOut.of(child, broker.clock.now())


@router.get("/v1/tasks/{task_id}/tree")
async def task_tree(task_id: IdParam, actor: OperatorDep, broker: BrokerDep) -> dict[str, Any]:
    """The whole delegation tree the task belongs to, root first, each task with its state."""
    tasks = await broker.tasks.tree(actor, task_id)
    now = broker.clock.now()
    return {
        "root_id": tasks[0].root_id,
        "items": [TaskOut.of(task, now).model_dump(mode="json") for task in tasks],
    }


# -- grants --------------------------------------------------------------------------------------
@router.post("/v1/tasks/{task_id}/grants", status_code=201)
async def issue_grant(
    task_id: IdParam, body: GrantCreate, caller: ActivatingCallerDep, broker: BrokerDep
) -> GrantOut:
    """Issuance: a key-bound grant to use one secret (or destination) in one mode. No secret."""
    grant = await broker.tasks.issue(caller, task_id, body.command())
    return GrantOut.of(grant, broker.clock.now())


@router.get("/v1/tasks/{task_id}/grants")
async def list_grants(task_id: IdParam, request: Request, broker: BrokerDep) -> dict[str, Any]:
    """A task's grants (its agent, or an operator who may read tasks)."""
    caller = await _caller(request, broker)
    if isinstance(caller, AgentCaller):
        task = await broker.tasks.get_for_agent(caller, task_id)
    else:
        task = await broker.tasks.get_for_operator(caller, task_id)
    now = broker.clock.now()
    return {
        "items": [
            GrantOut.of(grant, now).model_dump(mode="json") for grant in await broker.tasks.grants_of(task)
        ]
    }


@router.post("/v1/grants/{grant_id}/activate", response_model=None)
async def activate_grant(grant_id: IdParam, request: Request) -> Response:
    """Activation for ``reveal`` (the value, once) and ``dynamic`` (a fresh credential)."""
    del grant_id  # read from the path by the endpoint
    return await activate_endpoint(request)


async def activate_endpoint(request: Request) -> Response:
    """``POST /v1/grants/{grant_id}/activate`` as a plain endpoint (the hot lane serves it; see
    ``tether.api.hot``): authenticated first, then decided, counted and audited by the broker."""
    broker: Broker = request.app.state.broker
    caller = await agent_caller(request, broker, defer_replay=True)
    grant_id = request.path_params["grant_id"]
    activation = await broker.tasks.activate(caller, grant_id, method="POST", path=request.url.path)
    grant = activation.grant
    body: dict[str, Any] = {"grant_id": grant.id, "mode": grant.mode.value, "uses_left": grant.uses_left}
    if activation.value is not None:
        body.update(value=activation.value, version=activation.version)
    else:
        body.update(
            credential=dict(activation.credential or {}),
            expires_at=activation.expires_at.isoformat() if activation.expires_at else None,
        )
    return JSONResponse(body, headers=_NO_STORE)


# -- approvals -----------------------------------------------------------------------------------
@router.get("/v1/approvals")
async def list_approvals(
    actor: OperatorDep,
    broker: BrokerDep,
    status: Annotated[list[str] | None, Query(max_length=5)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Approvals (approvers), by default the pending ones."""
    approvals = await broker.tasks.list_approvals(
        actor, statuses=status if status is not None else ("pending",), after=after, limit=limit
    )
    now = broker.clock.now()
    return {
        "items": [ApprovalOut.of(item, now).model_dump(mode="json") for item in approvals],
        "next_after": approvals[-1].id if len(approvals) == limit else None,
    }


@router.get("/v1/approvals/{approval_id}")
async def get_approval(approval_id: IdParam, actor: OperatorDep, broker: BrokerDep) -> ApprovalOut:
    return ApprovalOut.of(await broker.tasks.get_approval(actor, approval_id), broker.clock.now())


@router.post("/v1/approvals/{approval_id}/approve")
async def approve(
    approval_id: IdParam, body: ApprovalDecision, actor: OperatorDep, broker: BrokerDep
) -> ApprovalOut:
    """Approve: the bound request is allowed until the approval expires or the task's context changes."""
    approval, _ = await broker.tasks.decide_approval(actor, approval_id, approve=True, reason=body.reason)
    return ApprovalOut.of(approval, broker.clock.now())


@router.post("/v1/approvals/{approval_id}/deny")
async def deny(
    approval_id: IdParam, body: ApprovalDecision, actor: OperatorDep, broker: BrokerDep
) -> ApprovalOut:
    """Deny: a task waiting for this approval to open is revoked."""
    approval, _ = await broker.tasks.decide_approval(actor, approval_id, approve=False, reason=body.reason)
    return ApprovalOut.of(approval, broker.clock.now())


# -- emergency revocation ------------------------------------------------------------------------
@router.post("/v1/revocations")
async def revoke(body: RevocationCreate, actor: OperatorDep, broker: BrokerDep) -> EndedOut:
    """Revoke a task (and its sub-tasks), every task of an agent, or every grant of a secret."""
    agent = await broker.agents.show(actor, body.agent) if body.agent else None
    ended = await broker.tasks.revoke(
        actor, task_id=body.task, agent=agent, secret=body.secret, reason=body.reason
    )
    return EndedOut.of(ended)
