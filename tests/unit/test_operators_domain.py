"""Operator roles, permissions and tokens (``tether.domain.operators``, ``tether.identity.operators``)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

import pytest

from tether.broker.access import require
from tether.domain.operators import OperatorRecord, Permission, Role, role_allows, validate_operator_name
from tether.errors import AuthenticationError, InvalidInputError, PermissionDeniedError
from tether.identity.operators import TOKEN_PREFIX, hash_token, new_operator_id, new_token, parse_token

P = Permission

# The whole matrix, written out: a change to who may do what must change this table too.
EXPECTED: dict[Role, set[Permission]] = {
    Role.ADMIN: set(Permission),
    Role.SECRET_WRITER: {
        P.SECRET_WRITE,
        P.SECRET_READ_METADATA,
        P.SECRET_DELETE,
        P.DESTINATION_WRITE,
        P.DESTINATION_READ,
    },
    Role.POLICY_AUTHOR: {P.POLICY_WRITE, P.POLICY_READ},
    Role.APPROVER: {P.APPROVAL_DECIDE, P.TASK_READ},
    Role.AUDITOR: {
        P.AUDIT_READ,
        P.SECRET_READ_METADATA,
        P.POLICY_READ,
        P.METRICS_READ,
        P.AGENT_READ,
        P.DESTINATION_READ,
        P.TASK_READ,
    },
    Role.SCANNER: {P.SCAN_RUN},
}

NON_ADMIN = [role for role in Role if role is not Role.ADMIN]
# Wiring a secret to an upstream (a destination) is part of writing it; neither grants use.
SECRET_PERMISSIONS = {
    P.SECRET_WRITE,
    P.SECRET_READ_METADATA,
    P.SECRET_DELETE,
    P.DESTINATION_WRITE,
    P.DESTINATION_READ,
}
WRITES = {
    P.SECRET_WRITE,
    P.SECRET_DELETE,
    P.POLICY_WRITE,
    P.APPROVAL_DECIDE,
    P.OPERATOR_MANAGE,
    P.SYS_KEYS,
    P.AGENT_WRITE,
    P.DESTINATION_WRITE,
    P.TASK_REVOKE,
}


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("permission", list(Permission))
def test_role_allows_matches_the_documented_matrix(role: Role, permission: Permission) -> None:
    assert role_allows(role, permission) is (permission in EXPECTED[role])


def test_every_role_is_in_the_matrix() -> None:
    assert set(EXPECTED) == set(Role)


@pytest.mark.parametrize("role", NON_ADMIN)
def test_only_admin_manages_operators_or_keys_or_seals(role: Role) -> None:
    assert not role_allows(role, P.OPERATOR_MANAGE)
    assert not role_allows(role, P.SYS_KEYS)
    assert not role_allows(role, P.SYS_SEAL)


@pytest.mark.parametrize("role", NON_ADMIN)
def test_no_role_but_admin_combines_secret_writing_with_anything_else(role: Role) -> None:
    granted = {p for p in Permission if role_allows(role, p)}
    if P.SECRET_WRITE in granted:
        assert granted <= SECRET_PERMISSIONS


def test_secret_writer_cannot_manage_operators_policies_or_approvals() -> None:
    for permission in (P.OPERATOR_MANAGE, P.POLICY_WRITE, P.APPROVAL_DECIDE, P.AUDIT_READ):
        assert not role_allows(Role.SECRET_WRITER, permission)


def test_auditor_reads_but_writes_nothing() -> None:
    assert role_allows(Role.AUDITOR, P.AUDIT_READ)
    assert not any(role_allows(Role.AUDITOR, p) for p in WRITES)


def test_policy_author_cannot_approve_and_approver_cannot_write_policy() -> None:
    assert not role_allows(Role.POLICY_AUTHOR, P.APPROVAL_DECIDE)
    assert not role_allows(Role.APPROVER, P.POLICY_WRITE)


def test_unknown_role_is_refused_everything() -> None:
    assert not role_allows("root", P.SECRET_WRITE)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["admin", "secret-writer", "policy-author", "approver", "auditor"])
def test_role_parse_accepts_role_names(value: str) -> None:
    assert Role.parse(value).value == value


@pytest.mark.parametrize("value", ["Admin", "root", "", "secret_writer", " admin"])
def test_role_parse_refuses_unknown_names(value: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        Role.parse(value)
    assert caught.value.field == "role"


# -- require (one place that applies the matrix) ----------------------------------------------


def _operator(role: Role, revoked: bool = False) -> OperatorRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return OperatorRecord(
        id=new_operator_id(),
        name="someone",
        role=role,
        token_hash=hash_token(new_token()),
        created_at=now,
        created_by="root",
        revoked_at=now if revoked else None,
    )


def test_require_passes_an_allowed_active_operator() -> None:
    require(_operator(Role.SECRET_WRITER), P.SECRET_WRITE)


def test_require_refuses_a_permission_the_role_lacks() -> None:
    with pytest.raises(PermissionDeniedError, match=r"operator\.manage"):
        require(_operator(Role.SECRET_WRITER), P.OPERATOR_MANAGE)


def test_require_refuses_a_revoked_admin() -> None:
    record = _operator(Role.ADMIN, revoked=True)
    assert not record.active
    with pytest.raises(PermissionDeniedError):
        require(record, P.SECRET_READ_METADATA)


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["root", "alice", "alice@example.com", "ci-bot_2", "a", "a" * 64])
def test_operator_names_accepted(name: str) -> None:
    assert validate_operator_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "Alice", "-alice", ".alice", "al ice", "a" * 65, "al/ice", "\u00e4lice"]
)
def test_operator_names_refused(name: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_operator_name(name)


# -- tokens -----------------------------------------------------------------------------------


def test_new_tokens_have_the_documented_shape_and_are_unique() -> None:
    tokens = {new_token() for _ in range(200)}
    assert len(tokens) == 200
    for token in tokens:
        assert token.startswith(TOKEN_PREFIX)
        assert re.fullmatch(r"tto_[A-Za-z0-9_-]{43}", token)
        assert parse_token(token) == token


@pytest.mark.parametrize(
    "token",
    [
        "",
        "tto_",
        "tto_" + "A" * 42,
        "tto_" + "A" * 44,
        "tto_" + "A" * 42 + "=",
        "tto_" + "A" * 42 + "+",
        "ttx_" + "A" * 43,
        "TTO_" + "A" * 43,
        "tto_" + "A" * 43 + "\n",
        " tto_" + "A" * 43,
        "Bearer tto_" + "A" * 43,
    ],
)
def test_parse_token_refuses_malformed_tokens(token: str) -> None:
    with pytest.raises(AuthenticationError):
        parse_token(token)


def test_hash_token_is_sha256_of_the_token() -> None:
    token = new_token()
    digest = hash_token(token)
    assert digest == hashlib.sha256(token.encode()).digest()
    assert len(digest) == 32
    assert hash_token(token) == digest
    assert hash_token(new_token()) != digest
    assert token.encode() not in digest


def test_operator_ids_are_prefixed_random_hex() -> None:
    ids = {new_operator_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"op_[0-9a-f]{16}", i) for i in ids)
