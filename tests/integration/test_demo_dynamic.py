"""``tether demo`` on a node with a PostgreSQL engine (``TETHER_ENGINES_FILE``): the narration issues a
dynamic credential — a role for one task of deploy-bot — and the role is gone once the task ends. The
admin DSN carries a canary password that must not appear in the demo's output. Uses the real
PostgreSQL of ``TETHER_TEST_PG_DSN``; ``make run`` itself needs none (tests/integration/test_demo.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conformance.test_postgresql_engine_conformance import with_password
from tests.integration.test_demo import TETHER, free_port
from tests.security.canaries import new_canary
from tether.api import create_app
from tether.broker import Broker
from tether.cli.demo import TOKEN_FILE
from tether.cli.node import initialise
from tether.config import Settings

pytestmark = pytest.mark.postgres

ROLE_SECRET = "prod/db/readonly"


def engines_file(path: Path, schema: str, prefix: str) -> Path:
    path.write_text(
        f"""
[postgresql.demo-db]
admin_secret = "db/admin/demo"
role_prefix = "{prefix}"
default_ttl_seconds = 300

[postgresql.demo-db.roles."{ROLE_SECRET}"]
statements = ["GRANT USAGE ON SCHEMA {schema} TO {{{{name}}}}"]
""",
        encoding="utf-8",
    )
    return path


async def write_secrets(data_dir: Path, admin_dsn: str) -> None:
    """What an operator writes before starting the demo with an engines file (docs/engines.md)."""
    broker = Broker.from_settings(Settings.load(data_dir))
    await broker.start()
    token = (data_dir / TOKEN_FILE).read_text(encoding="ascii").strip()
    admin = {"Authorization": f"Bearer {token}"}
    try:
        transport = httpx.ASGITransport(app=create_app(broker))
        async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as http:
            for path, body in (
                ("db/admin/demo", {"value": admin_dsn, "sensitivity": "restricted"}),
                (
                    ROLE_SECRET,
                    {
                        "value": "dynamic: see the engines file",
                        "sensitivity": "confidential",
                        "purposes": ["deploy"],
                        "destinations": ["github"],
                    },
                ),
            ):
                written = await http.put(f"/v1/secrets/{path}", json=body, headers=admin)
                assert written.status_code == 201, written.text
    finally:
        await broker.close()


async def test_demo_with_a_postgresql_engine_issues_a_role_for_a_task_and_drops_it(
    pg_dsn: str, tmp_path: Path
) -> None:
    tag = secrets.token_hex(4)
    schema, prefix = f"demo_{tag}", f"m{tag}_"
    pg = await asyncpg.connect(pg_dsn)
    await pg.execute(f"CREATE SCHEMA {schema}")
    data_dir = tmp_path / "dev"
    canary = new_canary("demo-admin-dsn")
    try:
        outcome = await asyncio.to_thread(
            initialise, data_dir, key_provider="unsafe-dev", trust_domain="acme.test"
        )
        fd = os.open(data_dir / TOKEN_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(outcome.root_token + "\n")
        await write_secrets(data_dir, with_password(pg_dsn, canary))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env.update(
            TETHER_ENGINES_FILE=str(engines_file(tmp_path / "engines.toml", schema, prefix)), COLUMNS="400"
        )
        result = await asyncio.to_thread(
            subprocess.run,
            [
                *TETHER,
                "demo",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--exit-after-seed",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        line = next((x for x in result.stdout.splitlines() if x.startswith("[run 2/2]")), "")
        assert f"a dynamic grant for {ROLE_SECRET} made PostgreSQL role {prefix}lse_" in line, result.stdout
        assert "VALID UNTIL 20" in line
        assert "not printed" in line
        assert "ended its lease (revoked)" in line, line
        assert "[run 1/2]" in result.stdout  # tether run still ran
        leftover = await pg.fetchval("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", prefix)
        assert leftover == 0  # the task ended: its role was dropped
        assert canary not in result.stdout
        assert canary not in result.stderr
    finally:
        for row in await pg.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix):
            await pg.execute(f'DROP OWNED BY "{row[0]}"; DROP ROLE "{row[0]}"')
        await pg.execute(f"DROP SCHEMA {schema} CASCADE")
        await pg.close()
