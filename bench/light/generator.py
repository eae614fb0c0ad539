"""The light load generators and how one run is measured.

Two generators send the same pre-built raw HTTP requests (a pool file: requests separated by NUL
bytes, see :func:`write_pool`), keep ``connections`` keep-alive connections busy (a closed loop:
each connection sends its next request when the answer arrives) and speak one protocol, so the
harness runs either:

- ``wrk`` (Debian's package; C + LuaJIT) with ``pool.lua``: the default, and the lighter one;
- ``asyncio``: :mod:`bench.light.rawgen`, raw asyncio sockets in one Python process, for machines
  without wrk.

Both print ``ready ...`` on stderr once the pool is loaded and, at the end, one ``BENCHJSON {...}``
line on stdout. :func:`run_load` starts one or more generators (one per Tether node), samples the
servers' CPU (each server process with all its workers, from /proc) and each generator's CPU when
every generator is ready and again when they have exited; the generator's total comes from
``wait4``'s rusage, so its own CPU per request is measured, not assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.openbao.procs import CLOCK_TICKS, tree_cpu_seconds

LUA = Path(__file__).with_name("pool.lua")
#: The environment variable that paces a generator (read by pool.lua when it loads, and by rawgen).
THINK_ENV = "TETHER_BENCH_THINK_MS"
WRK_MISSING = "wrk is not installed: `apt-get install -y wrk` (Debian/Ubuntu; as root, or with sudo)"
WRK_INSTALL_HINT = WRK_MISSING + ", or run with --generator asyncio"


class GeneratorError(RuntimeError):
    """The load generator could not run or reported nothing."""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def write_pool(prefix: Path, requests: list[bytes], threads: int) -> None:
    """Split ``requests`` over ``threads`` files ``<prefix>.<k>`` (request i → thread i mod threads,
    so each thread keeps the rotation over grants / tokens), NUL-separated."""
    for k in range(threads):
        part = requests[k::threads]
        prefix.with_name(f"{prefix.name}.{k}").write_bytes(b"".join(r + b"\0" for r in part))


def raw_request(
    method: str, host: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    """One HTTP/1.1 request, keep-alive, as bytes."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        if "\r" in value or "\n" in value or "\0" in value:
            raise ValueError(f"header {name} holds a line break or NUL")
        lines.append(f"{name}: {value}")
    if body or method in {"POST", "PUT", "PATCH"}:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Load:
    """One generator's share of a run: where to send which pool over how many connections."""

    url: str  # http://127.0.0.1:PORT
    pool: Path  # prefix of the pool files
    connections: int
    once: bool  # each request at most once (DPoP proofs), else cycle the pool
    #: Paced: each connection pauses a random 0.5-1.5 x this many ms after an answer (0: closed loop).
    think_ms: float = 0


def _proc_cpu(pid: int) -> float:
    """CPU of one process so far, in seconds: the sum of its threads' on-CPU nanoseconds
    (/proc/<pid>/task/*/schedstat), precise where /proc/<pid>/stat counts 10 ms ticks, which
    would swamp a generator that spends a few tens of ms in a short run."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as stat:
                total += int(stat.read().split()[0])
    except OSError:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total / 1e9


def _command(generator: str, load: Load, threads: int, seconds: float) -> list[str]:
    mode = "once" if load.once else "cycle"
    if generator == "wrk":
        wrk = wrk_path()
        if wrk is None:
            raise GeneratorError(WRK_INSTALL_HINT)
        return [
            wrk,
            f"-t{threads}",
            f"-c{load.connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            load.url,
            "--",
            str(load.pool),
            mode,
        ]
    return [
        sys.executable,
        "-m",
        "bench.light.rawgen",
        load.url,
        str(load.pool),
        mode,
        "--connections",
        str(load.connections),
        "--seconds",
        str(seconds),
    ]


def run_load(
    loads: list[Load], server_pids: list[int], seconds: float, *, generator: str = "wrk", threads: int = 1
) -> dict[str, Any]:
    """Run every load at once for ``seconds``; figures summed over the generators and servers.

    ``server_cpu_seconds`` counts every server process with all its descendants (workers), from
    the moment every generator is ready until the last one exits. ``generator_cpu_seconds`` is the
    generators' own CPU over the same window (their total from rusage minus what loading the pool
    cost before "ready").
    """
    threads = threads if generator == "wrk" else 1
    procs = [
        subprocess.Popen(
            _command(generator, load, threads, seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, THINK_ENV: str(load.think_ms)},
        )
        for load in loads
    ]
    try:
        for proc in procs:
            assert proc.stderr is not None
            ready = 0
            while ready < threads:
                line = proc.stderr.readline().decode(errors="replace")
                if not line:
                    proc.wait(10)
                    raise GeneratorError(
                        f"{generator} exited before it was ready: {proc.stderr.read()[:500]!r}"
                    )
                if line.startswith("ready "):
                    ready += 1
        wall0 = time.perf_counter()
        server0 = [tree_cpu_seconds(pid) for pid in server_pids]
        gen0 = [_proc_cpu(proc.pid) for proc in procs]
        usage = []
        for proc in procs:
            _, status, rusage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            usage.append(rusage.ru_utime + rusage.ru_stime)
        wall = time.perf_counter() - wall0
        server_cpu = sum(tree_cpu_seconds(pid) - c0 for pid, c0 in zip(server_pids, server0, strict=True))
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        raise
    reports = []
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = proc.stdout.read().decode(errors="replace")
        line = next((x for x in out.splitlines() if x.startswith("BENCHJSON ")), None)
        if proc.returncode != 0 or line is None:
            err = proc.stderr.read().decode(errors="replace")
            raise GeneratorError(f"{generator} exited {proc.returncode}: {err[-500:] or out[-500:]}")
        reports.append(json.loads(line.removeprefix("BENCHJSON ")))
    gen_cpu = sum(u - g for u, g in zip(usage, gen0, strict=True))
    short = sum(r["short"] for r in reports)
    requests = sum(r["requests"] for r in reports) - short
    status_errors = max(0, sum(r["errors"]["status"] for r in reports) - short)
    other_errors = sum(v for r in reports for k, v in r["errors"].items() if k != "status")
    ok = max(0, requests - status_errors)
    elapsed = max(r["duration_us"] for r in reports) / 1e6
    return {
        "generator": generator,
        "connections": sum(load.connections for load in loads),
        "generators": len(loads),
        "seconds": round(elapsed, 2),
        "requests": requests,
        "ok": ok,
        "status_errors": status_errors,
        "socket_errors": other_errors,
        "pool_exhausted": any(r["short"] > 0 or r.get("exhausted") for r in reports),
        "ops_per_second": round(ok / elapsed, 1) if elapsed else 0.0,
        # Latency of the first generator (one node, or the only one); p50 of all is not additive.
        "latency_us": reports[0]["latency_us"],
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_us_per_op": round(server_cpu / ok * 1e6, 1) if ok else None,
        "server_cpu_cores": round(server_cpu / wall, 2) if wall else None,
        "generator_cpu_seconds": round(gen_cpu, 3),
        "generator_cpu_us_per_request": round(gen_cpu / requests * 1e6, 1) if requests else None,
        "generator_cpu_cores": round(gen_cpu / wall, 2) if wall else None,
    }
