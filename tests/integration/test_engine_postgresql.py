"""The postgresql engine against the real PostgreSQL of ``TETHER_TEST_PG_DSN``: a role works for
what its template grants and nothing else, stops working when revoked (a new connection fails, an
open session is terminated), what it owns is reassigned, a template that escapes GRANT is refused,
an unreachable admin connection is a clear error, and the orphan sweep drops what no live lease
covers. Every role and schema a test creates is dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tether.domain.tasks import Lease, new_id
from tether.engines.base import LeaseRequest
from tether.engines.pgsql import Template
from tether.engines.postgresql import (
    INCOMPLETE_LEASE_SECONDS,
    PostgresEngine,
    PostgresEngineConfig,
    PostgresRole,
)
from tether.errors import ConfigError, EngineError, EngineUnavailableError

pytestmark = pytest.mark.postgres

SECRET = "db/test/readonly"

#: What a session that the server cut off raises on its next query (asyncpg reports a connection
#: closed mid-operation as an internal client error).
TERMINATED = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
    ConnectionError,
)


class World:
    """A schema with a table the role may read and one it may not, an engine, and cleanup."""

    def __init__(self, dsn: str, admin: asyncpg.Connection) -> None:
        self.dsn = dsn
        self.admin = admin
        tag = secrets.token_hex(4)
        self.schema = f"eng_{tag}"
        self.prefix = f"t{tag}_"
        self.extra_roles: list[str] = []

    def engine(self, *statements: str, dsn: str | None = None, name: str = "pg-test") -> PostgresEngine:
        template = Template(
            statements
            or (
                f"GRANT USAGE ON SCHEMA {self.schema} TO {{{{name}}}}",
                f"GRANT SELECT ON {self.schema}.allowed TO {{{{name}}}}",
            )
        )
        config = PostgresEngineConfig(
            name=name,
            admin_secret="db/admin/test",
            roles=(PostgresRole(SECRET, template, 600),),
            role_prefix=self.prefix,
            default_ttl_seconds=600,
            connect_timeout_seconds=2,
        )
        value = (dsn or self.dsn).encode()

        async def read(path: str) -> tuple[int, bytes]:
            assert path == "db/admin/test"
            return 1, value

        return PostgresEngine(config, read)

    async def roles(self) -> list[str]:
        rows = await self.admin.fetch(
            "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", self.prefix
        )
        return sorted(row[0] for row in rows)


@pytest.fixture
async def world(pg_dsn: str) -> AsyncIterator[World]:
    admin = await asyncpg.connect(pg_dsn)
    made = World(pg_dsn, admin)
    await admin.execute(
        f"CREATE SCHEMA {made.schema}; "
        f"CREATE TABLE {made.schema}.allowed (v int); INSERT INTO {made.schema}.allowed VALUES (1); "
        f"CREATE TABLE {made.schema}.hidden (v int)"
    )
    try:
        yield made
    finally:
        for role in sorted({*await made.roles(), *made.extra_roles}):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
            )
            await admin.execute(f'DROP OWNED BY "{role}"; DROP ROLE IF EXISTS "{role}"')
        await admin.execute(f"DROP SCHEMA IF EXISTS {made.schema} CASCADE")
        await admin.close()


def request(secret: str = SECRET, minutes: int = 10) -> LeaseRequest:
    now = datetime.now(UTC)
    return LeaseRequest(
        lease_id=new_id("lse"),
        task_id=new_id("tsk"),
        grant_id=new_id("grt"),
        agent_id="spiffe://acme.test/agent/ci",
        secret=secret,
        now=now,
        expires_at=now + timedelta(minutes=minutes),
    )


def lease_for(req: LeaseRequest, handle: dict[str, Any] | None = None, **changes: Any) -> Lease:
    lease = Lease(
        id=req.lease_id,
        grant_id=req.grant_id,
        task_id=req.task_id,
        engine="pg-test",
        handle=handle or {},
        created_at=req.now,
        expires_at=req.expires_at,
    )
    return replace(lease, **changes)


async def connect(credential: dict[str, Any]) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=credential["host"],
        port=credential["port"],
        database=credential["database"],
        user=credential["username"],
        password=credential["password"],
        timeout=5,
    )


async def test_a_role_reads_what_its_template_grants_and_nothing_else(world: World) -> None:
    engine = world.engine()
    req = request()
    try:
        issued = await engine.issue(req)
    finally:
        await engine.aclose()
    credential = dict(issued.credential)
    assert credential["type"] == "postgresql"
    assert credential["username"] == world.prefix + req.lease_id
    assert issued.handle == {"role": credential["username"], "database": credential["database"]}
    assert "password" not in repr(issued)
    assert issued.expires_at <= req.expires_at
    row = await world.admin.fetchrow(
        "SELECT rolvaliduntil, rolsuper, rolcreaterole, rolcreatedb, shobj_description(oid, 'pg_authid') "
        "FROM pg_roles WHERE rolname = $1",
        credential["username"],
    )
    assert row is not None
    assert row[0] <= req.expires_at  # VALID UNTIL never past the grant (so never past the task)
    assert (row[1], row[2], row[3]) == (False, False, False)
    assert row[4].startswith(f"tether lease {req.lease_id} engine pg-test")
    conn = await connect(credential)
    try:
        assert await conn.fetchval(f"SELECT v FROM {world.schema}.allowed") == 1
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch(f"SELECT * FROM {world.schema}.hidden")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"INSERT INTO {world.schema}.allowed VALUES (2)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f"CREATE TABLE {world.schema}.mine (v int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE ROLE sneaky")
    finally:
        await conn.close()


async def test_revocation_terminates_open_sessions_and_drops_the_role(world: World) -> None:
    engine = world.engine()
    try:
        req = request()
        issued = await engine.issue(req)
        credential = dict(issued.credential)
        session = await connect(credential)
        assert await session.fetchval("SELECT 1") == 1
        await engine.revoke(lease_for(req, dict(issued.handle)))
        with pytest.raises(TERMINATED):
            await session.fetchval("SELECT 1")  # terminated by the revocation
        session.terminate()  # close() may raise on a connection the server cut mid-operation
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await connect(credential)  # the role is gone
        assert await world.roles() == []
        await engine.revoke(lease_for(req, dict(issued.handle)))  # idempotent
    finally:
        await engine.aclose()


async def test_what_the_role_created_is_reassigned_before_the_role_is_dropped(world: World) -> None:
    engine = world.engine(
        f"GRANT USAGE, CREATE ON SCHEMA {world.schema} TO {{{{name}}}}",
    )
    try:
        req = request()
        issued = await engine.issue(req)
        conn = await connect(dict(issued.credential))
        await conn.execute(f"CREATE TABLE {world.schema}.made_by_agent (v int)")
        await conn.close()
        await engine.revoke(lease_for(req, dict(issued.handle)))
    finally:
        await engine.aclose()
    owner = await world.admin.fetchval(
        "SELECT tableowner FROM pg_tables WHERE schemaname = $1 AND tablename = 'made_by_agent'", world.schema
    )
    assert owner == await world.admin.fetchval("SELECT current_user")
    assert await world.roles() == []


async def test_a_lease_without_a_handle_is_revoked_by_its_id(world: World) -> None:
    """The node stopped after the role was created and before the handle was stored."""
    engine = world.engine()
    try:
        req = request()
        await engine.issue(req)
        assert len(await world.roles()) == 1
        await engine.revoke(lease_for(req))  # empty handle
        assert await world.roles() == []
        await engine.revoke(lease_for(request()))  # never created: nothing to do
        with pytest.raises(EngineError, match="another role"):
            await engine.revoke(lease_for(req, {"role": "postgres"}))
    finally:
        await engine.aclose()


async def test_a_template_that_escapes_grant_is_refused_and_leaves_nothing(world: World) -> None:
    powerful = f"{world.prefix}powerful"
    world.extra_roles.append(powerful)
    await world.admin.execute(f'CREATE ROLE "{powerful}" NOLOGIN CREATEROLE')
    engine = world.engine(f'GRANT "{powerful}" TO {{{{name}}}}')
    try:
        with pytest.raises(EngineError, match="more than grants"):
            await engine.issue(request())
        assert await world.roles() == [powerful]  # the role was never committed
        with pytest.raises(ConfigError, match="more than grants"):
            await engine.check()
    finally:
        await engine.aclose()


async def test_check_refuses_a_template_postgresql_rejects_and_accepts_a_good_one(world: World) -> None:
    bad = world.engine(f"GRANT SELECT ON {world.schema}.no_such_table TO {{{{name}}}}")
    good = world.engine()
    try:
        with pytest.raises(ConfigError, match="UndefinedTableError"):
            await bad.check()
        await good.check()
        assert await world.roles() == []  # the checks were rolled back
        with pytest.raises(EngineError, match="creating the role failed"):
            await bad.issue(request())
        assert await world.roles() == []
    finally:
        await bad.aclose()
        await good.aclose()


async def test_an_unreachable_admin_connection_is_engine_unavailable(world: World) -> None:
    engine = world.engine(dsn="postgresql://postgres:hunter2-admin@127.0.0.1:1/test")
    try:
        with pytest.raises(EngineUnavailableError) as caught:
            await engine.issue(request())
        assert "hunter2" not in str(caught.value)
        assert "admin connection failed" in str(caught.value)
        with pytest.raises(EngineUnavailableError):
            await engine.revoke(lease_for(request()))
    finally:
        await engine.aclose()


async def test_an_unknown_secret_is_refused(world: World) -> None:
    engine = world.engine()
    try:
        with pytest.raises(EngineError, match="no role for secret"):
            await engine.issue(request("db/test/other"))
    finally:
        await engine.aclose()


async def test_the_orphan_sweep_drops_roles_no_live_lease_covers(world: World) -> None:
    engine = world.engine()
    other = world.engine(name="pg-other")
    now = datetime.now(UTC)
    try:
        unknown, live, incomplete, revoked, expired, fresh = (request() for _ in range(6))
        issued = {
            r.lease_id: await engine.issue(r) for r in (unknown, live, incomplete, revoked, expired, fresh)
        }
        foreign = request()
        await other.issue(foreign)  # another engine's role with the same prefix: not this engine's to judge
        old = now - timedelta(seconds=INCOMPLETE_LEASE_SECONDS + 5)
        leases = {
            live.lease_id: lease_for(live, dict(issued[live.lease_id].handle)),
            incomplete.lease_id: lease_for(incomplete, created_at=old),
            revoked.lease_id: lease_for(revoked, dict(issued[revoked.lease_id].handle), revoked_at=now),
            expired.lease_id: lease_for(expired, dict(issued[expired.lease_id].handle), expires_at=now),
            fresh.lease_id: lease_for(fresh),  # being issued right now, on another node
        }
        asked: list[str] = []

        async def leases_of(ids: Sequence[str]) -> list[Lease]:
            asked.extend(ids)
            return [leases[i] for i in ids if i in leases]

        dropped = await engine.sweep_orphans(leases_of, now)
        assert sorted(dropped) == sorted([incomplete.lease_id, revoked.lease_id, expired.lease_id])
        assert foreign.lease_id not in asked
        remaining = await world.roles()
        assert remaining == sorted(world.prefix + r.lease_id for r in (live, fresh, foreign))
        assert await engine.sweep_orphans(leases_of, now) == []
    finally:
        await engine.aclose()
        await other.aclose()
