"""MCP gateway benchmark: what a tool call through Tether's ``/mcp`` adds over calling the upstream
MCP server directly (issue 15).

Run: ``python -m bench.mcp_bench [--requests N] [--callgrind CALLS]``. Prints a table, writes
bench/results/mcp.json and the "MCP gateway" section of bench/results/latest.md (between its markers;
``make bench`` rewrites the rest of that file). ``--callgrind`` also counts instructions per call under
valgrind (deterministic, where the clock on a shared machine is not).

Two setups, real sockets on 127.0.0.1, an upstream MCP server written with the SDK's low-level
``Server`` (stateless streamable HTTP, a ``search`` tool, the token checked on every request) and
Tether on SQLite (WAL) with that upstream registered (``Authorization: Bearer <secret>`` injected):

- **one process**: the upstream and Tether (a node on a temporary file, served by uvicorn) share the
  client's event loop. Sequential figures are one call's own cost; with 16 callers a call also waits
  for the other 15 in the loop.
- **served** (SQLite normal): Tether is the shipped ``tether server`` in its own process, the upstream
  its own uvicorn process: as deployed, on the same two cores as the client. Twice: with Tether's
  default workers (one per core), then with ``--workers N`` (``--also-workers``, default 1: Tether
  sized to the core the upstream and the client leave it; 0 or the default count: not run).
- **light** (the served setup again): driven by wrk with pre-built, pre-signed requests instead of a
  Python client: 1 connection, 1 paced, 16 in a closed loop, 16 paced (:mod:`bench.mcp_light`;
  ``--light-seconds 0`` or no wrk: none), and in the 1, 16 and 16 paced shapes the floors of
  :mod:`bench.mcp_floors` (proxies without governance: a byte relay, the SDK out of the box, the SDK
  as Tether runs it), which say roughly what the added latency is made of.

The same ``httpx.AsyncClient`` sends the same JSON-RPC ``tools/call``:

- direct: to the upstream, with the token (what an agent holding the token would do);
- gateway: to ``POST /mcp`` with a DPoP proof signed per request and ``Tether-Task``; Tether
  authenticates the proof, reads the task and the upstream, decides ``call_tool`` with Cedar, checks
  the arguments (exfiltration, pinned schema), records ``tool.call`` with the proof's use (one durable
  write), forwards over its open upstream session (the SDK's ``Client`` on Tether's streamable HTTP
  transport) and redacts the answer.

Both wire forms are measured: the handshake era's bare JSON-RPC body (no ``MCP-Protocol-Version``:
what raw HTTP clients and 2025 SDKs send) and the 2026-07-28 per-request envelope
(``MCP-Protocol-Version``, ``Mcp-Method``, ``Mcp-Name`` headers and ``_meta``: what the SDK's own
``Client`` sends); Tether answers either in one exchange through the SDK's kernel. Direct and gateway
calls of one row use the same wire form. Latency p50/p99 sequential and with 16 concurrent callers,
and calls per second. A benchmark measures
and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import uvicorn
from mcp.server.lowlevel.server import Server

from bench import mcp_floors, mcp_light
from bench.egress_bench import percentile, serve, timed
from bench.light.generator import WRK_MISSING
from bench.openbao.procs import free_port, stop, wait_for_port
from bench.openbao.tether_server import Tether
from tether.api import create_app
from tether.api.routes_mcp import close_mcp
from tether.broker import Broker
from tether.config import MAX_WORKERS, Settings, default_workers
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent

__all__ = ["main", "percentile", "run"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "mcp.json"
LATEST = Path(__file__).parent / "results" / "latest.md"
BEGIN, END = "<!-- mcp-bench:begin -->", "<!-- mcp-bench:end -->"
CONCURRENCY = 16
SECRET = "bench-mcp-" + "t" * 30
POLICY = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("tools") permit(principal, action == Action::"call_tool", resource) when { resource.server == "bench" };
"""
SCHEMA = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def upstream_app() -> Any:
    """The SDK upstream; ``GET /count`` (no token: a benchmark's own probe) says how many tool calls
    it has answered, so that a light run can check that every answer it counted came from here."""
    answered = 0

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[types.Tool(name="search", description="Search.", input_schema=SCHEMA)]
        )

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        nonlocal answered
        answered += 1
        query = (params.arguments or {}).get("query")
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"results for {query}")])

    server: Server[Any] = Server("bench-upstream", on_list_tools=list_tools, on_call_tool=call_tool)
    inner = server.streamable_http_app(stateless_http=True, json_response=True)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/count" and scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(answered).encode()})
            return
        if (
            scope["type"] == "http"
            and dict(scope["headers"]).get(b"authorization") != f"Bearer {SECRET}".encode()
        ):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    return app


