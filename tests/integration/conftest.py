"""Fixtures for the HTTP API: a real broker on SQLite (and PostgreSQL where configured)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import clone_pg_template, copy_sqlite_template
from tests.security.canaries import SCAN
from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings


def _audit_sink() -> Path | None:
    """The suite-wide audit copy scanned for canaries at the end (see tests/conftest.py)."""
    path = os.environ.get("TETHER_AUDIT_JSONL")
    return Path(path) if path else None


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def broker(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, pg_template: str | None
) -> AsyncIterator[Broker]:
    """A freshly initialised node on SQLite, and on PostgreSQL (own schema) when configured; the
    store starts as a copy of the test process's migrated template (tests/conftest.py)."""
    schema = None
    if request.param == "postgresql":
        dsn = os.environ.get("TETHER_TEST_PG_DSN")
        if not dsn:
            pytest.skip("TETHER_TEST_PG_DSN is not set; PostgreSQL tests skipped")
        schema = "t_api_" + secrets.token_hex(6)
        await clone_pg_template(dsn, pg_template, schema)
        settings = Settings(
            data_dir=tmp_path, database_url=dsn, pg_schema=schema, audit_jsonl_path=_audit_sink()
        )
    else:
        copy_sqlite_template(sqlite_template, tmp_path / "tether.db")
        settings = Settings(data_dir=tmp_path, audit_jsonl_path=_audit_sink())
        assert settings.database_url == f"sqlite:///{tmp_path / 'tether.db'}"
    node = Broker.from_settings(settings)
    result = await node.init()
    node.root_token = result.root_token  # type: ignore[attr-defined]
    yield node
    await SCAN.check_store(node, request.node.nodeid)  # the suite-wide leak scan (tests/conftest.py)
    if schema is not None:
        async with node.storage._engine.begin() as conn:  # type: ignore[attr-defined]
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await node.close()


@pytest.fixture
def root_token(broker: Broker) -> str:
    token: str = broker.root_token  # type: ignore[attr-defined]
    return token


@pytest.fixture
async def client(broker: Broker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(broker)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as http:
        yield http
        # Metrics output for the suite-wide leak scan (the response is scanned as it is sent).
        await http.get("/metrics", headers={"Authorization": f"Bearer {broker.root_token}"})  # type: ignore[attr-defined]


@pytest.fixture
def admin(root_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {root_token}"}


@pytest.fixture
async def make_operator(client: httpx.AsyncClient, admin: dict[str, str]):  # type: ignore[no-untyped-def]
    async def make(name: str, role: str) -> dict[str, str]:
        response = await client.post("/v1/operators", json={"name": name, "role": role}, headers=admin)
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}

    return make
