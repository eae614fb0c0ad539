"""The ``postgresql`` secret engine: a fresh PostgreSQL role per activation of a ``dynamic`` grant.

Each role is created by Tether over an admin connection (whose DSN is itself a governed secret), in
one transaction: ``CREATE ROLE … LOGIN PASSWORD … VALID UNTIL`` (never past the grant, so never
past the task), a ``COMMENT`` that marks it as Tether's, the role template's statements, and a
check that the role gained no attribute or membership that would let it escape its grants. The
lease is recorded by the broker before this runs; the role is named after the lease
(:func:`~tether.engines.pgsql.role_name`), so a lease without a handle can still be revoked.

Revocation (task ended, expired, revoked, grant voided) takes the role's login away, terminates its
sessions, ``REASSIGN OWNED`` / ``DROP OWNED`` and ``DROP ROLE``, in that order, retried; what still
fails stays pending and the sweeper retries it. :meth:`PostgresEngine.sweep_orphans` drops roles
Tether created whose lease is gone, ended or was never completed (a crash between recording the
lease and handing out the credential).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from tether.domain.secrets import validate_path
from tether.domain.tasks import Lease
from tether.engines.base import INCOMPLETE_LEASE_SECONDS, IssuedCredential, LeaseRequest
from tether.engines.pgsql import (
    DANGEROUS_ROLES,
    Template,
    check_role_prefix,
    lease_of_role,
    quote_ident,
    quote_literal,
    role_name,
)
from tether.errors import ConfigError, EngineError, EngineUnavailableError

__all__ = [
    "INCOMPLETE_LEASE_SECONDS",
    "LeaseLookup",
    "PostgresEngine",
    "PostgresEngineConfig",
    "PostgresRole",
]

log = logging.getLogger(__name__)

ValueReader = Callable[[str], Awaitable[tuple[int, bytes]]]
#: The store's leases by id (absent ids are left out): how the orphan sweep tells a live role.
LeaseLookup = Callable[[Sequence[str]], Awaitable[Sequence[Lease]]]

COMMENT_PREFIX = "tether lease "
MAX_TTL_SECONDS = 30 * 86400
REVOKE_ATTEMPTS = 3
MAX_REMEMBERED_FAILURES = 10_000

# The role and every role it is (transitively) a member of: what it can do beyond its grants.
_ESCAPES = """
WITH RECURSIVE up(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname = $1
    UNION SELECT m.roleid FROM pg_auth_members m JOIN up ON m.member = up.oid
)
SELECT r.rolname FROM pg_roles r JOIN up ON r.oid = up.oid
WHERE r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication OR r.rolbypassrls
   OR r.rolname = ANY($2::text[])
UNION ALL
SELECT 'ADMIN OPTION on ' || g.rolname FROM pg_auth_members m
    JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
WHERE r.rolname = $1 AND m.admin_option
"""
_OURS = """
SELECT r.rolname, d.description FROM pg_roles r
JOIN pg_shdescription d ON d.objoid = r.oid AND d.classoid = 'pg_authid'::regclass
WHERE starts_with(r.rolname, $1) AND starts_with(d.description, $2)
"""


@dataclass(frozen=True, slots=True)
class PostgresRole:
    """What one secret path hands out: a role made by ``template``, living ``default_ttl_seconds``
    (or less: never past the grant)."""

    secret: str
    template: Template
    default_ttl_seconds: int

    def __post_init__(self) -> None:
        validate_path(self.secret)


@dataclass(frozen=True, slots=True)
class PostgresEngineConfig:
    """One engine instance (``[postgresql.<name>]`` in the engines file, see docs/engines.md)."""

    name: str
    admin_secret: str
    roles: tuple[PostgresRole, ...]
    role_prefix: str = "tether_"
    default_ttl_seconds: int = 3600
    max_ttl_seconds: int = 86400
    host: str | None = None
    port: int | None = None
    database: str | None = None
    connect_timeout_seconds: float = 5.0
    max_connections: int = 4
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.roles:
            raise ConfigError(f"postgresql engine {self.name!r}: no roles")
        check_role_prefix(self.role_prefix)
        validate_path(self.admin_secret)
        if not 1 <= self.max_ttl_seconds <= MAX_TTL_SECONDS:
            raise ConfigError(f"postgresql engine {self.name!r}: max_ttl_seconds must be 1 s to 30 days")
        for ttl, what in [(self.default_ttl_seconds, "default_ttl_seconds")] + [
            (role.default_ttl_seconds, f"{role.secret}: default_ttl_seconds") for role in self.roles
        ]:
            if not 1 <= ttl <= self.max_ttl_seconds:
                raise ConfigError(
                    f"postgresql engine {self.name!r}: {what} must be between 1 and max_ttl_seconds"
                )
        if any(role.secret == self.admin_secret for role in self.roles):
            raise ConfigError(f"postgresql engine {self.name!r}: a role cannot be the admin secret")
        if len({role.secret for role in self.roles}) != len(self.roles):
            raise ConfigError(f"postgresql engine {self.name!r}: a secret has two roles")

    def role(self, secret: str) -> PostgresRole | None:
        return next((role for role in self.roles if role.secret == secret), None)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the admin connection goes and what the agent is told (from the DSN, overridable)."""

    host: str
    port: int
    database: str