async def serve_with_lifespan(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.005)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


async def setup(
    http: httpx.AsyncClient, url: str, admin: dict[str, str], upstream: str
) -> tuple[AsyncAgent, str]:
    async def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    await ok(await http.put(url + "/v1/policies", json={"policies": POLICY}, headers=admin))
    await ok(
        await http.put(
            url + "/v1/secrets/bench/mcp", json={"value": SECRET, "sensitivity": "internal"}, headers=admin
        )
    )
    server = {
        "name": "bench",
        "url": upstream,
        "secret": "bench/mcp",
        "inject": {"name": "Authorization", "template": "Bearer {secret}"},
    }
    await ok(await http.post(url + "/v1/mcp-servers", json=server, headers=admin))
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": "bench", "environment": "test", "owner": "bench", "labels": ["deploy"]}
    registered = await ok(
        await http.post(
            url + "/v1/agents",
            json={"name": "mcp-bot", "public_key": public, "attributes": attributes},
            headers=admin,
        )
    )
    agent = AsyncAgent(url, registered["id"], private, http=http)
    task = await ok(
        await agent.request(
            "POST",
            "/v1/tasks",
            json={"purpose": "deploy", "objective": "bench", "tools": ["bench/search"], "ttl_seconds": 3600},
        )
    )
    return agent, task["id"]


Call = Callable[[], Awaitable[bool]]
MODERN = "2026-07-28"
#: The two wire forms: the key suffix of their figures, and their name in the report.
WIRES = (("", "bare JSON-RPC"), (f"_{MODERN}", MODERN))
CPUS = os.cpu_count() or 1
#: The per-request envelope of the 2026-07-28 wire, as the SDK's ``Client`` sends it.
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _call(request_id: int, name: str, modern: bool = False) -> bytes:
    params: dict[str, Any] = {"name": name, "arguments": {"query": "flaky test"}}
    if modern:
        params["_meta"] = ENVELOPE
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    return json.dumps(body).encode()


def _wire(name: str, modern: bool) -> dict[str, str]:
    return {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": name} if modern else {}


_OK = re.compile(rb"results for flaky test")


def _paths(
    http: httpx.AsyncClient, url: str, upstream: str, agent: AsyncAgent, task_id: str
) -> dict[str, Call]:
    """The four calls: direct and through the gateway, on each wire."""
    counter = iter(range(1, 10**9))
    direct_headers = {**HEADERS, "Authorization": f"Bearer {SECRET}"}

    def direct(modern: bool) -> Call:
        headers = {**direct_headers, **_wire("search", modern)}

        async def call() -> bool:
            body = _call(next(counter), "search", modern)
            response = await http.post(upstream, content=body, headers=headers)
            return response.status_code == 200 and bool(_OK.search(response.content))

        return call

    def gateway(modern: bool) -> Call:
        headers = {**HEADERS, **_wire("bench__search", modern), "Tether-Task": task_id}

        async def call() -> bool:
            token = await agent.token()
            signed = agent._session.signed_headers("POST", url + "/mcp", token)
            response = await http.post(
                url + "/mcp",
                content=_call(next(counter), "bench__search", modern),
                headers={**headers, **signed},
            )
            return response.status_code == 200 and bool(_OK.search(response.content))

        return call

    return {
        "direct": direct(False),
        "gateway": gateway(False),
        f"direct_{MODERN}": direct(True),
        f"gateway_{MODERN}": gateway(True),
    }


LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)


