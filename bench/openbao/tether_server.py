"""Tether for the benchmark: ``tether init`` a data dir, run ``tether server`` on it, seed it over HTTP.

The server is the shipped command (uvicorn, one process) on its SQLite store (WAL) with the
hash-chained audit log on, on 127.0.0.1 with ``public_url`` set (DPoP ``htu`` checks), stopped by
its PID. Seeding uses the operator token that ``init`` prints: the example policy set, a secret
that policy lets a ``deploy`` task reveal, and agents with Ed25519 keys the load generator holds.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.openbao.procs import free_port, stop, wait_for_port
from tether.crypto.jose import generate_private_jwk

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "examples" / "policies" / "tether.cedar"
SECRET = "prod/github/token"
DESTINATION = "github"
# Internal sensitivity, purpose deploy, destination github: the example policy
# "reveal-low-sensitivity" allows a deploy task that declared it to reveal it.
SECRET_META = {"sensitivity": "internal", "purposes": ["deploy"], "destinations": [DESTINATION]}
TASK_BODY: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "benchmark: ship release",
    "sensitivity": "internal",
    "secrets": [SECRET],
    "destinations": [DESTINATION],
    "ttl_seconds": 3600,
}
GRANT_BODY: dict[str, Any] = {"secret": SECRET, "destination": DESTINATION, "mode": "reveal"}


def server_has_workers_flag() -> bool:
    """Whether ``tether server`` takes ``--workers`` (asked once per process, from its --help)."""
    global _WORKERS_FLAG  # noqa: PLW0603 - a per-process memo of one CLI probe
    if _WORKERS_FLAG is None:
        done = subprocess.run(
            [str(tether_executable()), "server", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        )
        _WORKERS_FLAG = "--workers" in done.stdout
    return _WORKERS_FLAG


_WORKERS_FLAG: bool | None = None


def tether_executable() -> Path:
    """The ``tether`` console script next to this interpreter (its PID is the server's)."""
    script = Path(sys.executable).parent / "tether"
    if not script.exists():
        raise RuntimeError(f"{script} is missing: install Tether into this environment (make bench does)")
    return script


class Tether:
    """One Tether node for one run: ``with Tether() as node: ...`` stops it on exit, also on error."""

    def __init__(
        self,
        sqlite_synchronous: str = "normal",
        *,
        workers: int | None = None,
        database_url: str | None = None,
        pg_schema: str | None = None,
        node_id: str = "node-1",
        join: Tether | None = None,
    ) -> None:
        """``workers``: passed as ``--workers`` when the CLI has it (None: the server's default).
        ``database_url``/``pg_schema``: PostgreSQL instead of the data dir's SQLite file.
        ``join``: another node of the same deployment (same store, same root key): this node
        copies its data dir instead of running ``tether init``."""
        self.sqlite_synchronous = sqlite_synchronous
        self.workers = workers
        self.database_url = database_url
        self.pg_schema = pg_schema
        self.node_id = node_id
        self.join = join
        self.executable = tether_executable()
        self.workdir = Path(tempfile.mkdtemp(prefix="tether-bench-node-"))
        self.data_dir = self.workdir / "data"
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.root_token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.agents: list[dict[str, Any]] = []
        self.workers_flag = False

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tether.db"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        env["TETHER_PUBLIC_URL"] = self.addr
        env["TETHER_SQLITE_SYNCHRONOUS"] = self.sqlite_synchronous
        env["TETHER_NODE_ID"] = self.node_id
        return env

    def _init(self) -> None:
        if self.join is not None:
            shutil.copytree(self.join.data_dir, self.data_dir)
            self.root_token = self.join.root_token
            return
        command = [
            str(self.executable),
            "init",
            "--data-dir",
            str(self.data_dir),
            "--json",
            "--trust-domain",
            "bench.test",
        ]
        if self.database_url:
            command += ["--database-url", self.database_url]
        if self.pg_schema:
            command += ["--pg-schema", self.pg_schema]
        done = subprocess.run(
            command, env=self._env(), capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"tether init failed: {done.stderr.strip()}")
        self.root_token = json.loads(done.stdout)["root_token"]

    def start(self) -> Tether:
        self._init()
        command = [
            str(self.executable),
            "server",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        self.workers_flag = server_has_workers_flag()
        if self.workers is not None and self.workers_flag:
            command += ["--workers", str(self.workers)]
        log = (self.workdir / "server.log").open("wb")
        self.proc = subprocess.Popen(command, env=self._env(), stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, timeout_seconds=60)
        return self

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log (for error reports)."""
        path = self.workdir / "server.log"
        return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.exists() else ""

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.root_token}"}

    def seed(
        self, secret_value: str, agents: int, destination_url: str = "http://127.0.0.1:9/github"
    ) -> None:
        """Policies, the secret, the destination (at ``destination_url``), and ``agents`` agents
        (plus one delegate for sub-tasks)."""
        with httpx.Client(base_url=self.addr, headers=self.headers(), timeout=30) as http:
            checked(http.put("/v1/policies", json={"policies": POLICIES.read_text(encoding="utf-8")}))
            checked(http.put(f"/v1/secrets/{SECRET}", json={"value": secret_value, **SECRET_META}))
            checked(
                http.post(
                    "/v1/destinations",
                    json={
                        "name": DESTINATION,
                        "base_url": destination_url,
                        "secret": SECRET,
                        "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
                        "methods": ["GET", "POST"],
                    },
                )
            )
            for i in range(agents + 1):
                private = generate_private_jwk()
                public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
                attributes = {
                    "team": "platform",
                    "environment": "prod",
                    "owner": "bench",
                    "labels": ["deploy"],
                }
                name = f"bench-{i}" if i < agents else "bench-delegate"
                body = checked(
                    http.post(
                        "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}
                    )
                )
                self.agents.append({"id": body["id"], "key": private})

    def audit_totals(self) -> tuple[int, int]:
        """(events, stored bytes: canonical JSON body + 32-byte hash) of the audit chain so far."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as db:
            count, body_bytes = db.execute(
                "SELECT count(*), coalesce(sum(length(body)), 0) FROM audit_events"
            ).fetchone()
        return int(count), int(body_bytes) + 32 * int(count)

    def counts(self) -> dict[str, int]:
        """Tasks and grants in the store, by status (for the RSS figure)."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30) as db:
            tasks = dict(db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
            grants = db.execute("SELECT count(*) FROM grants").fetchone()[0]
        return {
            "tasks_active": int(tasks.get("active", 0)),
            "tasks": sum(tasks.values()),
            "grants": int(grants),
        }

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Tether:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code not in (200, 201):
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: {response.status_code} {response.text}"
        )
    body: dict[str, Any] = response.json()
    return body
