"""Request and response bodies. Requests refuse unknown fields."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from tether.domain.operators import OperatorRecord
from tether.domain.secrets import SecretRecord

SensitivityName = Literal["public", "internal", "confidential", "restricted"]
RoleName = Literal["admin", "secret-writer", "policy-author", "approver", "auditor", "scanner"]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class SecretWrite(Request):
    value: Annotated[str, Field(min_length=1, description="The secret value. Write-only: never returned.")]
    sensitivity: SensitivityName = "confidential"
    purposes: Annotated[list[str], Field(max_length=64)] = []
    destinations: Annotated[list[str], Field(max_length=64)] = []
    owner: Annotated[str, Field(max_length=128)] = ""
    rotation_period_seconds: Annotated[int | None, Field(ge=60, le=315_360_000)] = None
    cas: Annotated[
        int | None,
        Field(ge=0, description="Check-and-set: the version expected to be current (0: must not exist)."),
    ] = None


class SecretPatch(Request):
    """A metadata-only change: what is omitted stays as it is; the value is neither sent nor
    changed (no new version). A set is replaced (``purposes``) or changed by what is added and
    removed (``add_purposes``, ``remove_purposes``), not both; ``rotation_period_seconds: null``
    clears the rotation period."""

    sensitivity: SensitivityName | None = None
    purposes: Annotated[list[str] | None, Field(max_length=64)] = None
    add_purposes: Annotated[list[str], Field(max_length=64)] = []
    remove_purposes: Annotated[list[str], Field(max_length=64)] = []
    destinations: Annotated[list[str] | None, Field(max_length=64)] = None
    add_destinations: Annotated[list[str], Field(max_length=64)] = []
    remove_destinations: Annotated[list[str], Field(max_length=64)] = []
    owner: Annotated[str | None, Field(max_length=128)] = None
    rotation_period_seconds: Annotated[int | None, Field(ge=60, le=315_360_000)] = None


class SecretRotate(Request):
    value: Annotated[str, Field(min_length=1, description="The new value. Write-only: never returned.")]


class SecretVersionOut(BaseModel):
    version: int
    created_at: datetime
    created_by: str
    kek_version: int


class SecretOut(BaseModel):
    path: str
    sensitivity: SensitivityName
    purposes: list[str]
    destinations: list[str]
    owner: str
    rotation_period_seconds: int | None
    current_version: int
    created_at: datetime
    updated_at: datetime
    rotation_due: bool
    versions: list[SecretVersionOut] | None = None

    @classmethod
    def of(cls, record: SecretRecord, now: datetime, *, versions: bool = False) -> SecretOut:
        meta = record.metadata
        return cls(
            path=record.path,
            sensitivity=meta.sensitivity.label,
            purposes=sorted(meta.purposes),
            destinations=sorted(meta.destinations),
            owner=meta.owner,
            rotation_period_seconds=meta.rotation_period_seconds,
            current_version=record.current_version,
            created_at=record.created_at,
            updated_at=record.updated_at,
            rotation_due=record.rotation_due(now),
            versions=[
                SecretVersionOut(
                    version=v.version,
                    created_at=v.created_at,
                    created_by=v.created_by,
                    kek_version=v.kek_version,
                )
                for v in record.versions
            ]
            if versions
            else None,
        )


class SecretList(BaseModel):
    secrets: list[SecretOut]
    next_after: str | None = Field(None, description="Pass as `after` to get the next page.")


class OperatorCreate(Request):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    role: RoleName


class OperatorOut(BaseModel):
    id: str
    name: str
    role: RoleName
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: OperatorRecord) -> OperatorOut:
        return cls(
            id=record.id,
            name=record.name,
            role=record.role.value,
            created_at=record.created_at,
            created_by=record.created_by,
            revoked_at=record.revoked_at,
        )


class OperatorCreated(OperatorOut):
    token: str = Field(description="The operator's bearer token. Shown once; Tether keeps only its hash.")


class OperatorList(BaseModel):
    operators: list[OperatorOut]


class Unseal(Request):
    root_key: Annotated[
        str | None,
        Field(description="Base64 root key. Omit to use the node's configured key provider."),
    ] = None


class SealStatus(BaseModel):
    sealed: bool


class Health(BaseModel):
    status: Literal["ok", "sealed", "unavailable"]
    sealed: bool
    storage: str
    storage_ok: bool
    version: str
    node_id: str


class KeyVersionOut(BaseModel):
    version: int
    created_at: datetime


class KeyStatus(BaseModel):
    active: int
    versions: list[KeyVersionOut]
    provider: str


class RotationOut(BaseModel):
    kek_version: int
    rewrapped: int
