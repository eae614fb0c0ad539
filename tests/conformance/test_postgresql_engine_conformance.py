"""The postgresql engine passes the secret-engine conformance suite (tests/conformance/test_engines.py)
against the real PostgreSQL of ``TETHER_TEST_PG_DSN``, and leaves no role behind."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.conformance.test_engines import SECRET, exercise_engine
from tests.security.canaries import new_canary
from tether.engines import RenewableEngine
from tether.engines.base import SweepingEngine
from tether.engines.pgsql import Template
from tether.engines.postgresql import PostgresEngine, PostgresEngineConfig, PostgresRole

pytestmark = pytest.mark.postgres


def with_password(dsn: str, password: str) -> str:
    """``dsn`` with ``password``: the test server trusts loopback, so the password is only a
    canary that must never leak from the admin secret."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    netloc = f"{user}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def test_postgresql_engine_conforms_and_leaves_no_role(pg_dsn: str) -> None:
    prefix = f"c{secrets.token_hex(4)}_"
    admin_password = new_canary("pg-admin-dsn")
    dsn = with_password(pg_dsn, admin_password)

    async def read(path: str) -> tuple[int, bytes]:
        assert path == "db/admin/conformance"
        return 1, dsn.encode()

    config = PostgresEngineConfig(
        name="pg-conformance",
        admin_secret="db/admin/conformance",
        roles=(PostgresRole(SECRET, Template(("GRANT CONNECT ON DATABASE {{database}} TO {{name}}",)), 600),),
        role_prefix=prefix,
        default_ttl_seconds=600,
    )
    engine = PostgresEngine(config, read)
    admin = await asyncpg.connect(pg_dsn)
    try:
        assert isinstance(engine, SweepingEngine)
        assert not isinstance(engine, RenewableEngine)
        await exercise_engine(engine, secret_fields=("password",), secret_values=(admin_password,))
        left = await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix)
        assert left == []
        assert admin_password not in repr(engine)
    finally:
        for row in await admin.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix):
            await admin.execute(f'DROP OWNED BY "{row[0]}"; DROP ROLE "{row[0]}"')
        await admin.close()
        await engine.aclose()
