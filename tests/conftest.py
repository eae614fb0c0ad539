"""Shared fixtures: storage backends, a frozen clock, an unsealed barrier.

HTTP API fixtures live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tether.clock import FrozenClock
from tether.crypto.barrier import Barrier
from tether.crypto.keyring import Keyring
from tether.store.base import Storage
from tether.store.postgres import open_postgres
from tether.store.sqlite import open_sqlite

PG_DSN_ENV = "TETHER_TEST_PG_DSN"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The PostgreSQL DSN for tests; the test is skipped when it is not configured."""
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        pytest.skip(f"{PG_DSN_ENV} is not set; PostgreSQL tests skipped")
    return dsn


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def barrier(clock: FrozenClock) -> Barrier:
    """A barrier unsealed with a fresh one-version keyring."""
    result = Barrier()
    result.unseal(Keyring.new(clock.now()))
    return result


@dataclass(frozen=True, slots=True)
class RawStore:
    """Direct access to what a backend wrote, bypassing Tether (to check what it stores)."""

    backend: str
    sqlite_path: Path | None = None
    pg_dsn: str | None = None
    pg_schema: str | None = None

    async def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, as the database returns it."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as conn:
                names = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                    )
                ]
                result = {name: list(conn.execute(f'SELECT * FROM "{name}"')) for name in names}
            conn.close()
            return result
        assert self.pg_dsn is not None
        assert self.pg_schema is not None
        conn = await asyncpg.connect(self.pg_dsn)
        try:
            names = [
                row["table_name"]
                for row in await conn.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
                    self.pg_schema,
                )
            ]
            return {
                name: [tuple(row) for row in await conn.fetch(f'SELECT * FROM "{self.pg_schema}"."{name}"')]
                for name in names
            }
        finally:
            await conn.close()

    def files(self) -> list[Path]:
        """The database's files on disk (SQLite only: the main file, WAL and shared memory)."""
        if self.sqlite_path is None:
            return []
        candidates = [self.sqlite_path, *(Path(f"{self.sqlite_path}{s}") for s in ("-wal", "-journal"))]
        return [path for path in candidates if path.exists()]


RAW_STORE = pytest.StashKey[RawStore]()


async def drop_pg_schema(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """A freshly migrated store of each backend; PostgreSQL gets its own schema, dropped afterwards."""
    if request.param == "sqlite":
        path = tmp_path / "tether.db"
        store = open_sqlite(path)
        request.node.stash[RAW_STORE] = RawStore("sqlite", sqlite_path=path)
        try:
            await store.migrate()
            yield store
        finally:
            await store.close()
        return
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = "t_" + secrets.token_hex(6)
    store = open_postgres(dsn, schema=schema)
    request.node.stash[RAW_STORE] = RawStore("postgresql", pg_dsn=dsn, pg_schema=schema)
    try:
        await store.migrate()
        yield store
    finally:
        await store.close()
        await drop_pg_schema(dsn, schema)


@pytest.fixture
def raw_store(request: pytest.FixtureRequest, storage: Storage) -> RawStore:
    """Raw access to the backend behind ``storage`` in the same test."""
    return request.node.stash[RAW_STORE]


# -- suite-wide audit canary scan ---------------------------------------------------------------
# Every broker the suite starts (in-process, and server subprocesses through the environment)
# copies its audit events to one JSON Lines file. When the session ends, that file is scanned
# for every canary value the tests issued (tests.security.canaries.new_canary), in plain, URL,
# hex and base64 forms. A leak fails the run.

AUDIT_SINK_ENV = "TETHER_AUDIT_JSONL"


def pytest_configure(config: pytest.Config) -> None:
    if AUDIT_SINK_ENV not in os.environ:
        sink_dir = Path(tempfile.mkdtemp(prefix="tether-audit-scan-"))
        os.environ[AUDIT_SINK_ENV] = str(sink_dir / "all-events.jsonl")
        config.stash[_OWN_SINK] = True


_OWN_SINK = pytest.StashKey[bool]()
_SCAN = pytest.StashKey[str]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.security.canaries import ISSUED, find_leaks

    if not session.config.stash.get(_OWN_SINK, False):
        return
    path = Path(os.environ[AUDIT_SINK_ENV])
    content = path.read_bytes() if path.exists() else b""
    events = content.count(b"\n")
    leaks = find_leaks(content, ISSUED) if content else []
    session.config.stash[_SCAN] = (
        f"audit canary scan: {events} events from the whole suite, {len(ISSUED)} canaries, {len(leaks)} leaks"
        + (f": {leaks[:5]}" if leaks else "")
    )
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        shutil.rmtree(path.parent, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    from tests.security.report import COUNTS

    for category, counts in sorted(COUNTS.items()):
        terminalreporter.write_line(
            f"security: {category}: {counts.tried} tried, {counts.refused} refused, "
            f"{counts.server_errors} server errors" + (f" ({counts.note})" if counts.note else ""),
            red=counts.server_errors > 0,
        )
    line = config.stash.get(_SCAN, None)
    if line:
        terminalreporter.write_line(
            line, red="leaks: [" in line or ": [" in line, green=line.endswith(" 0 leaks")
        )
