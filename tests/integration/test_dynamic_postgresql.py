"""Dynamic PostgreSQL credentials on the governed path: a node with a postgresql engine (from its
engines file) hands a task a role through ``POST /v1/grants/{id}/activate``; ending the task drops
the role (an open session is terminated, a new connection fails); an unreachable admin connection
is a 503 with nothing left alive; a node that stopped between recording a lease and handing out
its role leaves nothing alive after it starts again. Uses the real PostgreSQL of
``TETHER_TEST_PG_DSN`` (for the engine; the node's own store is SQLite)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conformance.test_postgresql_engine_conformance import with_password
from tests.conftest import copy_sqlite_template
from tests.integration.governed import deploy_policies, register_agent
from tests.security.canaries import SCAN, new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.domain.tasks import Lease, new_id
from tether.engines.base import LeaseRequest
from tether.engines.postgresql import INCOMPLETE_LEASE_SECONDS, PostgresEngine
from tether.errors import ConfigError
from tether.sdk import AsyncAgent, TetherAPIError

pytestmark = pytest.mark.postgres

POLICIES = """
@id("open")
permit(principal, action == Action::"open_task", resource);

@id("dynamic-db")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { context.mode == "dynamic" && context.task.secrets.contains(resource.path) };
"""
ROLE = "db/app/readonly"
DOWN = "db/down/readonly"
#: A role whose credentials live BRIEF_SECONDS (the engine's default_ttl_seconds), shorter than any task.
BRIEF = "db/app/brief"
BRIEF_SECONDS = 4

#: What a session that the server cut off raises on its next query (asyncpg reports a connection
#: closed mid-operation as an internal client error).
TERMINATED = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions._base.InternalClientError,
    ConnectionError,
)


@dataclass
class Node:
    broker: Broker
    http: httpx.AsyncClient
    admin: dict[str, str]
    pg: asyncpg.Connection
    schema: str
    prefix: str

    async def roles(self) -> list[str]:
        rows = await self.pg.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", self.prefix)
        return sorted(row[0] for row in rows)

    async def agent(self, name: str) -> AsyncAgent:
        return await register_agent(self.http, self.admin, name)


def engines_file(path: Path, schema: str, prefix: str) -> Path:
    path.write_text(
        f"""
[postgresql.app-db]
admin_secret = "db/admin/app"
role_prefix = "{prefix}"
default_ttl_seconds = 600

[postgresql.app-db.roles."{ROLE}"]
statements = [
  "GRANT USAGE ON SCHEMA {schema} TO {{{{name}}}}",
  "GRANT SELECT ON {schema}.allowed TO {{{{name}}}}",
]

[postgresql.app-db.roles."{BRIEF}"]
statements = ["GRANT USAGE ON SCHEMA {schema} TO {{{{name}}}}"]
default_ttl_seconds = {BRIEF_SECONDS}

[postgresql.down-db]
admin_secret = "db/admin/down"
role_prefix = "{prefix}"
connect_timeout_seconds = 2

