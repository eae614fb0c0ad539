"""Shared fixtures: storage backends, a frozen clock, an unsealed barrier.

HTTP API fixtures live in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
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


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store migrated once per test process. A test's SQLite store starts as a
    copy (:func:`copy_sqlite_template`): migrating from nothing costs ~0.1 s, a copy ~1 ms, and
    the copy's own migrate finds it at the newest revision."""
    path = tmp_path_factory.mktemp("sqlite-template") / "tether.db"

    async def migrate() -> None:
        store = open_sqlite(path)
        try:
            await store.migrate()
        finally:
            await store.close()

    asyncio.run(migrate())
    leftovers = [p.name for p in path.parent.iterdir() if p != path]
    assert not leftovers, f"the template should be one closed file, not {leftovers}"
    return path


def copy_sqlite_template(template: Path, path: Path) -> Path:
    """A fresh, migrated, empty SQLite store at ``path`` (what ``migrate`` would have made)."""
    shutil.copyfile(template, path)
    return path


_PG_TEMPLATE_PREFIX = "t_template_"


@pytest.fixture(scope="session")
def pg_template() -> str | None:
    """The SQL that makes a migrated, empty schema: a schema migrated once per test process,
    dumped by ``pg_dump`` (then dropped), its name a random token that :func:`clone_pg_template`
    replaces. Running it costs ~0.1 s, migrating from nothing ~0.3-0.5 s; the clone's own migrate
    finds it at the newest revision. None (every test migrates) without PostgreSQL or pg_dump."""
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn or shutil.which("pg_dump") is None:
        return None
    schema = _PG_TEMPLATE_PREFIX + secrets.token_hex(8)

    async def migrate() -> None:
        store = open_postgres(dsn, schema=schema)
        try:
            await store.migrate()
        finally:
            await store.close()

    try:
        asyncio.run(migrate())
        dumped = subprocess.run(
            ["pg_dump", "--no-owner", "--no-privileges", "--inserts", "--schema", schema, dsn],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    finally:
        asyncio.run(drop_pg_schema(dsn, schema))
    if dumped.returncode != 0:  # e.g. a pg_dump older than the server: migrate each schema
        return None
    # psql meta-commands (``\restrict``) are not SQL; the rest runs as one script.
    sql = "\n".join(line for line in dumped.stdout.splitlines() if not line.startswith("\\"))
    return sql.replace(schema, "{schema}") if schema in sql else None


async def clone_pg_template(dsn: str, template: str | None, schema: str) -> None:
    """Create ``schema`` from :func:`pg_template`'s SQL (nothing without a template)."""
    if template is None:
        return
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(template.replace("{schema}", schema))
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def storage(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path, pg_template: str | None
) -> AsyncIterator[Storage]:
    """A freshly migrated store of each backend; PostgreSQL gets its own schema, dropped afterwards."""
    if request.param == "sqlite":
        path = copy_sqlite_template(sqlite_template, tmp_path / "tether.db")
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
        await clone_pg_template(dsn, pg_template, schema)
        await store.migrate()
        yield store
    finally:
        await store.close()
        await drop_pg_schema(dsn, schema)


@pytest.fixture
def raw_store(request: pytest.FixtureRequest, storage: Storage) -> RawStore:
    """Raw access to the backend behind ``storage`` in the same test."""
    return request.node.stash[RAW_STORE]


# -- parallel runs (pytest-xdist, ``--dist loadgroup``) ---------------------------------------------


@pytest.hookimpl(wrapper=True)  # around xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """The tests of a module that share a module-scoped fixture (a served node, a fuzzing world)
    run on one worker, one after another, so that the fixture is set up once; a test that names
    its own ``xdist_group`` (the load and crash suites, which measure time) keeps it."""
    if not config.pluginmanager.hasplugin("xdist"):
        return (yield)
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info is not None else ()
        if any(defs and defs[-1].scope == "module" for defs in definitions):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    yield
    _group_ids(config, items)


def _group_ids(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--dist loadgroup``, a test's group travels to the controller as a ``@group`` suffix of
    its node id, which the worker's xdist plugin appends by setting ``item._nodeid``. pytest 9 keeps
    the id in ``item._id`` instead, so that assignment is lost: every test became a group of its
    own, a module's module-scoped node was set up on each worker that drew one of its tests, and
    the named groups (``load``, ``console-browser``) no longer kept their tests together. Append
    the suffix here where xdist could not."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        names = sorted(
            {
                str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                for m in item.iter_markers("xdist_group")
            }
        )
        if not names or "@" in item.nodeid.rpartition("]")[2]:
            continue  # no group, or xdist's own suffix took
        grouped = f"{item.nodeid}@{'_'.join(names)}"
        if hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(grouped)
        else:
            item._nodeid = grouped


# -- suite-wide leak canary scan -----------------------------------------------------------------
# The tests plant canary secrets (tests.security.canaries.new_canary). Everything a thief or a
# careless operator could read is scanned for each, in plain, URL, hex and base64 forms:
# - audit: every broker the suite starts (in-process, and server subprocesses through the
#   environment) copies its audit events to one JSON Lines file, scanned when the session ends;
# - logs: every log record of this process (Tether's at DEBUG, httpx's at INFO, others at the
#   root level), formatted with its exception text, scanned as it is emitted;
# - http: every response any Tether app in this process sends (ASGI transport or uvicorn), headers
#   and body, except the body of a reveal or dynamic activation (the one place a value belongs);
# - db: the integration ``broker`` fixture's database at teardown (SQLite files, PostgreSQL rows);
# - metrics: ``GET /metrics`` at ``client`` teardown, and every Tether app's registry at the end.
# A leak fails the run; the summary prints one line of counts.
# In a parallel run (pytest-xdist) each worker process is a scanning session of its own: its own
# audit file in the run's directory, its own canaries, logs and responses. Each worker sends its
# counts and leaks (and the security counts of tests/security/report.py) to the controller, which
# prints the one line (and the security table) over all of them and fails the run on any leak, or
# when a worker did not report its scan.

AUDIT_SINK_ENV = "TETHER_AUDIT_JSONL"


class _LogScan(logging.Handler):
    """Scans each log record as the operator's log file would hold it."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from tests.security.canaries import SCAN

        try:
            line = self.format(record)
        except Exception:  # a malformed record is logging's to report, not a leak
            self.handleError(record)
            return
        SCAN.check("logs", f"log {record.name}:{record.lineno}", line, count=line.count("\n") + 1)


def _scanning_call(original: Any) -> Any:
    """``FastAPI.__call__`` and ``TetherAPI.__call__`` (a Tether app's entry, which serves the hot
    routes without calling FastAPI's) that scan what a Tether app sends, once per request (apps
    without a broker pass untouched)."""
    from tests.security.canaries import SCAN

    async def call(app: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or getattr(app.state, "broker", None) is None or _SCANNED in scope:
            await original(app, scope, receive, send)
            return
        scope[_SCANNED] = True  # TetherAPI's entry handing on to FastAPI's: scanned here already
        registry = getattr(getattr(app.state, "metrics", None), "registry", None)
        if registry is not None:
            SCAN.metric_registries.setdefault(id(registry), registry)
        method, path = scope["method"], scope["path"]
        keep_request = method in ("POST", "PATCH") and path.startswith("/v1/tasks")
        request_body: list[bytes] = []
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        body: list[bytes] = []

        async def receive_copy() -> Any:
            message = await receive()
            if keep_request and message["type"] == "http.request":
                request_body.append(message.get("body", b""))
            return message

        async def send_copy(message: Any) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
            await send(message)

        try:
            await original(app, scope, receive_copy, send_copy)
        finally:
            if status:
                SCAN.check_response(
                    method=method,
                    path=path,
                    status=status,
                    headers=headers,
                    body=b"".join(body),
                    request_body=b"".join(request_body),
                )

    return call


_SCANNED = "tests.scanned"
_OWN_SINK = pytest.StashKey[bool]()
_SCAN = pytest.StashKey[str]()
_LEAKS = pytest.StashKey[list[str]]()
_RESTORE = pytest.StashKey[list[Any]]()
_SINK_DIR = pytest.StashKey[Path]()
_WORKER_SCANS = pytest.StashKey[dict[str, dict[str, Any]]]()
_WORKERS_STARTED = pytest.StashKey[set[str]]()
_SCAN_DIR_KEY = "tether_scan_dir"  # in each xdist worker's workerinput
_SCAN_OUTPUT_KEY = "tether_scan"  # in each xdist worker's workeroutput
_TERMINAL_ENV_KEY = "tether_terminal_env"  # the controller's COLUMNS and LINES, in workerinput


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    from fastapi import FastAPI

    from tether.api.hot import TetherAPI

    worker_input: dict[str, Any] = getattr(config, "workerinput", {})
    for name, value in worker_input.get(_TERMINAL_ENV_KEY, {}).items():
        # A worker's environment is the controller's: xdist workers start with COLUMNS=80 and
        # LINES=24, which every CLI subprocess (and the CLI run in process) would inherit and
        # render its tables 80 columns wide, unlike a user's piped command.
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    if _SCAN_DIR_KEY in worker_input:  # an xdist worker of a scanning controller: its own file
        sink = Path(worker_input[_SCAN_DIR_KEY]) / f"events-{worker_input['workerid']}.jsonl"
        os.environ[AUDIT_SINK_ENV] = str(sink)
        config.stash[_OWN_SINK] = True
    elif AUDIT_SINK_ENV not in os.environ:
        sink_dir = Path(tempfile.mkdtemp(prefix="tether-audit-scan-"))
        os.environ[AUDIT_SINK_ENV] = str(sink_dir / "all-events.jsonl")
        config.stash[_OWN_SINK] = True
        config.stash[_SINK_DIR] = sink_dir
        config.stash[_WORKER_SCANS] = {}
        config.stash[_WORKERS_STARTED] = set()
    if not config.stash.get(_OWN_SINK, False):
        return  # a nested run (a suite inside a test): the outer session scans
    handler = _LogScan()
    logging.getLogger().addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in ("tether", "httpx")}
    logging.getLogger("tether").setLevel(logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.INFO)
    # Both entries: TetherAPI serves the hot routes without calling FastAPI.__call__.
    originals = (FastAPI.__call__, TetherAPI.__call__)
    FastAPI.__call__ = _scanning_call(originals[0])  # type: ignore[method-assign]
    TetherAPI.__call__ = _scanning_call(originals[1])  # type: ignore[method-assign]
    config.stash[_RESTORE] = [handler, levels, originals]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist, in the controller: each worker scans into its own file in this run's directory, and
    has the controller's COLUMNS and LINES (set or not)."""
    node.workerinput[_TERMINAL_ENV_KEY] = {name: os.environ.get(name) for name in ("COLUMNS", "LINES")}
    sink_dir = node.config.stash.get(_SINK_DIR, None)
    if sink_dir is not None:
        node.workerinput[_SCAN_DIR_KEY] = str(sink_dir)
        node.config.stash[_WORKERS_STARTED].add(node.workerinput["workerid"])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist, in the controller: keep what the worker's scan found (and its security counts)."""
    from tests.security.report import merge

    output: dict[str, Any] = getattr(node, "workeroutput", {})
    scans = node.config.stash.get(_WORKER_SCANS, None)
    if scans is None or _SCAN_OUTPUT_KEY not in output:
        return
    scans[node.workerinput["workerid"]] = output[_SCAN_OUTPUT_KEY]
    merge(output.get("tether_security_counts", {}))


def pytest_unconfigure(config: pytest.Config) -> None:
    from fastapi import FastAPI

    from tether.api.hot import TetherAPI

    restore = config.stash.get(_RESTORE, None)
    if restore is None:
        return
    handler, levels, originals = restore
    logging.getLogger().removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    FastAPI.__call__, TetherAPI.__call__ = originals  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.security.canaries import SCAN, summary_line
    from tests.security.report import COUNTS, as_plain

    config = session.config
    if not config.stash.get(_OWN_SINK, False):
        return
    path = Path(os.environ[AUDIT_SINK_ENV])
    content = path.read_bytes() if path.exists() else b""
    events = content.count(b"\n")
    if content:
        SCAN.check("audit", "audit events (JSON Lines)", content, count=0)
    SCAN.check_metric_registries()
    totals = SCAN.totals(events)
    if _is_worker(config):  # the controller reports, fails the run and removes the directory
        config.workeroutput[_SCAN_OUTPUT_KEY] = totals  # type: ignore[attr-defined]
        config.workeroutput["tether_security_counts"] = as_plain(COUNTS)  # type: ignore[attr-defined]
        return
    scans = config.stash[_WORKER_SCANS]
    parts = [totals, *scans.values()]  # this process's own (nothing in a parallel run) and each worker's
    leaks = [leak for part in parts for leak in part["leaks"]]
    silent = sorted(config.stash[_WORKERS_STARTED] - set(scans))
    leaks += [f"worker {worker} did not report its scan (it crashed?)" for worker in silent]
    config.stash[_SCAN] = summary_line(parts, workers=len(scans))
    config.stash[_LEAKS] = leaks
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        shutil.rmtree(config.stash[_SINK_DIR], ignore_errors=True)


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
        leaks = config.stash.get(_LEAKS, [])
        terminalreporter.write_line(line, red=bool(leaks), green=not leaks)
        for leak in leaks[:20]:
            terminalreporter.write_line(f"  leak: {leak}", red=True)
        if len(leaks) > 20:
            terminalreporter.write_line(f"  … and {len(leaks) - 20} more", red=True)
