"""Operators, their roles, and what each role may do.

Separation of duties: no role but ``admin`` combines writing secrets with anything
else, and no operator role can *use* a secret at all; using is for agents, through
tasks and policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from tether.errors import InvalidInputError

__all__ = ["OperatorRecord", "Permission", "Role", "role_allows", "validate_operator_name"]

_OPERATOR_NAME = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")


class Role(StrEnum):
    ADMIN = "admin"
    SECRET_WRITER = "secret-writer"
    POLICY_AUTHOR = "policy-author"
    APPROVER = "approver"
    AUDITOR = "auditor"
    SCANNER = "scanner"

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(value)
        except ValueError:
            names = "|".join(role.value for role in cls)
            raise InvalidInputError(f"role must be one of {names}", field="role") from None


class Permission(StrEnum):
    SECRET_WRITE = "secret.write"
    SECRET_READ_METADATA = "secret.read_metadata"
    SECRET_DELETE = "secret.delete"
    POLICY_WRITE = "policy.write"
    POLICY_READ = "policy.read"
    APPROVAL_DECIDE = "approval.decide"
    AUDIT_READ = "audit.read"
    OPERATOR_MANAGE = "operator.manage"
    SYS_SEAL = "sys.seal"
    SYS_KEYS = "sys.keys"
    METRICS_READ = "metrics.read"
    AGENT_WRITE = "agent.write"
    AGENT_READ = "agent.read"
    DESTINATION_WRITE = "destination.write"
    DESTINATION_READ = "destination.read"
    TASK_READ = "task.read"
    TASK_REVOKE = "task.revoke"
    SCAN_RUN = "scan.run"
    SIGNALS_MANAGE = "signals.manage"


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    # Secret writers also wire secrets to upstreams (destinations); that grants no use.
    Role.SECRET_WRITER: frozenset(
        {
            Permission.SECRET_WRITE,
            Permission.SECRET_READ_METADATA,
            Permission.SECRET_DELETE,
            Permission.DESTINATION_WRITE,
            Permission.DESTINATION_READ,
        }
    ),
    Role.POLICY_AUTHOR: frozenset({Permission.POLICY_WRITE, Permission.POLICY_READ}),
    # Approvers see the task an approval is about; revoking tasks is for admins (emergencies).
    Role.APPROVER: frozenset({Permission.APPROVAL_DECIDE, Permission.TASK_READ}),
    Role.AUDITOR: frozenset(
        {
            Permission.AUDIT_READ,
            Permission.SECRET_READ_METADATA,
            Permission.POLICY_READ,
            Permission.METRICS_READ,
            Permission.AGENT_READ,
            Permission.DESTINATION_READ,
            Permission.TASK_READ,
        }
    ),
    # Scanners look for governed values in text they send (the sprawl scan): the server matches
    # every governed value but answers only with paths and fingerprints of what the text holds.
    Role.SCANNER: frozenset({Permission.SCAN_RUN}),
}


def role_allows(role: Role, permission: Permission) -> bool:
    """Whether ``role`` carries ``permission``. Unknown combinations are refused."""
    return permission in _GRANTS.get(role, frozenset())


def validate_operator_name(name: str) -> str:
    if not isinstance(name, str) or not _OPERATOR_NAME.fullmatch(name):
        raise InvalidInputError(
            "operator name must be 1-64 lowercase letters, digits, '.', '_', '@' or '-'", field="name"
        )
    return name


@dataclass(frozen=True, slots=True)
class OperatorRecord:
    """An operator as stored: the token appears only as its hash."""

    id: str
    name: str
    role: Role
    token_hash: bytes
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None