[postgresql.down-db.roles."{DOWN}"]
statements = ["GRANT USAGE ON SCHEMA {schema} TO {{{{name}}}}"]
""",
        encoding="utf-8",
    )
    return path


async def open_node(settings: Settings) -> tuple[Broker, httpx.AsyncClient]:
    broker = Broker.from_settings(settings)
    await broker.start()
    http = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(broker)), base_url="http://tether.test"
    )
    return broker, http


@pytest.fixture
async def node(pg_dsn: str, tmp_path: Path, sqlite_template: Path) -> AsyncIterator[Node]:
    tag = secrets.token_hex(4)
    schema, prefix = f"dyn_{tag}", f"d{tag}_"
    pg = await asyncpg.connect(pg_dsn)
    await pg.execute(
        f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.allowed (v int); "
        f"INSERT INTO {schema}.allowed VALUES (7); CREATE TABLE {schema}.hidden (v int)"
    )
    copy_sqlite_template(sqlite_template, tmp_path / "tether.db")
    settings = Settings(
        data_dir=tmp_path, engines_file=engines_file(tmp_path / "engines.toml", schema, prefix)
    )
    broker = Broker.from_settings(settings)
    token = (await broker.init()).root_token
    await broker.close()
    broker, http = await open_node(settings)
    admin = {"Authorization": f"Bearer {token}"}
    await deploy_policies(http, admin, POLICIES)
    admin_dsn = with_password(pg_dsn, new_canary("admin-dsn"))
    for path, value in (
        ("db/admin/app", admin_dsn),
        ("db/admin/down", "postgresql://postgres@127.0.0.1:1/test"),
        (ROLE, "served by the app-db engine"),
        (BRIEF, "served by the app-db engine"),
        (DOWN, "served by the down-db engine"),
    ):
        body = {"value": value, "sensitivity": "confidential", "purposes": ["deploy"], "destinations": []}
        response = await http.put(f"/v1/secrets/{path}", json=body, headers=admin)
        assert response.status_code == 201, response.text
    made = Node(broker, http, admin, pg, schema, prefix)
    try:
        yield made
    finally:
        await SCAN.check_store(made.broker, "test_dynamic_postgresql")
        await made.http.aclose()
        await made.broker.close()
        for role in await made.roles():
            await pg.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
            )
            await pg.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')
        await pg.execute(f"DROP SCHEMA {schema} CASCADE")
        await pg.close()


async def connect(credential: dict[str, Any]) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=credential["host"],
        port=credential["port"],
        database=credential["database"],
        user=credential["username"],
        password=credential["password"],
        timeout=5,
    )


async def leases(node: Node, state: str) -> list[Lease]:
    return await node.broker.storage.list_leases(node.broker.clock.now(), state=state)


async def test_a_task_gets_a_role_that_stops_working_when_the_task_ends(node: Node) -> None:
    agent = await node.agent("db-reader")
    task = await agent.task(purpose="deploy", objective="read the allowed table", secrets=[ROLE])
    grant = await task.grant(secret=ROLE, mode="dynamic")
    body = await task.activate(grant)
    credential = body["credential"]
    assert credential["type"] == "postgresql"
    assert credential["username"].startswith(node.prefix)
    assert body["expires_at"] <= task.info["expires_at"]
    session = await connect(credential)
    assert await session.fetchval(f"SELECT v FROM {node.schema}.allowed") == 7
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await session.fetch(f"SELECT * FROM {node.schema}.hidden")
    [active] = await leases(node, "active")
    assert dict(active.handle) == {"role": credential["username"], "database": credential["database"]}
    assert "password" not in active.handle

    await task.complete()

    with pytest.raises(TERMINATED):
        await session.fetchval("SELECT 1")  # terminated when the task ended
    session.terminate()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await connect(credential)
    assert await node.roles() == []
    assert [lease.id for lease in await leases(node, "revoked")] == [active.id]
    events = await node.http.get("/v1/audit/events", params={"task": task.id}, headers=node.admin)
    assert credential["password"] not in events.text


async def test_an_unreachable_admin_connection_is_a_503_and_leaves_nothing_alive(node: Node) -> None:
    agent = await node.agent("db-down")
    task = await agent.task(purpose="deploy", objective="read", secrets=[DOWN])
    grant = await task.grant(secret=DOWN, mode="dynamic")
    with pytest.raises(TetherAPIError) as caught:
        await task.activate(grant)
    assert caught.value.status == 503
    assert caught.value.body["type"].endswith("engine-unavailable")
    assert "127.0.0.1" not in str(caught.value.body)  # details only in the server log
    assert await node.roles() == []
    await task.complete()
    assert await leases(node, "active") == []
    assert await leases(node, "revoking") == []  # revoked at once: the engine knows nothing was created


async def test_a_node_stopped_between_lease_and_credential_leaves_nothing_alive_after_restart(
    node: Node,
) -> None:
    """The node recorded the lease and created the role, then stopped before storing the handle
    or answering (as a SIGKILL there would): after it starts again, its sweep drops the role."""
    agent = await node.agent("db-crash")
    task = await agent.task(purpose="deploy", objective="read", secrets=[ROLE], ttl_seconds=3600)
    grant = await task.grant(secret=ROLE, mode="dynamic")
    broker = node.broker
    recorded = broker.clock.now() - timedelta(seconds=INCOMPLETE_LEASE_SECONDS + 10)
    lease = Lease(
        id=new_id("lse"),
        grant_id=grant.id,
        task_id=task.id,
        engine="app-db",
        handle={},
        created_at=recorded,
        expires_at=recorded + timedelta(minutes=30),
    )
    await broker.storage.create_lease(lease)  # what activation records first
    engine = broker.engines.named("app-db")
    assert isinstance(engine, PostgresEngine)
    await engine.issue(
        LeaseRequest(
            lease_id=lease.id,
            task_id=task.id,
            grant_id=grant.id,
            agent_id=agent._session.agent_id or "",
            secret=ROLE,
            now=recorded,
            expires_at=lease.expires_at,
        )
    )
    assert await node.roles() == [node.prefix + lease.id]  # alive, and nobody holds its password
    await node.http.aclose()
    await broker.close()  # the node is gone; the task is still active

    node.broker, node.http = await open_node(broker.settings)  # the node starts again
    await node.broker.tasks.sweep()  # its first sweep (the background loop runs it at start)
    assert await node.roles() == []
    [revoked] = await leases(node, "revoked")
    assert revoked.id == lease.id
    assert (await node.broker.storage.get_task(task.id)).status.value == "active"  # type: ignore[union-attr]


async def test_a_revocation_that_keeps_failing_is_listed_as_failed_and_retried(node: Node) -> None:
    agent = await node.agent("db-failing")
    task = await agent.task(purpose="deploy", objective="read", secrets=[DOWN])
    grant = await task.grant(secret=DOWN, mode="dynamic")
    now = node.broker.clock.now()
    lease = Lease(
        id=new_id("lse"),
        grant_id=grant.id,
        task_id=task.id,
        engine="down-db",
        handle={},
        created_at=now - timedelta(minutes=5),
        expires_at=now - timedelta(minutes=1),
    )
    # Issued, as far as the store knows; its engine's admin connection is unreachable.
    lease = replace(lease, handle={"role": node.prefix + lease.id})
    await node.broker.storage.create_lease(lease)
    await node.broker.tasks.sweep()  # tries, fails (the admin connection is down), keeps it pending
    failed = await node.http.get("/v1/leases", params={"state": "failed"}, headers=node.admin)
    assert failed.status_code == 200, failed.text
    [item] = failed.json()["items"]
    assert (item["id"], item["state"], item["engine"]) == (lease.id, "failed", "down-db")
    assert item["handle"] == {"role": node.prefix + lease.id}
    assert (await node.http.get("/v1/leases", params={"state": "active"}, headers=node.admin)).json()[
        "items"
    ] == []
    refused = await node.http.get("/v1/leases", params={"state": "gone"}, headers=node.admin)
    assert refused.status_code == 422
    assert "state must be one of" in refused.text
    assert (await node.http.get("/v1/leases")).status_code == 401
    await task.complete()


async def test_a_node_whose_role_template_postgresql_refuses_does_not_start(
    node: Node, tmp_path: Path
) -> None:
    powerful = f"{node.prefix}powerful"
    await node.pg.execute(f'CREATE ROLE "{powerful}" NOLOGIN CREATEROLE')
    bad = tmp_path / "bad-engines.toml"
    bad.write_text(
        f"""
