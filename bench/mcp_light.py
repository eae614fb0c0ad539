"""The MCP gateway under the light load generator (issue 15): wrk, pre-built requests, the shipped
``tether server`` and the upstream in their own processes.

Run by ``python -m bench.mcp_bench`` (its "light" rows; ``--no-light`` skips them). Python clients
cost as much CPU per call as the upstream does, on the same two cores, so they measure the client
as much as Tether; wrk sends pre-built bytes (:mod:`bench.light`), so what is left is the servers.

- **direct**: the JSON-RPC ``tools/call`` with the upstream's token, cycled (the same bytes again);
- **gateway**: the same call to Tether's ``/mcp``, each request with its own DPoP proof, signed
  before the run by the SDK's signer and sent once, as in issue 13's activation runs.

Four shapes: one connection (each call alone, back to back: the added latency of one call); one
*paced* connection, one agent that pauses a random 20-60 ms between an answer and its next call
(each call alone, after a pause: what a call costs when the machine's caches have gone cold, about
25 calls/s); 16 in a closed loop (each connection sends its next call when the answer arrives: as
many calls as the machine can serve, so on two cores shared by wrk, the upstream and Tether a call
mostly waits for the other 15); and 16 paced connections, 16 such agents (about 380 calls/s in all:
many calls overlap, the machine is not saturated). The two paced shapes apart say how much of the
16 agents' added latency comes from calls running cold and how much from calls overlapping.

In the *1*, *16* and *16 paced* shapes the floors of :mod:`bench.mcp_floors` (a byte relay, the SDK
out of the box, the SDK as Tether runs it: proxies without governance, served as Tether serves) are
measured after each gateway run, with the same call and the same checks. With 16 in a closed loop,
they say what the 2 cores allow any proxy in front of this upstream, before any governance.

wrk counts only non-2xx answers as errors, and a refused tool call is a 200 with a JSON-RPC error,
so every run is checked against the upstream's own count of the tool calls it answered
(``GET /count``): gateway answers that never reached the upstream would show there. Tether's CPU
per call is its server process with its workers (``/proc``), the upstream's likewise for the
direct runs, and for the gateway runs too: the same call costs the upstream more CPU when it comes
through Tether, most likely because Tether's work on the same two cores leaves the upstream's caches
cold between calls (part of the added latency is then the upstream's, and should not be where the
two run on separate machines).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.light.generator import Load, raw_request, run_load, write_pool, wrk_path
from bench.openbao.procs import tree_cpu_seconds

__all__ = ["FLOOR_SHAPES", "SHAPES", "Shape", "available", "run"]


@dataclass(frozen=True)
class Shape:
    """How a run drives the servers: connections, and each one's pause between calls."""

    key: str  # in the results: direct_<key>, gateway_<key>, added_<key> (floor_<kind>_<key>)
    connections: int
    think_ms: float  # mean pause after an answer (0: a closed loop)
    #: Calls per second a gateway pool is sized for (each proof is sent once); this machine serves
    #: about 500 a second on one connection and 900 on 16.
    max_rate: int

    @property
    def label(self) -> str:
        if self.think_ms:
            return f"{self.connections} paced ({self.think_ms / 2:g}-{self.think_ms * 1.5:g} ms apart)"
        return f"{self.connections}"


THINK_MS = 40.0
SHAPES = (
    Shape("1", 1, 0, 1500),
    Shape("1_paced", 1, THINK_MS, 100),
    Shape("16", 16, 0, 3000),
    Shape("16_paced", 16, THINK_MS, 800),
)
#: The shapes the floors (:mod:`bench.mcp_floors`) run in: one call alone, 16 in a closed loop (the
#: issue's 16 concurrent), and 16 paced agents.
FLOOR_SHAPES = ("1", "16", "16_paced")


def available() -> bool:
    return wrk_path() is not None


def _upstream_count(url: str) -> int:
    return int(httpx.get(url.rsplit("/", 1)[0] + "/count", timeout=10).text)