def _target(dsn: str, config: PostgresEngineConfig) -> _Target:
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise EngineError(f"postgresql engine {config.name!r}: the admin secret is not a postgresql:// DSN")
    try:
        port = parts.port or 5432
    except ValueError:
        raise EngineError(
            f"postgresql engine {config.name!r}: the admin DSN's port is not a number"
        ) from None
    database = unquote(parts.path.lstrip("/")) or unquote(parts.username or "") or "postgres"
    return _Target(
        host=config.host or parts.hostname or "localhost",
        port=config.port or port,
        database=config.database or database,
    )


class PostgresEngine:
    """Dynamic PostgreSQL roles; ``read_value(path)`` reads the admin DSN (a governed secret)."""

    reveals_value = False  # the credential is minted, never the stored value

    def __init__(self, config: PostgresEngineConfig, read_value: ValueReader) -> None:
        self.config = config
        self.name = config.name
        self._read_value = read_value
        self._pool: asyncpg.Pool | None = None
        self._pool_version: int | None = None
        self._target: _Target | None = None
        self._lock = asyncio.Lock()
        # Leases whose issue failed with nothing created, oldest first (bounded).
        self._not_created: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"PostgresEngine(name={self.name!r}, roles={len(self.config.roles)})"

    # -- the admin connection -------------------------------------------------------------------
    async def _admin(self) -> tuple[asyncpg.Pool, _Target]:
        """The admin pool, rebuilt when the admin secret was rotated."""
        version, value = await self._read_value(self.config.admin_secret)
        async with self._lock:
            if self._pool is not None and self._pool_version == version and self._target is not None:
                return self._pool, self._target
            try:
                dsn = value.decode("utf-8")
            except UnicodeDecodeError:
                raise EngineError(f"postgresql engine {self.name!r}: the admin DSN is not text") from None
            target = _target(dsn, self.config)
            old, self._pool = self._pool, None
            if old is not None:
                with contextlib.suppress(Exception):
                    await old.close()
            try:
                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=0,
                    max_size=self.config.max_connections,
                    timeout=self.config.connect_timeout_seconds,
                    command_timeout=30,
                    statement_cache_size=0,  # DDL-heavy; nothing worth preparing
                )
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # The class name only: a driver's message may quote the DSN.
                raise EngineUnavailableError(
                    f"postgresql engine {self.name!r}: the admin connection failed ({type(exc).__name__})"
                ) from None
            self._pool, self._pool_version, self._target = pool, version, target
            return pool, target

    @contextlib.asynccontextmanager
    async def _connection(self) -> Any:
        pool, target = await self._admin()
        try:
            async with pool.acquire(timeout=self.config.connect_timeout_seconds) as conn:
                yield conn, target
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError) as exc:
            raise EngineUnavailableError(
                f"postgresql engine {self.name!r}: the admin connection failed ({type(exc).__name__})"
            ) from None

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), timeout=5)

    # -- issuing --------------------------------------------------------------------------------
    async def issue(self, request: LeaseRequest) -> IssuedCredential:
        role = self.config.role(request.secret)
        if role is None:
            raise EngineError(f"postgresql engine {self.name!r} has no role for secret {request.secret!r}")
        expires_at = min(request.expires_at, request.now + timedelta(seconds=role.default_ttl_seconds))
        name = role_name(self.config.role_prefix, request.lease_id)
        password = secrets.token_urlsafe(32)
        try:
            async with self._connection() as (conn, target):
                try:
                    async with conn.transaction():
                        await self._create(conn, name, password, expires_at, request, role, target)
                except (asyncpg.PostgresError, EngineError) as exc:
                    # The server rolled the transaction back: no role exists.
                    self._remember_not_created(request.lease_id)
                    if isinstance(exc, EngineError):
                        raise
                    raise EngineError(
                        f"postgresql engine {self.name!r}: creating the role failed "
                        f"({type(exc).__name__}: {_safe_message(exc, password)})"
                    ) from None
        except EngineUnavailableError:
            # No connection, so no statement ran: revoking this lease has nothing to drop.
            self._remember_not_created(request.lease_id)
            raise
        return IssuedCredential(
            credential={
                "type": "postgresql",
                "host": target.host,
                "port": target.port,
                "database": target.database,
                "username": name,
                "password": password,
                "expires_at": expires_at.isoformat(),
            },
            handle={"role": name, "database": target.database},
            expires_at=expires_at,
        )

    def _remember_not_created(self, lease_id: str) -> None:
        self._not_created[lease_id] = None
        while len(self._not_created) > MAX_REMEMBERED_FAILURES:
            del self._not_created[next(iter(self._not_created))]

    async def _create(
        self,
        conn: asyncpg.Connection,
        name: str,
        password: str,
        expires_at: datetime,
        request: LeaseRequest,
        role: PostgresRole,
        target: _Target,
    ) -> None:
        until = expires_at.astimezone(UTC).isoformat(sep=" ")
        comment = f"{COMMENT_PREFIX}{request.lease_id} engine {self.name} task {request.task_id}"
        values = {"name": name, "password": password, "expiration": until, "database": target.database}
        statements = [
            f"CREATE ROLE {quote_ident(name)} LOGIN PASSWORD {quote_literal(password)} "
            f"VALID UNTIL {quote_literal(until)} "
            "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT",
            f"COMMENT ON ROLE {quote_ident(name)} IS {quote_literal(comment)}",
            *(statement.rstrip().removesuffix(";") for statement in role.template.render(values)),
        ]
        # One round trip (the simple query protocol runs them in order, in the open transaction);
        # each template entry is one statement (checked), and "\n;\n" ends any trailing comment.
        await conn.execute("\n;\n".join(statements))
        escapes = await conn.fetch(_ESCAPES, name, list(DANGEROUS_ROLES))
        if escapes:
            found = ", ".join(sorted({str(row[0]) for row in escapes}))[:200]
            raise EngineError(
                f"postgresql engine {self.name!r}: the role template of {role.secret!r} gives the role "
                f"more than grants ({found}); nothing was issued"
            )

    async def check(self) -> None:
        """Try every role template in a transaction that is rolled back: a template PostgreSQL
        refuses, or one that gives the role an attribute or membership beyond its grants, raises
        :class:`ConfigError` with the reason. Needs the admin connection."""
        now = datetime.now(UTC)
        async with self._connection() as (conn, target):
            for role in self.config.roles:
                probe = LeaseRequest(
                    lease_id="lse_" + secrets.token_urlsafe(16),
                    task_id="tsk_" + "0" * 22,
                    grant_id="grt_" + "0" * 22,
                    agent_id="check",
                    secret=role.secret,
                    now=now,
                    expires_at=now + timedelta(minutes=1),
                )
                name = role_name(self.config.role_prefix, probe.lease_id)
                tx = conn.transaction()
                await tx.start()
                try:
                    await self._create(
                        conn, name, secrets.token_urlsafe(16), probe.expires_at, probe, role, target
                    )
                except EngineError as exc:
                    raise ConfigError(str(exc)) from None
                except asyncpg.PostgresError as exc:
                    raise ConfigError(
                        f"postgresql engine {self.name!r}: the role template of {role.secret!r} "
                        f"fails: {type(exc).__name__}: {_safe_message(exc, '')}"
                    ) from None
                finally:
                    await tx.rollback()

    # -- revoking -------------------------------------------------------------------------------
    async def revoke(self, lease: Lease) -> None:
        handle_role = lease.handle.get("role")
        name = role_name(self.config.role_prefix, lease.id)
        if handle_role is not None and handle_role != name:
            raise EngineError(f"lease {lease.id}: its handle names another role")
        if not lease.handle and lease.id in self._not_created:
            del self._not_created[lease.id]
            return  # its issue failed before any role existed (e.g. the admin connection was down)
        await self._drop(name)

    async def _drop(self, name: str) -> None:
        last: BaseException | None = None
        for attempt in range(REVOKE_ATTEMPTS):
            try:
                async with self._connection() as (conn, _):
                    await self._drop_once(conn, name)
            except asyncpg.PostgresError as exc:
                # E.g. a session that logged in between terminate and drop, or a concurrent revoke.
                last = exc
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                return
        raise EngineError(
            f"postgresql engine {self.name!r}: dropping role {name} failed {REVOKE_ATTEMPTS} times "
            f"({type(last).__name__})"
        )

    @staticmethod
    async def _drop_once(conn: asyncpg.Connection, name: str) -> None:
        ident = quote_ident(name)
        try:
            await conn.execute(f"ALTER ROLE {ident} NOLOGIN")  # committed: no new session from here on
        except asyncpg.UndefinedObjectError:
            return  # never created (a crash before), or revoked already: idempotent
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename = $1 AND pid <> pg_backend_pid()",
            name,
        )
        # One implicit transaction (simple query protocol): all three or none.
        await conn.execute(
            f"REASSIGN OWNED BY {ident} TO CURRENT_USER;\nDROP OWNED BY {ident};\nDROP ROLE IF EXISTS {ident}"
        )

    # -- orphans --------------------------------------------------------------------------------
    async def sweep_orphans(self, leases_of: LeaseLookup, now: datetime) -> list[str]:
        """Drop the roles this engine created whose lease is unknown, revoked, expired, or was never
        completed (no handle :data:`INCOMPLETE_LEASE_SECONDS` after it was recorded). Returns the
        ids of the store's leases whose role was dropped here (to be marked revoked)."""
        async with self._connection() as (conn, _):
            rows = await conn.fetch(_OURS, self.config.role_prefix, COMMENT_PREFIX)
        found: dict[str, str] = {}
        for row in rows:
            role, comment = str(row[0]), str(row[1])
            lease_id = lease_of_role(self.config.role_prefix, role)
            words = comment.split()
            if lease_id is None or words[2:5] != [lease_id, "engine", self.name]:
                continue  # another engine's (or another deployment's) role: not ours to judge
            found[lease_id] = role
        if not found:
            return []
        known = {lease.id: lease for lease in await leases_of(list(found))}
        cutoff = now - timedelta(seconds=INCOMPLETE_LEASE_SECONDS)
        dropped: list[str] = []
        for lease_id, role in found.items():
            lease = known.get(lease_id)
            orphan = (
                lease is None
                or lease.revoked_at is not None
                or lease.engine_revoked_at is not None
                or lease.expires_at <= now
                or (not lease.handle and lease.created_at <= cutoff)
            )
            if not orphan:
                continue
            try:
                await self._drop(role)
            except EngineError as exc:
                log.warning("orphan role of lease %s: %s", lease_id, exc)
                continue
            log.info("dropped orphan role of lease %s (engine %s)", lease_id, self.name)
            if lease is not None:
                dropped.append(lease_id)
        return dropped


def _safe_message(exc: asyncpg.PostgresError, password: str) -> str:
    """PostgreSQL's message, short, without the password (a message may quote a statement)."""
    message = str(getattr(exc, "message", "") or "")[:200]
    return message.replace(password, "***") if password else message