[postgresql.app-db]
admin_secret = "db/admin/app"
role_prefix = "{node.prefix}"

[postgresql.app-db.roles."{ROLE}"]
statements = ['GRANT "{powerful}" TO {{{{name}}}}']
""",
        encoding="utf-8",
    )
    settings = node.broker.settings.model_copy(update={"engines_file": bad})
    broker = Broker(settings, node.broker.storage)
    with pytest.raises(ConfigError) as caught:
        await broker.start(migrate=False)
    assert "more than grants" in str(caught.value)
    assert "CREATEROLE" in str(caught.value) or powerful in str(caught.value)
    await broker.engines.aclose()
    assert await node.roles() == [powerful]  # the check was rolled back
    await node.pg.execute(f'DROP ROLE "{powerful}"')


async def test_a_context_change_that_voids_the_grant_drops_its_role(node: Node) -> None:
    agent = await node.agent("db-narrowed")
    task = await agent.task(purpose="deploy", objective="read", secrets=[ROLE, DOWN])
    grant = await task.grant(secret=ROLE, mode="dynamic")
    credential = (await task.activate(grant))["credential"]
    session = await connect(credential)
    voided = await task.update(secrets=[DOWN])  # the role's secret is no longer declared
    assert voided == 1
    [lease] = await leases(node, "revoking")
    await node.broker.tasks.sweep()  # the sweeper's next pass (every sweep_interval_seconds)
    assert await node.roles() == []
    with pytest.raises(TERMINATED):
        await session.fetchval("SELECT 1")
    session.terminate()
    assert [item.id for item in await leases(node, "revoked")] == [lease.id]
    await task.complete()


async def test_a_lease_whose_credential_was_never_handed_out_is_revoked_by_the_sweeper(node: Node) -> None:
    """An issue that failed (or a node that stopped mid-issue) leaves a lease without a handle: the
    sweeper revokes it once it is older than any issue can take, though its task goes on."""
    agent = await node.agent("db-incomplete")
    task = await agent.task(purpose="deploy", objective="read", secrets=[ROLE], ttl_seconds=3600)
    grant = await task.grant(secret=ROLE, mode="dynamic")
    now = node.broker.clock.now()
    old = Lease(
        id=new_id("lse"),
        grant_id=grant.id,
        task_id=task.id,
        engine="app-db",
        handle={},
        created_at=now - timedelta(seconds=INCOMPLETE_LEASE_SECONDS + 5),
        expires_at=now + timedelta(minutes=30),
    )
    recent = replace(old, id=new_id("lse"), created_at=now)
    for lease in (old, recent):
        await node.broker.storage.create_lease(lease)
    await node.broker.tasks.sweep()
    assert [lease.id for lease in await leases(node, "revoked")] == [old.id]
    assert [lease.id for lease in await leases(node, "active")] == [recent.id]  # may still be issuing
    body = await task.activate(grant)  # the task and its grant go on
    assert body["credential"]["username"].startswith(node.prefix)
    await task.complete()
    assert await node.roles() == []


async def valid_until(node: Node, role: str) -> datetime | None:
    """The role's ``VALID UNTIL`` as PostgreSQL holds it (``pg_roles.rolvaliduntil``)."""
    row = await node.pg.fetchrow("SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", role)
    assert row is not None, f"no role {role}"
    value: datetime | None = row[0]
    return value


