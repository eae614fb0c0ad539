"""Real ``tether server`` processes for the reliability suites (crash safety, several nodes, load).

A node is ``tether init`` then ``tether server`` in a subprocess on loopback. Every node is given
the same ``public_url`` (:data:`PUBLIC_URL`, the governed-path helpers' base URL), so a DPoP proof
signed for one node is valid in form on every node; clients reach a node's port through
:class:`ToNode`, a transport that only rewrites where a request goes, never what it says.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.governed import BASE
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent

__all__ = [
    "PUBLIC_URL",
    "Registered",
    "ServerProcess",
    "ToNode",
    "drop_schema",
    "free_port",
    "new_root_key",
    "node_client",
    "node_env",
    "pg_dsn_or_skip",
    "register",
    "tether_init",
]

_SCRIPT = Path(sys.executable).with_name("tether")
TETHER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tether.cli.main"]
PUBLIC_URL = BASE
START_TIMEOUT_SECONDS = 60.0  # a loaded machine (parallel tests) starts an interpreter slowly
PG_DSN_ENV = "TETHER_TEST_PG_DSN"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pg_dsn_or_skip() -> str:
    dsn = os.environ.get(PG_DSN_ENV)
    if not dsn:
        pytest.skip(f"{PG_DSN_ENV} is not set; PostgreSQL tests skipped")
    return dsn


def new_root_key() -> str:
    """A root key for the ``env`` key provider (base64 of 32 random bytes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def node_env(**extra: str) -> dict[str, str]:
    """The environment of a node: no inherited ``TETHER_*`` settings except the suite-wide audit
    copy (scanned for canaries at the end of the run), every node on :data:`PUBLIC_URL`, one
    process per node (a SIGKILL kills the node, its RSS is the node's; several workers on one
    socket have their own tests) unless ``extra`` says otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_") or k == "TETHER_AUDIT_JSONL"}
    env["TETHER_PUBLIC_URL"] = PUBLIC_URL
    env["TETHER_DEBUG"] = "1"
    env["TETHER_WORKERS"] = "1"
    env.update(extra)
    return env


def tether_init(data_dir: Path, env: dict[str, str], *args: str) -> str:
    """``tether init --json``; returns the first admin token."""
    result = subprocess.run(
        [*TETHER, "init", "--data-dir", str(data_dir), *args, "--json"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    token: str = json.loads(result.stdout)["root_token"]
    return token


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@dataclass
class ServerProcess:
    """One ``tether server`` process; :meth:`start` again after :meth:`kill` restarts it on the
    same data dir and port. The log accumulates across starts."""

    data_dir: Path
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start (or restart) the node and wait until it is healthy. On the first start, a port
        another test process took between probing and listening (tests run in parallel) is
        retried on another port; a restart keeps its port."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        first = self.proc is None
        for attempt in range(1, 4):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        *TETHER,
                        "server",
                        "--data-dir",
                        str(self.data_dir),
                        "--listen",
                        f"127.0.0.1:{self.port}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                )
            if not (first and attempt < 3 and self._exited_on_a_taken_port(offset)):
                break
            self.port = free_port()
        self._wait_healthy()

    def _exited_on_a_taken_port(self, log_offset: int) -> bool:
        """Wait until the new process is healthy or exits; True if it exited because its port
        was in use."""
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0).status_code == 200:
                    return False
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        if self.proc.poll() is None:
            return False
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            return b"already in use" in log.read()

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"tether server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.addr}/v1/sys/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        pytest.fail(f"tether server did not become healthy in {START_TIMEOUT_SECONDS} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, nothing is flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Ctrl-C, as an operator would; killed if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def rss_kib(self) -> int:
        """Resident set size of the server process (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc status")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class ToNode(httpx.AsyncBaseTransport):
    """Sends each request to one node's loopback port, leaving URL path, headers and body (and so
    the DPoP ``htu`` the client signed for :data:`PUBLIC_URL`) as they are."""

    def __init__(self, port: int, *, max_connections: int = 100) -> None:
        self._port = port
        self._inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def node_client(port: int, *, timeout_seconds: float = 30.0, max_connections: int = 100) -> httpx.AsyncClient:
    """A client for :data:`PUBLIC_URL` that reaches the node listening on ``port``."""
    return httpx.AsyncClient(
        base_url=PUBLIC_URL, transport=ToNode(port, max_connections=max_connections), timeout=timeout_seconds
    )


@dataclass(frozen=True)
class Registered:
    """An agent registered over HTTP, with its private key, so it can talk to any node."""

    agent_id: str
    private_jwk: dict[str, Any] = field(repr=False)

    def on(self, http: httpx.AsyncClient) -> AsyncAgent:
        """The agent's SDK client through ``http`` (its own access token and proofs)."""
        return AsyncAgent(PUBLIC_URL, self.agent_id, self.private_jwk, http=http)


async def register(
    http: httpx.AsyncClient, admin: dict[str, str], name: str, *, labels: tuple[str, ...] = ("deploy",)
) -> Registered:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": list(labels)}
    response = await http.post(
        "/v1/agents", json={"name": name, "public_key": public, "attributes": attributes}, headers=admin
    )
    assert response.status_code == 201, response.text
    return Registered(response.json()["id"], private)