def _measure(
    name: str, load: Load, pids: list[int], seconds: float, upstream: str, upstream_pid: int | None = None
) -> dict[str, Any]:
    """One run of ``load``; ``upstream_pid`` (gateway runs): the upstream's own CPU is measured
    too, over the whole run (wrk's start and exit included: a few ms, spread over the calls)."""
    before = _upstream_count(upstream)
    upstream_cpu = tree_cpu_seconds(upstream_pid) if upstream_pid is not None else 0.0
    figures = run_load([load], pids, seconds)
    if upstream_pid is not None:
        upstream_cpu = tree_cpu_seconds(upstream_pid) - upstream_cpu
    time.sleep(0.2)  # calls wrk gave up waiting for at its end still reach the upstream
    reached = _upstream_count(upstream) - before
    ok = figures["ok"]
    # Answers the upstream never saw (refused by Tether with a 200) would make reached < ok; calls
    # still in flight when wrk stopped make it larger, by at most one per connection.
    if not ok <= reached <= ok + load.connections or figures["status_errors"] or figures["socket_errors"]:
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
    extra: dict[str, float] = {}
    if upstream_pid is not None and ok:
        extra["upstream_cpu_us_per_call"] = round(upstream_cpu / ok * 1e6, 1)
    return {
        **extra,
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
    if all("upstream_cpu_us_per_call" in r for r in runs):  # gateway runs
        keys += ("upstream_cpu_us_per_call",)
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 1) for k in keys}
    out["calls"] = sum(r["calls"] for r in runs)
    out["reps"] = len(runs)
    return out


async def run(
    node: Any,
    upstream_pid: int,
    upstream: str,
    agent: Any,
    task_id: str,
    *,
    seconds: float,
    reps: int,
    floors: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, Any]:
    """Direct and gateway, both wires, every shape; ``reps`` runs each, alternating direct and
    gateway so that a change in the host's load touches both. ``floors`` (kind: PID, URL; see
    :mod:`bench.mcp_floors`) run after each gateway run in the :data:`FLOOR_SHAPES`, as
    ``floor_<kind><wire>_<shape>``."""
    from bench import mcp_bench as mb  # the calls' bytes; imported here: mcp_bench imports this module

    up_host = urlsplit(upstream).netloc
    gw_host = urlsplit(node.addr).netloc
    results: dict[str, Any] = {"generator": "wrk", "seconds": seconds, "reps": reps, "think_ms": THINK_MS}
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
            floor_headers = {**mb.HEADERS, **mb._wire("search", modern)}
            for shape in SHAPES:
                runs: dict[str, list[dict[str, Any]]] = {"direct": [], "gateway": []}
                shape_floors = (floors or {}) if shape.key in FLOOR_SHAPES else {}
                for _ in range(reps):
                    direct = [
                        raw_request("POST", up_host, "/mcp", direct_headers, mb._call(i, "search", modern))
                        for i in range(1, 65)
                    ]
                    write_pool(prefix, direct, 1)
                    runs["direct"].append(
                        await asyncio.to_thread(
                            _measure,
                            f"direct{suffix}, {shape.label}",
                            Load(f"http://{up_host}", prefix, shape.connections, False, shape.think_ms),
                            [upstream_pid],
                            seconds,
                            upstream,
                        )
                    )
                    token = await agent.token()
                    count = int(shape.max_rate * seconds) + 4 * shape.connections
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
                            f"gateway{suffix}, {shape.label}",
                            Load(node.addr, prefix, shape.connections, True, shape.think_ms),
                            [node.pid],
                            seconds,
                            upstream,
                            upstream_pid,
                        )
                    )
                    # After both: direct and gateway stay adjacent, as the target's figure needs.
                    for kind, (pid, floor_url) in shape_floors.items():
                        floor_host = urlsplit(floor_url).netloc
                        floor_base = f"http://{floor_host}"
                        calls = [
                            raw_request("POST", floor_host, "/mcp", floor_headers, body)
                            for body in (mb._call(i, "search", modern) for i in range(1, 65))
                        ]
                        write_pool(prefix, calls, 1)
                        runs.setdefault(kind, []).append(
                            await asyncio.to_thread(
                                _measure,
                                f"{kind}{suffix}, {shape.label}",
                                Load(floor_base, prefix, shape.connections, False, shape.think_ms),
                                [pid],
                                seconds,
                                upstream,
                                upstream_pid,
                            )
                        )
                for kind in floors or {}:
                    if kind in runs:
                        results[f"floor_{kind}{suffix}_{shape.key}"] = _median(runs[kind])
                d, g = _median(runs["direct"]), _median(runs["gateway"])
                results[f"direct{suffix}_{shape.key}"] = d
                results[f"gateway{suffix}_{shape.key}"] = g
                results[f"added{suffix}_{shape.key}"] = {
                    "p50_us": round(g["p50_us"] - d["p50_us"], 1),
                    "p99_us": round(g["p99_us"] - d["p99_us"], 1),
                }
    return results
