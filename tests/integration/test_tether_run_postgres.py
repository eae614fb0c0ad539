"""``tether run --postgres``: a real ``psql`` child gets a short-lived, task-bound role in its
``PG*`` variables (the one documented case where the child holds a credential), works with it for
what the role template grants, and the role is dropped when the child exits. Needs the real
PostgreSQL of ``TETHER_TEST_PG_DSN`` and Debian's ``psql``."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conformance.test_postgresql_engine_conformance import with_password
from tests.integration.governed import deploy_policies
from tests.integration.test_cli import TETHER, Node, assert_error, clean_env, start_server, stop
from tests.integration.test_tether_run import last_task
from tests.security.canaries import new_canary
from tether.crypto.jose import generate_private_jwk

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        shutil.which("psql") is None, reason="psql (Debian's postgresql-client) is not installed"
    ),
]

ROLE = "db/run/readonly"
POLICIES = """
@id("open")
permit(principal, action == Action::"open_task", resource) when { context.task.purpose == "deploy" };

@id("open-incident-with-approval")
permit(principal, action == Action::"open_task", resource)
when { context.task.purpose == "incident" && context.approval };

@id("dynamic-db")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { context.mode == "dynamic" && context.task.secrets.contains(resource.path) };
"""
ADMIN_PASSWORD = new_canary("run-admin-dsn")


def pg(dsn: str, sql: str) -> list[asyncpg.Record]:
    """Run ``sql`` (one query, or several statements without results)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            if ";" in sql:
                await conn.execute(sql)
                return []
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(run())


@dataclass(frozen=True)
class World:
    node: Node
    agent_id: str
    prefix: str
    key: Path
    schema: str


