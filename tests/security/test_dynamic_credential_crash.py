"""A real ``tether server`` is SIGKILLed between recording a dynamic lease and committing the role it
creates: nothing is left alive afterwards, and after a restart the lease is revoked with its task.

The role's creation is held open deterministically: the test keeps an uncommitted ``GRANT`` on the
table the role template grants, so the engine's transaction (``CREATE ROLE`` done, its ``GRANT``
waiting on the same catalog row) is in flight when the server dies. Needs ``TETHER_TEST_PG_DSN``."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conformance.test_postgresql_engine_conformance import with_password
from tests.integration.governed import deploy_policies
from tests.integration.test_cli import clean_env, run
from tests.security.canaries import new_canary
from tests.security.nodes import ServerProcess
from tether.crypto.jose import generate_private_jwk
from tether.sdk import Agent

pytestmark = pytest.mark.postgres

ROLE = "db/crash/readonly"
POLICIES = """
@id("open")
permit(principal, action == Action::"open_task", resource);

@id("dynamic-db")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { context.mode == "dynamic" && context.task.secrets.contains(resource.path) };
"""


def pg(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            if ";" in sql:
                await conn.execute(sql)
                return []
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def world(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[ServerProcess, str, str, str]]:
    tag = secrets.token_hex(4)
    schema, prefix, blocker = f"crash_{tag}", f"k{tag}_", f"k{tag}_blocker"
    pg(pg_dsn, f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (v int); CREATE ROLE {blocker} NOLOGIN")
    engines = tmp_path / "engines.toml"
    engines.write_text(
        f'[postgresql.crash-db]\nadmin_secret = "db/admin/crash"\nrole_prefix = "{prefix}"\n'
        f'[postgresql.crash-db.roles."{ROLE}"]\n'
        f'statements = ["GRANT SELECT ON {schema}.t TO {{{{name}}}}"]\n',
        encoding="utf-8",
    )
    data = tmp_path / "data"
    init = run(["init", "--data-dir", str(data), "--json"], clean_env())
    assert init.returncode == 0, init.stderr
    with (data / "tether.toml").open("a", encoding="utf-8") as config:
        config.write(f"engines_file = {json.dumps(str(engines))}\n")
    server = ServerProcess(data, clean_env(TETHER_WORKERS="1"), tmp_path / "server.log")
    server.start()
    try:
        yield server, json.loads(init.stdout)["root_token"], schema, prefix
    finally:
        server.kill()
        for row in pg(pg_dsn, "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix):
            pg(pg_dsn, f'DROP OWNED BY "{row[0]}"; DROP ROLE "{row[0]}"')
        pg(pg_dsn, f"DROP SCHEMA {schema} CASCADE")


def test_sigkill_between_lease_and_role_leaves_nothing_alive(
    world: tuple[ServerProcess, str, str, str], pg_dsn: str, tmp_path: Path
) -> None:
    server, token, schema, prefix = world
    admin = {"Authorization": f"Bearer {token}"}
    admin_dsn = with_password(pg_dsn, new_canary("crash-admin-dsn"))

    async def seed() -> None:
        async with httpx.AsyncClient(base_url=server.addr) as http:
            await deploy_policies(http, admin, POLICIES)
            for path, value in (("db/admin/crash", admin_dsn), (ROLE, "dynamic")):
                meta = {"sensitivity": "confidential", "purposes": ["deploy"], "destinations": []}
                answer = await http.put(f"/v1/secrets/{path}", json={"value": value, **meta}, headers=admin)
                assert answer.status_code == 201, answer.text

    asyncio.run(seed())
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": "t", "environment": "prod", "owner": "o", "labels": ["deploy"]}
    answer = httpx.post(
        f"{server.addr}/v1/agents",
        json={"name": "crasher", "public_key": public, "attributes": attributes},
        headers=admin,
    )
    assert answer.status_code == 201, answer.text
    agent = Agent(server.addr, answer.json()["id"], private)
    task = agent.task(purpose="deploy", objective="crash", secrets=[ROLE], ttl_seconds=600)
    grant = task.grant(secret=ROLE, mode="dynamic")

    async def hold_and_kill() -> None:
        blocker = await asyncpg.connect(pg_dsn)
        watcher = await asyncpg.connect(pg_dsn)  # outside the blocker's transaction: fresh statistics
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute(f"GRANT SELECT ON {schema}.t TO {prefix}blocker")  # holds the row
            outcome: list[BaseException | dict[str, Any]] = []

            def activate() -> None:
                try:
                    outcome.append(task.activate(grant))
                except BaseException as exc:  # the kill cuts the request off
                    outcome.append(exc)

            thread = threading.Thread(target=activate, daemon=True)
            thread.start()
            deadline = time.monotonic() + 30
            while True:  # the engine's transaction: CREATE ROLE done, its GRANT waiting on us
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%CREATE ROLE%' AND query LIKE $1",
                    f"%{prefix}%",
                )
                if waiting:
                    break
                assert time.monotonic() < deadline, server.log()[-3000:]
                assert thread.is_alive(), (outcome, server.log()[-3000:])
                await asyncio.sleep(0.05)
            server.kill()  # between the lease (recorded) and the role (not committed)
            await tx.rollback()
            await asyncio.to_thread(thread.join, 30)
            assert outcome, "the activation did not return"
            assert isinstance(outcome[0], BaseException), outcome  # no credential was handed out
            # PostgreSQL ends the dead client's transaction: the role never existed for anyone.
            deadline = time.monotonic() + 30
            while await watcher.fetchval(
                "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1) AND rolname <> $2",
                prefix,
                f"{prefix}blocker",
            ):
                assert time.monotonic() < deadline, "a role of the killed server is alive"
                await asyncio.sleep(0.1)
        finally:
            await blocker.close()
            await watcher.close()

    asyncio.run(hold_and_kill())

    server.start()  # the node comes back
    listed = httpx.get(f"{server.addr}/v1/leases", params={"task": task.id}, headers=admin).json()["items"]
    assert [(lease["state"], lease["handle"]) for lease in listed] == [
        ("active", {})
    ]  # recorded, never issued
    agent2 = Agent(server.addr, answer.json()["id"], private)
    agent2.join_task(task.id).complete()  # ending the task revokes the lease: nothing to drop
    listed = httpx.get(f"{server.addr}/v1/leases", params={"task": task.id}, headers=admin).json()["items"]
    assert [lease["state"] for lease in listed] == ["revoked"]
    roles = pg(pg_dsn, "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix)
    assert [row[0] for row in roles] == [f"{prefix}blocker"]
    agent.close()
    agent2.close()
