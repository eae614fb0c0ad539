"""The MCP gateway under the light load generator (issue 15): wrk, pre-built requests, the shipped
``tether server`` and the upstream in their own processes.

Run by ``python -m bench.mcp_bench`` (its "light" rows; ``--no-light`` skips them). Python clients
cost as much CPU per call as the upstream does, on the same two cores, so they measure the client
as much as Tether; wrk sends pre-built bytes (:mod:`bench.light`), so what is left is the servers.

- **direct**: the JSON-RPC ``tools/call`` with the upstream's token, cycled (the same bytes again);
- **gateway**: the same call to Tether's ``/mcp``, each request with its own DPoP proof, signed
  before the run by the SDK's signer and sent once, as in issue 13's activation runs.

One connection (each call alone: the added latency of one call) and 16 (a closed loop: each
connection sends its next call when the answer arrives). wrk counts only non-2xx answers as errors,
and a refused tool call is a 200 with a JSON-RPC error, so every run is checked against the
upstream's own count of the tool calls it answered (``GET /count``): gateway answers that never
reached the upstream would show there. Tether's CPU per call is its server process with its workers
(``/proc``), the upstream's likewise for the direct runs.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.light.generator import Load, raw_request, run_load, write_pool, wrk_path

__all__ = ["CONNECTIONS", "available", "run"]

CONNECTIONS = (1, 16)
#: Requests per second a pool is sized for (a gateway run on this machine does about 500 / 900).
MAX_RATE = {1: 1500, 16: 3000}


def available() -> bool:
    return wrk_path() is not None


def _upstream_count(url: str) -> int:
    return int(httpx.get(url.rsplit("/", 1)[0] + "/count", timeout=10).text)


def _measure(
    name: str, load: Load, pids: list[int], seconds: float, upstream: str, connections: int
) -> dict[str, Any]:
    before = _upstream_count(upstream)
    figures = run_load([load], pids, seconds)
    time.sleep(0.2)  # calls wrk gave up waiting for at its end still reach the upstream
    reached = _upstream_count(upstream) - before
    ok = figures["ok"]
    # Answers the upstream never saw (refused by Tether with a 200) would make reached < ok; calls
    # still in flight when wrk stopped make it larger, by at most one per connection.
    if not ok <= reached <= ok + connections or figures["status_errors"] or figures["socket_errors"]:
        raise RuntimeError(
            f"{name}: {ok} answers, {reached} upstream calls, {figures['status_errors']} HTTP errors, "
            f"{figures['socket_errors']} socket errors"
        )
    latency = figures["latency_us"]
    print(
        f"  light {name:34} {figures['ops_per_second']:8,.1f} calls/s  p50 {latency['p50'] / 1000:6.2f} ms"
        f"  p99 {latency['p99'] / 1000:6.2f} ms  server CPU {figures['server_cpu_us_per_op']} µs/call",
        flush=True,
    )
    return {
        "calls_per_s": figures["ops_per_second"],
        "p50_us": latency["p50"],
        "p99_us": latency["p99"],
        "server_cpu_us_per_call": figures["server_cpu_us_per_op"],
        "generator_cpu_us_per_call": figures["generator_cpu_us_per_request"],
        "calls": ok,
        "seconds": figures["seconds"],
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("calls_per_s", "p50_us", "p99_us", "server_cpu_us_per_call", "generator_cpu_us_per_call")
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 1) for k in keys}
    out["calls"] = sum(r["calls"] for r in runs)
    out["reps"] = len(runs)
    return out


async def run(
    node: Any, upstream_pid: int, upstream: str, agent: Any, task_id: str, *, seconds: float, reps: int
) -> dict[str, Any]:
    """Direct and gateway, both wires, 1 and 16 connections; ``reps`` runs each, alternating
    direct and gateway so that a change in the host's load touches both."""
    from bench import mcp_bench as mb  # the calls' bytes; imported here: mcp_bench imports this module

    up_host = urlsplit(upstream).netloc
    gw_host = urlsplit(node.addr).netloc
    results: dict[str, Any] = {"generator": "wrk", "seconds": seconds, "reps": reps}
    with tempfile.TemporaryDirectory(prefix="tether-mcp-light-") as tmp:
        prefix = Path(tmp) / "pool"
        for modern in (False, True):
            suffix = f"_{mb.MODERN}" if modern else ""
            direct_headers = {
                **mb.HEADERS,
                "Authorization": f"Bearer {mb.SECRET}",
                **mb._wire("search", modern),
            }
            gateway_headers = {**mb.HEADERS, **mb._wire("bench__search", modern), "Tether-Task": task_id}
            for connections in CONNECTIONS:
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                for _ in range(reps):
                    direct = [
                        raw_request("POST", up_host, "/mcp", direct_headers, mb._call(i, "search", modern))
                        for i in range(1, 65)
                    ]
                    write_pool(prefix, direct, 1)
                    runs["direct"].append(
                        await asyncio.to_thread(
                            _measure,
                            f"direct{suffix}, {connections} conn.",
                            Load(f"http://{up_host}", prefix, connections, once=False),
                            [upstream_pid],
                            seconds,
                            upstream,
                            connections,
                        )
                    )
                    token = await agent.token()
                    count = int(MAX_RATE[connections] * seconds) + 4 * connections
                    url = node.addr + "/mcp"
                    gateway = [
                        raw_request(
                            "POST",
                            gw_host,
                            "/mcp",
                            {**gateway_headers, **agent._session.signed_headers("POST", url, token)},
                            mb._call(i, "bench__search", modern),
                        )
                        for i in range(1, count + 1)
                    ]
                    write_pool(prefix, gateway, 1)
                    runs["gateway"].append(
                        await asyncio.to_thread(
                            _measure,
                            f"gateway{suffix}, {connections} conn.",
                            Load(node.addr, prefix, connections, once=True),
                            [node.pid],
                            seconds,
                            upstream,
                            connections,
                        )
                    )
                d, g = _median(runs["direct"]), _median(runs["gateway"])
                results[f"direct{suffix}_{connections}"] = d
                results[f"gateway{suffix}_{connections}"] = g
                results[f"added{suffix}_{connections}"] = {
                    "p50_us": round(g["p50_us"] - d["p50_us"], 1),
                    "p99_us": round(g["p99_us"] - d["p99_us"], 1),
                }
    return results