@pytest.fixture(scope="module")
def world(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("run-pg")
    tag = secrets.token_hex(4)
    schema, prefix = f"run_{tag}", f"r{tag}_"
    pg(
        pg_dsn,
        f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.allowed (v int); "
        f"INSERT INTO {schema}.allowed VALUES (42)",
    )
    engines = base / "engines.toml"
    engines.write_text(
        f"""
[postgresql.run-db]
admin_secret = "db/admin/run"
role_prefix = "{prefix}"
default_ttl_seconds = 300

[postgresql.run-db.roles."{ROLE}"]
statements = [
  "GRANT USAGE ON SCHEMA {schema} TO {{{{name}}}}",
  "GRANT SELECT ON {schema}.allowed TO {{{{name}}}}",
]
""",
        encoding="utf-8",
    )
    data = base / "data"
    init = subprocess.run(
        [*TETHER, "init", "--data-dir", str(data), "--json"],
        capture_output=True, text=True, env=clean_env(), check=False, timeout=60,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    with (data / "tether.toml").open("a", encoding="utf-8") as config:
        config.write(f"engines_file = {json.dumps(str(engines))}\n")
    proc, port = start_server(data, base / "server.log")
    try:
        addr = f"http://127.0.0.1:{port}"
        node = Node(data, port, addr, json.loads(init.stdout)["root_token"], {}, init.stderr)
        admin = {"Authorization": f"Bearer {node.token}"}

        async def seed() -> None:
            async with httpx.AsyncClient(base_url=addr) as http:
                await deploy_policies(http, admin, POLICIES)
                for path, value in (
                    ("db/admin/run", with_password(pg_dsn, ADMIN_PASSWORD)),
                    (ROLE, "dynamic"),
                ):
                    meta = {"sensitivity": "confidential", "purposes": ["deploy"], "destinations": []}
                    response = await http.put(
                        f"/v1/secrets/{path}", json={"value": value, **meta}, headers=admin
                    )
                    assert response.status_code == 201, response.text

        asyncio.run(seed())
        private = generate_private_jwk()
        key = base / "agent.jwk"
        key.write_text(json.dumps(private), encoding="utf-8")
        public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
        attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": ["deploy"]}
        response = httpx.post(
            f"{addr}/v1/agents",
            json={"name": "runner", "public_key": public, "attributes": attributes},
            headers=admin,
        )
        assert response.status_code == 201, response.text
        yield World(node, response.json()["id"], prefix, key, schema)
    finally:
        stop(proc)
        for row in pg(pg_dsn, f"SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{prefix}')"):
            pg(pg_dsn, f'DROP OWNED BY "{row[0]}"; DROP ROLE "{row[0]}"')
        pg(pg_dsn, f"DROP SCHEMA {schema} CASCADE")
    assert ADMIN_PASSWORD not in (base / "server.log").read_text(errors="replace")


def run(world: World, *command: str) -> subprocess.CompletedProcess[str]:
    node, agent_id, key = world.node, world.agent_id, world.key
    result = subprocess.run(
        [
            *TETHER, "run", "--agent", agent_id, "--agent-key", str(key), "--purpose", "deploy",
            "--objective", "read the allowed table", "--postgres", ROLE, "--ttl", "5m", "--", *command,
        ],
        capture_output=True, text=True, env=node.env(PGUSER="someone-else", PGSERVICE="prod"),
        stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    assert ADMIN_PASSWORD not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result


def test_psql_works_with_a_task_bound_role_that_is_dropped_at_exit(
    world: World, pg_dsn: str, tmp_path: Path
) -> None:
    node, prefix = world.node, world.prefix
    dump = tmp_path / "environ"
    script = f'psql -XAtc "SELECT v FROM {world.schema}.allowed" && cat /proc/self/environ > "{dump}"'
    result = run(world, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
    environ = dict(item.split("=", 1) for item in dump.read_text().split("\0") if "=" in item)
    assert environ["PGUSER"].startswith(prefix)  # the credential replaced the caller's libpq settings
    assert "PGSERVICE" not in environ
    assert environ["PGPASSWORD"]  # documented: the child holds this short-lived password
    assert ADMIN_PASSWORD not in dump.read_text()
    assert "TETHER_TOKEN" not in environ
    task = last_task(node)
    assert task["status"] == "completed"
    assert pg(pg_dsn, f"SELECT rolname FROM pg_roles WHERE rolname = '{environ['PGUSER']}'") == []
    listed = subprocess.run(
        [*TETHER, "lease", "list", "--task", task["id"], "--json"],
        capture_output=True, text=True, env=node.env(), timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    [lease] = json.loads(listed.stdout)["items"]
    assert (lease["state"], lease["engine"], lease["handle"]["role"]) == (
        "revoked",
        "run-db",
        environ["PGUSER"],
    )
    assert environ["PGPASSWORD"] not in listed.stdout
    table = subprocess.run(
        [*TETHER, "lease", "list", "--state", "revoked"],
        capture_output=True, text=True, env=node.env(), timeout=60, check=False,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert environ["PGUSER"] in table.stdout
    assert "revoked" in table.stdout


def test_a_failing_psql_fails_the_task_and_its_role_is_dropped_too(world: World, pg_dsn: str) -> None:
    node, prefix = world.node, world.prefix
    result = run(world, "psql", "-XAtc", "CREATE TABLE public.not_allowed (v int)", "-v", "ON_ERROR_STOP=1")
    assert result.returncode != 0
    assert "permission denied" in result.stderr
    assert last_task(node)["status"] == "failed"
    assert pg(pg_dsn, f"SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{prefix}')") == []


def test_a_task_that_needs_an_approval_is_revoked_and_nothing_runs(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    node, agent_id, key = world.node, world.agent_id, world.key
    result = subprocess.run(
        [
            *TETHER, "run", "--agent", agent_id, "--agent-key", str(key), "--purpose", "incident",
            "--objective", "page the on-call", "--postgres", ROLE, "--", "touch", str(marker),
        ],
        capture_output=True, text=True, env=node.env(), stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    line = assert_error(
        result, 1, "needs an approval (apr_", "was withdrawn", "--wait-approval", "nothing was run"
    )
    assert not marker.exists()
    task_id = line.split("task ", 1)[1].split(" ", 1)[0]
    task = httpx.get(f"{node.addr}/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {node.token}"})
    assert task.json()["status"] == "revoked"


def test_with_wait_approval_the_child_runs_once_an_approver_approves(world: World, pg_dsn: str) -> None:
    node, agent_id, key = world.node, world.agent_id, world.key
    admin = {"Authorization": f"Bearer {node.token}"}
    proc = subprocess.Popen(
        [
            *TETHER, "run", "--agent", agent_id, "--agent-key", str(key), "--purpose", "incident",
            "--objective", "read during the incident", "--postgres", ROLE, "--wait-approval", "1m",
            "--", "psql", "-XAtc", f"SELECT v FROM {world.schema}.allowed",
        ],
        env=node.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        approval = None
        while approval is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            pending = httpx.get(f"{node.addr}/v1/approvals", headers=admin).json()["items"]
            approval = next((a["id"] for a in pending if a["action"] == "open_task"), None)
            time.sleep(0.1)
        answer = httpx.post(
            f"{node.addr}/v1/approvals/{approval}/approve", json={"reason": "on-call page"}, headers=admin
        )
        assert answer.status_code == 200, answer.text
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "42"
    assert f"waits for approval {approval}" in stderr
    task = last_task(node)
    assert task["status"] == "completed"
    assert pg(pg_dsn, f"SELECT rolname FROM pg_roles WHERE starts_with(rolname, '{world.prefix}')") == []