#: A light run of a served setup (bench/mcp_light.py): seconds and reps in, its figures out.
Light = Callable[[float, int], Awaitable[dict[str, Any]]]


@asynccontextmanager
async def started(
    sqlite_synchronous: str = "normal",
) -> AsyncIterator[tuple[dict[str, Call], Light | None]]:
    """The upstream and Tether in this process, set up; the four calls (and no light run)."""
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.from_settings(Settings(data_dir=Path(tmp), sqlite_synchronous=sqlite_synchronous))
        init = await broker.init()
        app = create_app(broker)
        up_server, up_task, up_port = await serve_with_lifespan(upstream_app())
        server, task, port = await serve(app)
        url = f"http://127.0.0.1:{port}"
        upstream = f"http://127.0.0.1:{up_port}/mcp"
        try:
            async with httpx.AsyncClient(timeout=30, limits=LIMITS) as http:
                admin = {"Authorization": f"Bearer {init.root_token}"}
                agent, task_id = await setup(http, url, admin, upstream)
                yield _paths(http, url, upstream, agent, task_id), None
        finally:
            server.should_exit = True
            up_server.should_exit = True
            await asyncio.gather(task, up_task)
            await close_mcp(app)
            await broker.close()


def _start_served(
    sqlite_synchronous: str, workers: int | None
) -> tuple[subprocess.Popen[bytes], Tether, int]:
    """The upstream's process and a started ``tether server`` (``workers``: its ``--workers``,
    None for its default, one per core); both stopped if either fails."""
    port = free_port()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.mcp_bench", "--upstream", str(port)], cwd=ROOT)
    node = Tether(sqlite_synchronous, workers=workers)
    try:
        wait_for_port(port, upstream, timeout_seconds=60)
        node.start()
    except BaseException:
        node.close()
        stop(upstream)
        raise
    return upstream, node, port


@asynccontextmanager
async def served(
    sqlite_synchronous: str = "normal", *, workers: int | None = None, floors_too: bool = True
) -> AsyncIterator[tuple[dict[str, Call], Light | None]]:
    """As deployed: Tether is the shipped ``tether server`` (its own process, on a fresh data dir;
    ``workers`` as for :func:`_start_served`), the upstream its own uvicorn process; the four calls
    from this process, and the light run (with the floors unless not ``floors_too``)."""
    upstream_proc, node, port = await asyncio.to_thread(_start_served, sqlite_synchronous, workers)
    floors: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        upstream = f"http://127.0.0.1:{port}/mcp"
        async with httpx.AsyncClient(timeout=30, limits=LIMITS) as http:
            agent, task_id = await setup(http, node.addr, node.headers(), upstream)

            async def light(seconds: float, reps: int) -> dict[str, Any]:
                if floors_too and not floors:
                    floors.update(await _start_floors(http, upstream))
                return await mcp_light.run(
                    node,
                    upstream_proc.pid,
                    upstream,
                    agent,
                    task_id,
                    seconds=seconds,
                    reps=reps,
                    floors={kind: (proc.pid, url) for kind, (proc, url) in floors.items()},
                )

            yield _paths(http, node.addr, upstream, agent, task_id), light
    finally:
        try:
            for proc, _ in floors.values():
                await asyncio.to_thread(stop, proc)
        finally:
            try:
                await asyncio.to_thread(node.close)
            finally:
                await asyncio.to_thread(stop, upstream_proc)


def _launch_floors(upstream: str) -> dict[str, tuple[subprocess.Popen[bytes], str]]:
    """Every floor of :mod:`bench.mcp_floors` in its own process, listening (all stopped if one fails)."""
    launched: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    env = {**os.environ, mcp_floors.TOKEN_ENV: SECRET}
    try:
        for kind in mcp_floors.KINDS:
            port = free_port()
            command = [sys.executable, "-m", "bench.mcp_floors", kind, str(port), upstream]
            proc = subprocess.Popen(command, cwd=ROOT, env=env)
            launched[kind] = (proc, f"http://127.0.0.1:{port}/mcp")
            wait_for_port(port, proc, timeout_seconds=60)
    except BaseException:
        for proc, _ in launched.values():
            stop(proc)
        raise
    return launched


