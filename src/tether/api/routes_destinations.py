"""The destinations registry (operators, bearer tokens): the upstreams egress forwards to."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from tether.api.deps import BrokerDep, OperatorDep
from tether.domain.destinations import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_BYTES_LIMIT,
    MAX_PATH_PREFIXES,
    MAX_TIMEOUT_SECONDS,
    SECRET_PLACEHOLDER,
    Destination,
    Injection,
    InjectionType,
)

router = APIRouter(tags=["destinations"])

NameParam = Annotated[str, Path(min_length=1, max_length=64)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class InjectionIn(_Request):
    type: Literal["header", "basic", "query"]
    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=128,
            description="Header name (header), username (basic) or query parameter name (query).",
        ),
    ]
    template: Annotated[
        str | None,
        Field(
            max_length=256,
            description="Value with {secret} exactly once (header, query; default `{secret}`). "
            "Not for basic: the secret is the password.",
        ),
    ] = None


class DestinationCreate(_Request):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    base_url: Annotated[
        str, Field(min_length=1, max_length=2048, description="https URL (http only for loopback).")
    ]
    secret: Annotated[
        str, Field(min_length=1, max_length=256, description="The path of the secret injected.")
    ]
    inject: InjectionIn
    methods: Annotated[list[str], Field(min_length=1, max_length=8)] = ["GET"]
    path_prefixes: Annotated[list[str], Field(min_length=1, max_length=MAX_PATH_PREFIXES)] = ["/"]
    timeout_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_TIMEOUT_SECONDS)] = (
        DEFAULT_TIMEOUT_SECONDS
    )
    max_body_bytes: Annotated[int, Field(strict=True, ge=1, le=MAX_BYTES_LIMIT)] = DEFAULT_MAX_BODY_BYTES
    max_response_bytes: Annotated[int, Field(strict=True, ge=1, le=MAX_BYTES_LIMIT)] = (
        DEFAULT_MAX_RESPONSE_BYTES
    )


class InjectionOut(BaseModel):
    type: Literal["header", "basic", "query"]
    name: str
    template: str | None = None


class DestinationOut(BaseModel):
    name: str
    base_url: str
    host: str = Field(description="The base URL's host: the Cedar Destination entity's `host`.")
    secret: str
    inject: InjectionOut
    methods: list[str]
    path_prefixes: list[str]
    timeout_seconds: int
    max_body_bytes: int
    max_response_bytes: int
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, record: Destination) -> DestinationOut:
        return cls(
            name=record.name,
            base_url=record.base_url,
            host=record.host,
            secret=record.secret,
            inject=InjectionOut.model_validate(record.inject.to_json()),
            methods=sorted(record.methods),
            path_prefixes=list(record.path_prefixes),
            timeout_seconds=record.timeout_seconds,
            max_body_bytes=record.max_body_bytes,
            max_response_bytes=record.max_response_bytes,
            created_at=record.created_at,
            created_by=record.created_by,
        )


class DestinationList(BaseModel):
    destinations: list[DestinationOut]


@router.post("/v1/destinations", status_code=201)
async def add_destination(
    body: DestinationCreate, broker: BrokerDep, operator: OperatorDep
) -> DestinationOut:
    """Register an upstream and how its secret is injected (the secret must exist)."""
    inject = Injection(
        type=InjectionType(body.inject.type),
        name=body.inject.name,
        template=SECRET_PLACEHOLDER if body.inject.template is None else body.inject.template,
    )
    record = await broker.destinations.add(
        operator,
        name=body.name,
        base_url=body.base_url,
        secret=body.secret,
        inject=inject,
        methods=body.methods,
        path_prefixes=body.path_prefixes,
        timeout_seconds=body.timeout_seconds,
        max_body_bytes=body.max_body_bytes,
        max_response_bytes=body.max_response_bytes,
    )
    return DestinationOut.of(record)


@router.get("/v1/destinations")
async def list_destinations(broker: BrokerDep, operator: OperatorDep) -> DestinationList:
    """Every destination, by name."""
    return DestinationList(
        destinations=[DestinationOut.of(r) for r in await broker.destinations.list(operator)]
    )


@router.get("/v1/destinations/{name}")
async def show_destination(name: NameParam, broker: BrokerDep, operator: OperatorDep) -> DestinationOut:
    """One destination."""
    return DestinationOut.of(await broker.destinations.show(operator, name))


@router.delete("/v1/destinations/{name}", status_code=204, response_class=Response)
async def remove_destination(name: NameParam, broker: BrokerDep, operator: OperatorDep) -> Response:
    """Remove a destination; egress through it stops at once."""
    await broker.destinations.remove(operator, name)
    return Response(status_code=204)
