"""Secret-engine conformance: what every :class:`SecretEngine` must do, run against each engine
Tether ships and an in-memory fake; and what :class:`EngineRegistry` guarantees about plugins."""

from __future__ import annotations

import json
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.security.canaries import find_leaks, new_canary
from tether.domain.tasks import Lease, new_id
from tether.engines import (
    EngineRegistry,
    IssuedCredential,
    LeaseRequest,
    RenewableEngine,
    SecretEngine,
    StaticEngine,
)
from tether.errors import EngineError, NotFoundError, TetherError

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECRET = "prod/db/main"


def lease_request(*, ttl: float = 300, secret: str = SECRET) -> LeaseRequest:
    return LeaseRequest(
        lease_id=new_id("lse"),
        task_id=new_id("tsk"),
        grant_id=new_id("grt"),
        agent_id="spiffe://acme.test/agent/deploy-bot",
        secret=secret,
        now=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
    )


def lease_for(engine: SecretEngine, request: LeaseRequest, issued: IssuedCredential) -> Lease:
    """The lease Tether stores for an issued credential (what revoke is later given)."""
    return Lease(
        id=request.lease_id,
        grant_id=request.grant_id,
        task_id=request.task_id,
        engine=engine.name,
        handle=dict(issued.handle),
        created_at=request.now,
        expires_at=issued.expires_at,
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


async def exercise_engine(
    engine: SecretEngine, *, secret_fields: tuple[str, ...], secret_values: tuple[str, ...] = ()
) -> None:
    """The contract every secret engine passes.

    ``secret_fields``: the credential's fields that are secret (a password, a value; not a
    username). ``secret_values``: material the engine hands out, known in advance (for leak checks
    in every encoding).
    """
    assert isinstance(engine, SecretEngine)
    assert isinstance(engine.name, str)
    assert engine.name

    for ttl in (1, 60, 3600):
        request = lease_request(ttl=ttl)
        issued = await engine.issue(request)
        assert isinstance(issued, IssuedCredential)
        assert isinstance(issued.credential, Mapping)
        assert issued.credential, "an engine hands out a credential"
        assert issued.expires_at.tzinfo is not None
        assert issued.expires_at <= request.expires_at, "a credential never outlives its grant"
        assert issued.expires_at > request.now

        # The handle is stored: JSON, and without any credential material.
        handle_text = json.dumps(dict(issued.handle), sort_keys=True)
        assert set(secret_fields) <= set(issued.credential)
        secret_strings = [
            *(s for field in secret_fields for s in _strings(issued.credential[field])),
            *secret_values,
        ]
        for value in secret_strings:
            assert value not in handle_text, "the handle must not hold the credential"
        assert find_leaks(handle_text, list(secret_values)) == []
        assert all(value not in repr(issued) for value in secret_strings)

        # Revocation is mandatory and idempotent.
        lease = lease_for(engine, request, issued)
        await engine.revoke(lease)
        await engine.revoke(lease)

    # Two leases are two credentials' worth of bookkeeping: revoking one leaves the other alone.
    first_request, second_request = lease_request(), lease_request()
    first = await engine.issue(first_request)
    second = await engine.issue(second_request)
    await engine.revoke(lease_for(engine, first_request, first))
    await engine.revoke(lease_for(engine, second_request, second))

    # Through the registry, the same engine behaves the same.
    registry = EngineRegistry(engine)
    request = lease_request()
    issued = await registry.issue(engine, request)
    assert issued.expires_at <= request.expires_at
    await registry.revoke(lease_for(engine, request, issued))
    await registry.revoke(lease_for(engine, request, issued))


# -- the engines ---------------------------------------------------------------------------------
@dataclass
class FakeDatabaseEngine:
    """An in-memory dynamic engine: mints a role and password per lease, drops it on revoke."""

    name: str = "fake-db"
    reveals_value: bool = False
    max_ttl_seconds: float = 900
    roles: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.roles = {}

    async def issue(self, request: LeaseRequest) -> IssuedCredential:
        assert self.roles is not None
        role = f"tether_{request.lease_id[4:16].lower()}"
        password = secrets.token_urlsafe(24)
        self.roles[role] = password
        expires_at = min(request.expires_at, request.now + timedelta(seconds=self.max_ttl_seconds))
        return IssuedCredential(
            credential={"username": role, "password": password},
            handle={"role": role},
            expires_at=expires_at,
        )

    async def revoke(self, lease: Lease) -> None:
        assert self.roles is not None
        self.roles.pop(str(lease.handle["role"]), None)

    async def renew(self, lease: Lease, expires_at: datetime) -> datetime:
        return min(expires_at, lease.created_at + timedelta(seconds=self.max_ttl_seconds))


def static_reader(value: bytes, version: int = 3) -> Callable[[str], Awaitable[tuple[int, bytes]]]:
    async def read(path: str) -> tuple[int, bytes]:
        return version, value

    return read


async def test_static_engine_conforms() -> None:
    value = new_canary("static-engine")
    engine = StaticEngine(static_reader(value.encode()))
    await exercise_engine(engine, secret_fields=("value",), secret_values=(value,))


async def test_static_engine_serves_the_current_value_and_names_only_the_version() -> None:
    value = new_canary("static-engine")
    engine = StaticEngine(static_reader(value.encode(), version=7))
    request = lease_request(ttl=120)
    issued = await engine.issue(request)
    assert issued.credential == {"type": "static", "value": value, "version": 7}
    assert dict(issued.handle) == {"secret": SECRET, "version": 7}
    assert issued.expires_at == request.expires_at
    assert value not in repr(issued)


async def test_static_engine_refuses_binary_values_without_quoting_them() -> None:
    engine = StaticEngine(static_reader(b"\xff\xfe-binary-\x00"))
    with pytest.raises(EngineError) as caught:
        await engine.issue(lease_request())
    assert "binary" not in str(caught.value)


async def test_static_engine_is_not_renewable() -> None:
    assert not isinstance(StaticEngine(static_reader(b"x")), RenewableEngine)


async def test_fake_engine_conforms_and_revocation_drops_the_credential() -> None:
    engine = FakeDatabaseEngine()
    await exercise_engine(engine, secret_fields=("password",))
    assert engine.roles == {}
    assert isinstance(engine, RenewableEngine)

    request = lease_request(ttl=3600)
    issued = await engine.issue(request)
    assert issued.expires_at == NOW + timedelta(seconds=900)  # the engine may shorten, never lengthen
    lease = lease_for(engine, request, issued)
    assert await engine.renew(lease, NOW + timedelta(days=1)) <= NOW + timedelta(seconds=900)
    await engine.revoke(lease)
    assert engine.roles == {}


# -- the registry --------------------------------------------------------------------------------
@dataclass
class BrokenEngine:
    """A plugin that fails with its own exception types and messages (which quote a secret)."""

    secret: str
    name: str = "broken"
    reveals_value: bool = False
    issue_error: BaseException | None = None
    revoke_error: BaseException | None = None
    outlive: bool = False

    async def issue(self, request: LeaseRequest) -> IssuedCredential:
        if self.issue_error is not None:
            raise self.issue_error
        extra = timedelta(seconds=1) if self.outlive else timedelta(0)
        return IssuedCredential(
            credential={"password": self.secret}, handle={"id": "h"}, expires_at=request.expires_at + extra
        )

    async def revoke(self, lease: Lease) -> None:
        if self.revoke_error is not None:
            raise self.revoke_error


FOREIGN_ERRORS: list[Callable[[str], Exception]] = [
    lambda s: RuntimeError(f"connection string postgresql://admin:{s}@db"),
    ValueError,
    KeyError,
    lambda s: OSError(111, f"refused: {s}"),
    ZeroDivisionError,
]


@pytest.mark.parametrize("make_error", FOREIGN_ERRORS, ids=lambda f: type(f("x")).__name__)
async def test_registry_wraps_foreign_issue_errors_without_their_message(
    make_error: Callable[[str], Exception],
) -> None:
    secret = new_canary("plugin-issue")
    engine = BrokenEngine(secret, issue_error=make_error(secret))
    registry = EngineRegistry(engine)
    with pytest.raises(EngineError) as caught:
        await registry.issue(engine, lease_request())
    assert type(caught.value) is EngineError
    assert find_leaks(str(caught.value), [secret]) == []
    assert find_leaks(repr(caught.value), [secret]) == []
    assert "broken" in str(caught.value)


@pytest.mark.parametrize("make_error", FOREIGN_ERRORS, ids=lambda f: type(f("x")).__name__)
async def test_registry_wraps_foreign_revoke_errors_without_their_message(
    make_error: Callable[[str], Exception],
) -> None:
    secret = new_canary("plugin-revoke")
    engine = BrokenEngine(secret, revoke_error=make_error(secret))
    registry = EngineRegistry(engine)
    request = lease_request()
    issued = await engine.issue(request)
    with pytest.raises(EngineError) as caught:
        await registry.revoke(lease_for(engine, request, issued))
    assert find_leaks(str(caught.value), [secret]) == []


async def test_registry_lets_tether_errors_through_unchanged() -> None:
    own = EngineError("the database refused to create a role")
    engine = BrokenEngine("unused-value", issue_error=own)
    with pytest.raises(EngineError) as caught:
        await EngineRegistry(engine).issue(engine, lease_request())
    assert caught.value is own
    missing = NotFoundError("no such database role")
    engine = BrokenEngine("unused-value", revoke_error=missing)
    request = lease_request()
    with pytest.raises(NotFoundError):
        await EngineRegistry(engine).revoke(lease_for(engine, request, await engine.issue(request)))


async def test_registry_refuses_a_credential_that_outlives_its_grant() -> None:
    secret = new_canary("plugin-outlive")
    engine = BrokenEngine(secret, outlive=True)
    with pytest.raises(EngineError) as caught:
        await EngineRegistry(engine).issue(engine, lease_request())
    assert secret not in str(caught.value)


async def test_registry_routes_by_longest_prefix_and_name() -> None:
    default = StaticEngine(static_reader(b"x"))
    db = FakeDatabaseEngine(name="fake-db")
    analytics = FakeDatabaseEngine(name="fake-analytics")
    registry = EngineRegistry(default)
    registry.mount("prod/db/", db)
    registry.mount("prod/db/analytics/", analytics)
    assert registry.for_secret("prod/db/main") is db
    assert registry.for_secret("prod/db/analytics/ro") is analytics
    assert registry.for_secret("prod/github/token") is default
    assert registry.for_secret("prod/dbx") is default
    assert registry.named("static") is default
    assert registry.named("fake-analytics") is analytics
    with pytest.raises(NotFoundError):
        registry.named("vault")
    lease = Lease(
        id=new_id("lse"),
        grant_id=new_id("grt"),
        task_id=new_id("tsk"),
        engine="vault",
        handle={},
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=1),
    )
    with pytest.raises(TetherError):
        await registry.revoke(lease)
