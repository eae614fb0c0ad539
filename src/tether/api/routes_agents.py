"""Agent registry and trusted issuers (operators, bearer tokens).

Agents are addressed by name in paths (``/v1/agents/{name}``): an agent's id is a SPIFFE ID,
whose slashes do not fit a path segment, and within one deployment the name is unique and
maps to exactly one id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from tether.api.deps import BrokerDep, OperatorDep
from tether.domain.agents import AgentAttributes, AgentRecord, TrustedIssuer

router = APIRouter(tags=["agents"])

NameParam = Annotated[str, Path(min_length=1, max_length=63)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class AttributesIn(_Request):
    team: Annotated[str, Field(max_length=128)] = ""
    environment: Annotated[str, Field(max_length=128)] = ""
    owner: Annotated[str, Field(max_length=128)] = ""
    labels: Annotated[list[str], Field(max_length=32)] = []


class AgentCreate(_Request):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    public_key: Annotated[
        dict[str, Any] | None,
        Field(description="Public JWK (OKP/Ed25519 or EC/P-256). Omit for a federated-only agent."),
    ] = None
    attributes: AttributesIn = AttributesIn()


class AgentKeyCreate(_Request):
    public_key: Annotated[dict[str, Any], Field(description="Public JWK (OKP/Ed25519 or EC/P-256).")]


class AttributesOut(BaseModel):
    team: str
    environment: str
    owner: str
    labels: list[str]


class AgentKeyOut(BaseModel):
    kid: str = Field(description="RFC 7638 thumbprint of the key.")
    jwk: dict[str, str]
    added_at: datetime
    removed_at: datetime | None


class AgentOut(BaseModel):
    id: str = Field(description="The agent's SPIFFE ID: spiffe://<trust-domain>/agent/<name>.")
    name: str
    trust_domain: str
    attributes: AttributesOut
    keys: list[AgentKeyOut]
    created_at: datetime
    created_by: str
    disabled_at: datetime | None

    @classmethod
    def of(cls, record: AgentRecord) -> AgentOut:
        return cls(
            id=record.id,
            name=record.name,
            trust_domain=record.trust_domain,
            attributes=AttributesOut(**record.attributes.to_json()),
            keys=[
                AgentKeyOut(kid=k.kid, jwk=dict(k.jwk), added_at=k.added_at, removed_at=k.removed_at)
                for k in record.keys
            ],
            created_at=record.created_at,
            created_by=record.created_by,
            disabled_at=record.disabled_at,
        )


class AgentList(BaseModel):
    agents: list[AgentOut]
    next_after: str | None = Field(None, description="Pass as `after` to get the next page.")


class IssuerCreate(_Request):
    name: Annotated[str, Field(min_length=1, max_length=63)]
    issuer: Annotated[str, Field(min_length=1, max_length=256, description="https URL or spiffe://<td>.")]
    audience: Annotated[str, Field(min_length=1, max_length=256)]
    jwks: Annotated[dict[str, Any] | None, Field(description="Inline JWKS (give this or jwks_url).")] = None
    jwks_url: Annotated[str | None, Field(max_length=2048)] = None
    subject_claim: Annotated[str, Field(min_length=1, max_length=64)] = "sub"
    subject_pattern: Annotated[
        str,
        Field(
            min_length=1,
            max_length=256,
            description="Regex that must match the whole claim; its group (?P<agent>...) is the agent name.",
        ),
    ]


class IssuerOut(BaseModel):
    name: str
    issuer: str
    audience: str
    jwks: dict[str, Any] | None
    jwks_url: str | None
    subject_claim: str
    subject_pattern: str
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, record: TrustedIssuer) -> IssuerOut:
        return cls(
            name=record.name,
            issuer=record.issuer,
            audience=record.audience,
            jwks=record.jwks_json(),
            jwks_url=record.jwks_url,
            subject_claim=record.subject_claim,
            subject_pattern=record.subject_pattern,
            created_at=record.created_at,
            created_by=record.created_by,
        )


class IssuerList(BaseModel):
    issuers: list[IssuerOut]


@router.post("/v1/agents", status_code=201)
async def register_agent(body: AgentCreate, broker: BrokerDep, operator: OperatorDep) -> AgentOut:
    """Register an agent with a public key (or none, for an agent that only federates)."""
    attributes = AgentAttributes(
        team=body.attributes.team,
        environment=body.attributes.environment,
        owner=body.attributes.owner,
        labels=frozenset(body.attributes.labels),
    )
    record = await broker.agents.register(operator, body.name, body.public_key, attributes)
    return AgentOut.of(record)


@router.get("/v1/agents")
async def list_agents(
    broker: BrokerDep,
    operator: OperatorDep,
    after: Annotated[str | None, Query(max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AgentList:
    """Agents in name order, a page at a time."""
    page = await broker.agents.list(operator, after=after, limit=limit)
    return AgentList(agents=[AgentOut.of(r) for r in page.items], next_after=page.next_after)


@router.get("/v1/agents/{name}")
async def show_agent(name: NameParam, broker: BrokerDep, operator: OperatorDep) -> AgentOut:
    """One agent, by name, with its keys (removed keys included)."""
    return AgentOut.of(await broker.agents.show(operator, name))


@router.post("/v1/agents/{name}/disable")
async def disable_agent(name: NameParam, broker: BrokerDep, operator: OperatorDep) -> AgentOut:
    """Disable an agent: no new tokens, and its current tokens stop working on their next use."""
    return AgentOut.of(await broker.agents.disable(operator, name))


@router.post("/v1/agents/{name}/keys", status_code=201)
async def add_agent_key(
    name: NameParam, body: AgentKeyCreate, broker: BrokerDep, operator: OperatorDep
) -> AgentOut:
    """Add a public key (at most 5 active): rotate by adding the new key, then removing the old."""
    return AgentOut.of(await broker.agents.add_key(operator, name, body.public_key))


@router.delete("/v1/agents/{name}/keys/{kid}", status_code=204, response_class=Response)
async def remove_agent_key(
    name: NameParam,
    kid: Annotated[str, Path(min_length=1, max_length=128)],
    broker: BrokerDep,
    operator: OperatorDep,
) -> Response:
    """Remove a key; the last active key cannot be removed."""
    await broker.agents.remove_key(operator, name, kid)
    return Response(status_code=204)


@router.post("/v1/auth/issuers", status_code=201)
async def add_issuer(body: IssuerCreate, broker: BrokerDep, operator: OperatorDep) -> IssuerOut:
    """Trust an external issuer (OIDC, Kubernetes, SPIFFE JWT-SVID) for token exchange."""
    record = await broker.issuers.add(
        operator,
        name=body.name,
        issuer=body.issuer,
        audience=body.audience,
        jwks=body.jwks,
        jwks_url=body.jwks_url,
        subject_claim=body.subject_claim,
        subject_pattern=body.subject_pattern,
    )
    return IssuerOut.of(record)


@router.get("/v1/auth/issuers")
async def list_issuers(broker: BrokerDep, operator: OperatorDep) -> IssuerList:
    return IssuerList(issuers=[IssuerOut.of(r) for r in await broker.issuers.list(operator)])


@router.delete("/v1/auth/issuers/{name}", status_code=204, response_class=Response)
async def remove_issuer(
    name: Annotated[str, Path(min_length=1, max_length=63)], broker: BrokerDep, operator: OperatorDep
) -> Response:
    """Stop trusting an issuer."""
    await broker.issuers.remove(operator, name)
    return Response(status_code=204)