async def _start_floors(
    http: httpx.AsyncClient, upstream: str
) -> dict[str, tuple[subprocess.Popen[bytes], str]]:
    """The floors, each checked to answer the bench's call on both wires. Every check comes on a
    connection of its own, which the kernel hands to a worker at random: with 16 of them, every
    worker has almost surely opened its upstream client before the measured runs."""
    started = await asyncio.to_thread(_launch_floors, upstream)
    try:
        for _ in range(8):
            for kind, (_, url) in started.items():
                for modern in (False, True):
                    headers = {**HEADERS, **_wire("search", modern), "Connection": "close"}
                    answer = await http.post(url, content=_call(1, "search", modern), headers=headers)
                    if answer.status_code != 200 or "results for" not in answer.text:
                        raise RuntimeError(f"floor {kind} answered {answer.status_code}: {answer.text[:200]}")
    except BaseException:
        for proc, _ in started.values():
            await asyncio.to_thread(stop, proc)
        raise
    return started


async def run(
    requests: int,
    sqlite_synchronous: str = "normal",
    *,
    deployed: bool = False,
    light_seconds: float = 0,
    light_reps: int = 1,
    workers: int | None = None,
) -> dict[str, Any]:
    """One setup's runs. ``workers`` (served only): Tether's ``--workers``, None for its default
    (one per core; the floors are measured with that run only)."""
    opened = (
        served(sqlite_synchronous, workers=workers, floors_too=workers is None)
        if deployed
        else started(sqlite_synchronous)
    )
    async with opened as (paths, light):
        for call in paths.values():  # warm-up: connections, the upstream session, caches
            await timed(call, 50, 1)
        results: dict[str, Any] = {
            "requests": requests,
            "sqlite_synchronous": sqlite_synchronous,
            "setup": _setup_label(deployed, workers),
        }
        if deployed:
            results["workers"] = workers or default_workers()
            # Each served run says how fast the host was as it began: a second run can meet
            # another host speed than the first (the machine is shared).
            results["load"] = round(os.getloadavg()[0], 2)
            results["loop_seconds"] = round(_host_speed(), 3)
        for name, call in paths.items():
            results[name] = {
                "sequential": await timed(call, requests, 1),
                f"{CONCURRENCY}_concurrent": await timed(call, requests, CONCURRENCY),
            }
        for suffix in ("", f"_{MODERN}"):
            for mode in ("sequential", f"{CONCURRENCY}_concurrent"):
                d, g = results["direct" + suffix][mode], results["gateway" + suffix][mode]
                results[f"added{suffix}_{mode}"] = {
                    "p50_us": round(g["p50_us"] - d["p50_us"], 1),
                    "p99_us": round(g["p99_us"] - d["p99_us"], 1),
                }
        if light is not None and light_seconds > 0:
            results["light"] = await light(light_seconds, light_reps)
        return results


def _setup_label(deployed: bool, workers: int | None) -> str:
    if not deployed:
        return "one process"
    if workers is None:
        return f"served, {default_workers()} workers (one per core)"
    return f"served, {workers} worker{'s' if workers != 1 else ''}"