async def test_a_role_is_valid_until_its_lease_expires_and_is_dropped_when_the_lease_expires(
    node: Node,
) -> None:
    """The role's lifetime (the engine's default_ttl_seconds) is shorter than the task's: VALID UNTIL
    is the lease's expiry to the microsecond, and once it passes the sweeper drops the role though
    the task goes on."""
    agent = await node.agent("db-brief")
    task = await agent.task(purpose="deploy", objective="a brief read", secrets=[BRIEF], ttl_seconds=3600)
    body = await task.activate(await task.grant(secret=BRIEF, mode="dynamic"))
    role = body["credential"]["username"]
    [lease] = await leases(node, "active")
    until = await valid_until(node, role)
    assert until is not None
    assert until == lease.expires_at == datetime.fromisoformat(body["expires_at"])
    assert until < datetime.fromisoformat(task.info["expires_at"])
    assert until - lease.created_at == timedelta(seconds=BRIEF_SECONDS)
    listed = await node.http.get("/v1/leases", params={"task": task.id}, headers=node.admin)
    [item] = listed.json()["items"]
    assert datetime.fromisoformat(item["expires_at"]) == until

    if node.broker.clock.now() < until - timedelta(seconds=1.5):  # (a loaded machine may be late)
        await node.broker.tasks.sweep()
        assert await node.roles() == [role]  # not expired yet: the sweep leaves it
    await asyncio.sleep(max(0.0, (until - node.broker.clock.now()).total_seconds()) + 0.2)
    await node.broker.tasks.sweep()  # the sweeper's next pass after the expiry

    assert await node.roles() == []
    assert [item.id for item in await leases(node, "revoked")] == [lease.id]
    assert (await node.broker.storage.get_task(task.id)).status.value == "active"  # type: ignore[union-attr]
    await task.complete()


async def test_a_role_is_valid_until_its_task_ends_and_is_dropped_when_the_task_expires(node: Node) -> None:
    """The task is shorter than the role's lifetime: VALID UNTIL is the task's end (the grant's expiry,
    the lease's), and when the task expires its role is dropped and its open session terminated."""
    agent = await node.agent("db-short-task")
    task = await agent.task(purpose="deploy", objective="a short task", secrets=[ROLE], ttl_seconds=6)
    grant = await task.grant(secret=ROLE, mode="dynamic")
    body = await task.activate(grant)
    credential = body["credential"]
    [lease] = await leases(node, "active")
    until = await valid_until(node, credential["username"])
    task_end = datetime.fromisoformat(task.info["expires_at"])
    assert until == lease.expires_at == datetime.fromisoformat(body["expires_at"])
    assert until == grant.expires_at <= task_end  # never past the task
    assert task_end - until < timedelta(seconds=1)  # the task's end, not the role's 600 s
    session = await connect(credential)
    assert await session.fetchval(f"SELECT v FROM {node.schema}.allowed") == 7

    await asyncio.sleep(max(0.0, (task_end - node.broker.clock.now()).total_seconds()) + 0.2)
    ended = await node.broker.tasks.sweep()  # expires the task, revokes its lease, drops the role

    assert task.id in ended.task_ids
    assert await node.roles() == []
    with pytest.raises(TERMINATED):
        await session.fetchval("SELECT 1")
    session.terminate()
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await connect(credential)
    assert [item.id for item in await leases(node, "revoked")] == [lease.id]
    assert (await node.broker.storage.get_task(task.id)).status.value == "expired"  # type: ignore[union-attr]
