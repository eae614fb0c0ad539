"""Load: concurrent agents against a ``tether server`` process for a bounded time.

Each agent repeats the governed path: open a task, issue a reveal grant with a use budget,
activate it until the budget is spent (one more is refused), complete the task (one more use is
refused). Every answer must be the expected one: no 5xx, no transport error, no unexpected
status. The server's resident memory before and after is reported (a generous sanity bound
only), with throughput and latency; the audit chain verifies afterwards.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.integration.governed import SECRETS, seed
from tests.security.canaries import new_canary
from tests.security.nodes import (
    Registered,
    ServerProcess,
    drop_schema,
    node_client,
    node_env,
    pg_dsn_or_skip,
    register,
    tether_init,
)
from tests.security.report import record
from tether.sdk import AsyncAgent, TetherConnectionError

# Measures throughput and latency: never beside the crash suite's load (one xdist worker, in turn).
pytestmark = [pytest.mark.asyncio, pytest.mark.slow, pytest.mark.xdist_group("load")]

AGENTS = 8
LOAD_SECONDS = 6.0
MAX_USES = 3
RSS_SANITY_FACTOR = 2.0  # not a target: growth beyond this under a few seconds of load is a leak

SECRET = "prod/github/token"
TASK = {
    "purpose": "deploy",
    "objective": "steady work",
    "sensitivity": "internal",
    "secrets": [SECRET],
    "destinations": ["github"],
    "ttl_seconds": 300,
}
GRANT = {"secret": SECRET, "destination": "github", "mode": "reveal", "max_uses": MAX_USES}


@dataclass
class Tally:
    requests: int = 0
    refused: int = 0
    cycles: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


@dataclass
class Served:
    server: ServerProcess
    backend: str
    admin: dict[str, str]
    agents: list[Registered]
    value: str


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def served(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Served]:
    env = node_env()
    init_args: list[str] = []
    pg: tuple[str, str] | None = None
    if request.param == "postgresql":
        dsn = pg_dsn_or_skip()
        pg = (dsn, "t_load_" + secrets.token_hex(6))
        init_args = ["--database-url", dsn, "--pg-schema", pg[1]]
    try:
        token = tether_init(tmp_path / "data", env, *init_args)
        server = ServerProcess(tmp_path / "data", env, tmp_path / "server.log")
        server.start()
        try:
            admin = {"Authorization": f"Bearer {token}"}
            values = {path: new_canary(path) for path in SECRETS}
            async with node_client(server.port) as http:
                await seed(http, admin, values)
                agents = [await register(http, admin, f"load-bot-{i}") for i in range(AGENTS)]
            yield Served(server, request.param, admin, agents, values[SECRET])
            log = server.log()
            assert "Traceback" not in log, log[-4000:]
        finally:
            server.stop()
    finally:
        if pg is not None:
            await drop_schema(*pg)


async def _call(
    tally: Tally, agent: AsyncAgent, method: str, path: str, status: int, **kwargs: Any
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        response = await agent.request(method, path, **kwargs)
    except TetherConnectionError as exc:
        tally.transport_errors += 1
        tally.unexpected.append(f"{method} {path}: {type(exc).__name__}")
        raise
    tally.latencies.append(time.perf_counter() - started)
    tally.requests += 1
    if response.status_code >= 500:
        tally.server_errors += 1
    if response.status_code != status:
        tally.unexpected.append(f"{method} {path}: {response.status_code} {response.text[:200]}")
        raise AssertionError(tally.unexpected[-1])
    if status == 403:
        tally.refused += 1
    body: dict[str, Any] = response.json()
    return body


async def _cycle(tally: Tally, agent: AsyncAgent, value: str) -> None:
    """One task's whole life; every answer as expected."""
    task = await _call(tally, agent, "POST", "/v1/tasks", 201, json=TASK)
    grant = await _call(tally, agent, "POST", f"/v1/tasks/{task['id']}/grants", 201, json=GRANT)
    use = f"/v1/grants/{grant['id']}/activate"
    for _ in range(MAX_USES):
        assert (await _call(tally, agent, "POST", use, 200))["value"] == value
    await _call(tally, agent, "POST", use, 403)  # the budget is spent
    await _call(tally, agent, "POST", f"/v1/tasks/{task['id']}/complete", 200)
    await _call(tally, agent, "POST", use, 403)  # the task is over
    tally.cycles += 1


async def _agent_loop(tally: Tally, agent: AsyncAgent, value: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        await _cycle(tally, agent, value)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


async def test_concurrent_agents_for_a_bounded_time_see_no_errors(served: Served) -> None:
    clients = [node_client(served.server.port, timeout_seconds=30.0) for _ in served.agents]
    try:
        agents = [bot.on(http) for bot, http in zip(served.agents, clients, strict=True)]
        warmup = Tally()
        await asyncio.gather(*(_cycle(warmup, agent, served.value) for agent in agents))
        rss_before = served.server.rss_kib()

        tally = Tally()
        started = time.monotonic()
        deadline = started + LOAD_SECONDS
        await asyncio.gather(*(_agent_loop(tally, agent, served.value, deadline) for agent in agents))
        elapsed = time.monotonic() - started
        rss_after = served.server.rss_kib()

        async with node_client(served.server.port) as http:
            verified = await http.get("/v1/audit/verify", headers=served.admin)
        assert verified.status_code == 200, verified.text
        assert verified.json()["ok"] is True, verified.json()
    finally:
        for http in clients:
            await http.aclose()

    latencies = sorted(tally.latencies)
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    record(
        f"load ({served.backend})",
        tried=tally.requests + warmup.requests,
        refused=tally.refused + warmup.refused,
        server_errors=tally.server_errors + warmup.server_errors,
        note=(
            f"{AGENTS} agents, {elapsed:.1f} s, {tally.cycles} task cycles, "
            f"{tally.requests / elapsed:.0f} req/s, p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
            f"RSS {_mib(rss_before)}→{_mib(rss_after)} MiB, "
            f"{verified.json()['checked']} audit events verified"
        ),
    )
    assert tally.unexpected == []
    assert tally.server_errors == 0
    assert tally.cycles >= AGENTS  # every agent got through at least one whole task
    assert rss_after < rss_before * RSS_SANITY_FACTOR, (rss_before, rss_after)