def _instrument(on: bool) -> None:
    """Switch callgrind's instrumentation of this process on or off, and wait until it is."""
    proc = subprocess.Popen(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None:
        time.sleep(0.01)  # a sleeping process costs next to no instructions


async def _count_child(path: str, calls: int) -> None:
    async with started() as (paths, _):
        call = paths[path]
        await timed(call, 30, 1)  # warm-up
        _instrument(True)
        for _ in range(calls):
            await call()
        _instrument(False)


def instructions(calls: int) -> dict[str, float]:
    """Instructions per sequential call of each path under callgrind (the whole process: client,
    Tether, upstream and their threads; deterministic, unlike the clock on a shared machine)."""
    counts: dict[str, float] = {}
    for path in ("direct", "gateway", f"direct_{MODERN}", f"gateway_{MODERN}"):
        with tempfile.TemporaryDirectory() as tmp:
            command = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/callgrind.out",
                sys.executable,
                "-m",
                "bench.mcp_bench",
                "--child",
                path,
                str(calls),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
        total = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        if done.returncode != 0 or total is None:
            raise RuntimeError(f"callgrind run failed: {done.stderr[-800:]}")
        counts[path] = round(int(total.group(1).replace(",", "")) / calls / 1e6, 2)
        print(f"{path:24} {counts[path]:8.2f} M instructions/call", flush=True)
    return counts


def _ms(figures: dict[str, Any]) -> str:
    return f"{figures['p50_us'] / 1000:.2f} / {figures['p99_us'] / 1000:.2f}"


def markdown(results: dict[str, Any]) -> str:
    c = f"{CONCURRENCY}_concurrent"
    intro = (
        f"`python -m bench.mcp_bench` ({results['generated']}): the same JSON-RPC `tools/call` to an "
        "upstream MCP server written with the SDK (stateless streamable HTTP), direct with its token vs "
        "through Tether's `/mcp` (a DPoP proof per call, `call_tool` decided, `tool.call` recorded with "
        f"the proof's use, the answer redacted). {results['runs'][0]['requests']} calls per run. "
        "**One process**: client, Tether and upstream share one event loop (one core): the sequential "
        "figures are one call's own cost; with 16 concurrent callers each call also waits for the other "
        "15. **Served**: Tether is the shipped `tether server` in its own process (with the workers the "
        "setup names), the upstream another uvicorn process, the client this one, on the same "
        f"{results.get('cpus', 2)} cores. Rows without a wire name send the "
        "handshake era's bare JSON-RPC body (no `MCP-Protocol-Version`); rows marked "
        f"{MODERN} send that version's per-request envelope (headers and `_meta`), as the SDK's own "
        "`Client` does."
    )
    lines = [
        BEGIN,
        "## MCP gateway (issue 15)",
        "",
        intro,
        "",
        "| setup | path | p50 / p99 ms, sequential | calls/s, sequential | p50 / p99 ms, 16 concurrent "
        "| calls/s, 16 concurrent |",
        "|---|---|---|---|---|---|",
    ]
    # (setup, load, wire): added p50 in ms, for the target's table
    targets: dict[tuple[str, str, str], float] = {}
    for one in results["runs"]:
        store = f"{one.get('setup', 'one process')}, SQLite {one['sqlite_synchronous']}"
        for suffix, label in (("", ""), (f"_{MODERN}", f", {MODERN}")):
            for name in ("direct", "gateway"):
                s, k = one[name + suffix]["sequential"], one[name + suffix][c]
                rates = f"{s['requests_per_s']:,}", f"{k['requests_per_s']:,}"
                lines.append(f"| {store} | {name}{label} | {_ms(s)} | {rates[0]} | {_ms(k)} | {rates[1]} |")
            seq, conc = one[f"added{suffix}_sequential"], one[f"added{suffix}_{c}"]
            lines.append(f"| {store} | **added**{label} | {_ms(seq)} | | {_ms(conc)} | |")
            if one["sqlite_synchronous"] == "normal":
                wire = MODERN if suffix else "bare JSON-RPC"
                for what, figures in (("sequential", seq), ("16 concurrent", conc)):
                    targets[str(one.get("setup")), f"{what}, Python client", wire] = figures["p50_us"] / 1000
    for index, one in enumerate(one for one in results["runs"] if one.get("light")):
        light = one["light"]
        if index == 0:
            lines += ["", *_light_lines(light, _host_line(one))]
        else:
            lines += ["", *_light_again_lines(one, results.get("cpus", 2))]
        for suffix, wire in WIRES:
            for shape in mcp_light.SHAPES:
                what = "sequential" if shape.connections == 1 and not shape.think_ms else shape.label
                what += " concurrent" if shape.connections > 1 and not shape.think_ms else ""
                added = light[f"added{suffix}_{shape.key}"]["p50_us"] / 1000
                targets[str(one.get("setup", "served")), f"{what}, wrk", wire] = added
    if targets:
        lines += ["", *_target_lines(targets)]
    counts = results.get("callgrind")
    if counts:
        lines += [
            "",
            f"Instructions per sequential call (`--callgrind`, {counts['calls']} calls per path, the whole "
            "process: client, Tether, upstream; deterministic where the clock above is not):",
            "",
            "| wire | direct, M | gateway, M | added, M |",
            "|---|---|---|---|",
        ]
        for suffix, wire in WIRES:
            d, g = counts["direct" + suffix], counts["gateway" + suffix]
            lines.append(f"| {wire} | {d:.2f} | {g:.2f} | {g - d:.2f} |")
    lines += ["", results["setup"], END]
    return "\n".join(lines)


def _target_lines(targets: dict[tuple[str, str, str], float]) -> list[str]:
    """The target's verdicts: a row per setup and load, a column per wire."""
    lines = [
        "Target (issue 15): added p50 <= 2.00 ms (SQLite normal), PASS or MISS:",
        "",
        f"| setup | load | bare JSON-RPC | {MODERN} |",
        "|---|---|---|---|",
    ]
    rows = dict.fromkeys((setup, load) for setup, load, _ in targets)
    for setup, load in rows:
        cells = []
        for wire in ("bare JSON-RPC", MODERN):
            added = targets.get((setup, load, wire))
            if added is None:
                cells.append("-")
            elif added <= 0:  # medians of separate runs: the direct call's was the slower one
                cells.append(f"{added:.2f} ms (noise: no verdict)")
            else:
                cells.append(f"{added:.2f} ms {'PASS' if added <= 2.0 else 'MISS'}")
        lines.append(f"| {setup} | {load} | {cells[0]} | {cells[1]} |")
    return lines


def _cpu(figures: dict[str, Any], key: str) -> str:
    """A CPU figure of the report, or "-" for a run that did not measure it (an older mcp.json)."""
    return f"{figures[key]:,.0f}" if key in figures else "-"


def _light_lines(light: dict[str, Any], host: str) -> list[str]:
    lines = [
        f"**Light** (`bench/mcp_light.py`): the served setup again, driven by wrk with pre-built requests "
        "(each gateway request its own DPoP proof, signed before the run and sent once) instead of a "
        "Python client, whose own CPU per call is as large as the upstream's on the same 2 cores. "
        f"{light['seconds']:g} s a run, median of {light['reps']}, direct and gateway alternating; every "
        "run checked against the upstream's own count of the tool calls it answered. Server CPU: "
        "Tether's processes per gateway call, the upstream's per direct call and per call through "
        "Tether (at a low rate it includes each server's idle background work, spread over fewer "
        "calls; through Tether, the same call costs the upstream more, most likely because Tether's "
        "work on the same 2 cores leaves its caches cold between calls). *1* sends each call when the "
        "last one's answer arrives; *1 paced* is one agent that pauses a random "
        f"{light.get('think_ms', 40) / 2:g}-{light.get('think_ms', 40) * 1.5:g} ms between an answer and "
        "its next call (each call alone, but after a pause: the machine's caches have gone cold, and "
        "every process it passes through is woken). *16* is a closed loop (each connection sends its "
        "next call when the answer arrives: as many calls as the 2 cores serve, each waiting for the "
        "other 15); *16 paced* are 16 such agents (calls also overlap and share the 2 cores with the "
        "upstream and wrk, without saturating them). Tether runs its default workers (one per core); "
        f"the host: {host}.",
        "",
    ]
    return lines + _light_table(light) + _floor_lines(light)


def _light_again_lines(one: dict[str, Any], cpus: int) -> list[str]:
    """The light runs of a served setup with another worker count (no floors)."""
    workers = one.get("workers", 1)
    intro = (
        f"**Light, `tether server --workers {workers}`**: the same runs, Tether in {workers} worker "
        f"process{'es' if workers != 1 else ''}, after the runs above (so on the host as it was then: "
        f"{_host_line(one)}). Three parties share this machine's {cpus} cores: wrk, the upstream and "
        "Tether; with a worker per core, Tether's workers can take every core the upstream also needs. "
        "This run asks whether Tether sized to the CPU the others leave it does better (see "
        "docs/operations.md, *Sizing the workers*); calls per second at 16 in a closed loop show what "
        "it gives up."
    )
    return [intro, "", *_light_table(one["light"])]


def _host_line(one: dict[str, Any]) -> str:
    if "loop_seconds" not in one:
        return "not measured"
    return f"load average {one['load']:.2f}, the 10 M-step loop {one['loop_seconds']:.2f} s as it began"


def _light_table(light: dict[str, Any]) -> list[str]:
    lines = [
        "| wire | connections | direct p50 / p99 ms | gateway p50 / p99 ms | **added** p50 / p99 ms "
        "| calls/s direct / gateway | server CPU per call, µs: upstream (direct) / upstream (through "
        "Tether) / Tether |",
        "|---|---|---|---|---|---|---|",
    ]
    for suffix, wire in WIRES:
        for shape in mcp_light.SHAPES:
            d, g = light[f"direct{suffix}_{shape.key}"], light[f"gateway{suffix}_{shape.key}"]
            added = light[f"added{suffix}_{shape.key}"]
            lines.append(
                f"| {wire} | {shape.label} | {_ms(d)} | {_ms(g)} | **{_ms(added)}** "
                f"| {d['calls_per_s']:,.0f} / {g['calls_per_s']:,.0f} "
                f"| {d['server_cpu_us_per_call']:,.0f} / {_cpu(g, 'upstream_cpu_us_per_call')} "
                f"/ {g['server_cpu_us_per_call']:,.0f} |"
            )
    return lines


def _floor_lines(light: dict[str, Any]) -> list[str]:
    """What the added latency is made of: the floors' rows, in the shapes they ran in (none in an
    older mcp.json, and no row for a shape an older run did not measure them in)."""

    def measured(kind: str, key: str) -> bool:
        return any(f"floor_{kind}{suffix}_{key}" in light for suffix, _ in WIRES)

    shapes = [s for s in mcp_light.SHAPES if any(measured(k, s.key) for k in mcp_floors.KINDS)]
    kinds = [k for k in mcp_floors.KINDS if any(measured(k, s.key) for s in shapes)]
    if not kinds:
        return []
    lines = [
        "",
        "**What the added latency is made of**, roughly (`bench/mcp_floors.py`): the same call through "
        "proxies that do less than Tether, each served as `tether server` serves (a worker per core on "
        "its own `SO_REUSEPORT` socket, Tether's HTTP protocol and event loop, the startup heap frozen), "
        f"run after each gateway run in the {_shape_names([s.key for s in shapes])} shapes. *Relay*: "
        "the request's bytes to the upstream and the answer's back, on Tether's HTTP/1.1 transport (the "
        "extra hop alone). *SDK proxy, out of the box*: the SDK's low-level `Server` behind its own "
        "stateless streamable HTTP app, each call forwarded by its `Client` on its own transport, the "
        "tools' input schemas listed once (as Tether has its pinned ones): the SDK at both ends as the "
        "issue prescribes, and nothing else. *SDK proxy, as Tether runs the SDK*: the front's "
        "one-exchange path into the SDK's kernel and the SDK's `Client` on Tether's dispatcher. None of "
        "them authenticates, decides, records or redacts anything: the gateway minus the last one is, "
        "roughly, Tether's own work on a call (governance and the app around the SDK). On the bare wire "
        "the SDK proxies, like Tether, call the upstream on the 2026-07-28 wire, which costs it less CPU "
        "than the bare one (the upstream's CPU per direct call above): a saving the direct call and the "
        "relay do not have"
        + (", largest with 16 in a closed loop" if any(s.key == "16" for s in shapes) else "")
        + ". Added p50 over direct, ms (the proxy's CPU per call, µs):",
        "",
        "| wire | connections | " + " | ".join(mcp_floors.LABELS[k] for k in kinds) + " | Tether gateway |",
        "|---|---|" + "---|" * (len(kinds) + 1),
    ]
    for suffix, wire in WIRES:
        for shape in shapes:
            floors = [light.get(f"floor_{k}{suffix}_{shape.key}") for k in kinds]
            if not any(floors):  # measured on the other wire only
                continue
            direct = light[f"direct{suffix}_{shape.key}"]["p50_us"]
            cells = []
            for figures in [*floors, light[f"gateway{suffix}_{shape.key}"]]:
                if figures is None:
                    cells.append("-")
                    continue
                added = (figures["p50_us"] - direct) / 1000
                cells.append(f"{added:.2f} ({figures['server_cpu_us_per_call']:,.0f})")
            lines.append(f"| {wire} | {shape.label} | " + " | ".join(cells) + " |")
    return lines


def _shape_names(keys: list[str]) -> str:
    """``["1", "16_paced"]`` → ``*1* and *16 paced*``: the shapes' keys as the report names them."""
    names = [f"*{key.replace('_', ' ')}*" for key in keys]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def write_latest(section: str) -> None:
    text = LATEST.read_text(encoding="utf-8") if LATEST.exists() else "# Tether benchmarks: latest run\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    LATEST.write_text(text, encoding="utf-8")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="calls per run")
    parser.add_argument(
        "--callgrind",
        type=int,
        default=0,
        metavar="CALLS",
        help="also count instructions per call under valgrind, CALLS sequential calls per path (slow)",
    )
    parser.add_argument(
        "--no-served", action="store_true", help="only the one-process runs (not the served one)"
    )
    parser.add_argument(
        "--light-seconds",
        type=float,
        default=8.0,
        help="seconds per light run (wrk against the served setup; 0: none)",
    )
    parser.add_argument("--light-reps", type=int, default=3, help="light runs per measure (median)")
    parser.add_argument(
        "--also-workers",
        type=int,
        default=1,
        metavar="N",
        help="after the served run with Tether's default workers (one per core), the served and light "
        "runs again with `tether server --workers N` (0: not)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 <= args.also_workers <= MAX_WORKERS:
        parser.error(f"--also-workers must be between 0 and {MAX_WORKERS}")
    load = os.getloadavg()[0]  # other work on the machine moves the clock figures, not the counts
    loop_seconds = _host_speed()
    requests = max(args.requests, CONCURRENCY)
    runs = [await run(requests, mode) for mode in ("normal", "full")]
    if not args.no_served:
        light_seconds = args.light_seconds
        if not mcp_light.available():
            light_seconds = 0
            print(f"no light runs: {WRK_MISSING}", flush=True)
        served_workers: list[int | None] = [None]
        if args.also_workers and args.also_workers != default_workers():
            served_workers.append(args.also_workers)
        for workers in served_workers:
            runs.append(
                await run(
                    requests,
                    "normal",
                    deployed=True,
                    light_seconds=light_seconds,
                    light_reps=args.light_reps,
                    workers=workers,
                )
            )
    results: dict[str, Any] = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": CPUS,
        "runs": runs,
        **(
            {"callgrind": {"calls": args.callgrind, **instructions(args.callgrind)}} if args.callgrind else {}
        ),
        "setup": (
            f"SQLite {sqlite3.sqlite_version}, WAL, temporary file; Python {platform.python_version()} "
            f"on {platform.machine()}; mcp {_version('mcp')}; load average {load:.2f} on "
            f"{CPUS} CPUs when the run began; a 10 M-step Python loop took {loop_seconds:.2f} s "
            "then (the host's speed for one process: runs on a slower host are slower throughout)."
        ),
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    section = markdown(results)
    write_latest(section)
    print(section)


def _host_speed() -> float:
    """Seconds for a fixed Python loop: how fast this shared host runs one process right now."""
    started = time.perf_counter()
    total = 0
    for step in range(10_000_000):
        total += step
    return time.perf_counter() - started


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def _serve_upstream(port: int) -> None:
    """The upstream on its own, for the served run (stopped by its PID)."""
    uvicorn.run(upstream_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(_count_child(sys.argv[2], int(sys.argv[3])))
    elif sys.argv[1:2] == ["--upstream"]:
        _serve_upstream(int(sys.argv[2]))
    else:
        asyncio.run(main())
