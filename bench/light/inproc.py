"""CPU per request of the app itself, in one process, one request at a time: ``python -m bench.light.inproc``.

A check for code changes on a machine that is not quiet. Throughput and per-operation CPU from a
loaded server move by 20-30 % when anything else runs on a 2-core machine; the CPU time of a
sequential in-process run (``time.process_time``: the event loop's thread and the SQLite writer
thread) moves much less, and its best of several repetitions less still. It is not the benchmark
(no HTTP parsing, no second worker, no contention): it compares two versions of the app's Python.

A seeded deployment is started as in ``bench.light`` (one worker, idle during the measure), its
requests signed as the light generator signs them; then this process serves the same data dir
through ``create_app_from_env`` and drives the ASGI app with those requests directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.light import pools
from bench.light.run import parse, start_deployment, start_upstream, stop, stop_deployment


def _scope(raw: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    path, _, query = target.partition(b"?")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.decode(),
        "scheme": "http",
        "path": path.decode("latin-1"),
        "raw_path": path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    return scope, body


async def _serve(app: Any, raw: bytes) -> int:
    scope, body = _scope(raw)
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _app(data_dir: str, addr: str) -> Any:
    """The node of ``data_dir`` as the deployment serves it (same public URL), in this process."""
    os.environ["TETHER_DATA_DIR"] = data_dir
    os.environ["TETHER_PUBLIC_URL"] = addr
    os.environ["TETHER_SQLITE_SYNCHRONOUS"] = "normal"
    os.environ["TETHER_NODE_ID"] = "node-inproc"
    from tether.api.app import create_app_from_env

    return create_app_from_env()


async def _measure(data_dir: str, addr: str, runs: dict[str, list[list[bytes]]]) -> dict[str, Any]:
    app = _app(data_dir, addr)
    out: dict[str, Any] = {}
    async with app.router.lifespan_context(app):
        for name, reps in runs.items():
            per_op = []
            for requests in reps:
                await _serve(app, requests[0])  # warm
                start = time.process_time()
                statuses = [await _serve(app, raw) for raw in requests[1:]]
                spent = time.process_time() - start
                bad = [s for s in statuses if s >= 300]
                if bad:
                    raise RuntimeError(f"{name}: {len(bad)} answers were not successes (e.g. {bad[0]})")
                per_op.append(spent / (len(requests) - 1) * 1e6)
            out[name] = {"best_us": round(min(per_op), 1), "median_us": round(statistics.median(per_op), 1)}
    return out


def _toggle(on: bool) -> None:
    """Switch callgrind's instrumentation on or off for this process, and wait until it is."""
    proc = subprocess.Popen(
        ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None:
        time.sleep(0.01)  # a sleeping process costs next to no instructions


async def _count(data_dir: str, addr: str, name: str, requests: list[bytes], warm: int) -> None:
    app = _app(data_dir, addr)
    async with app.router.lifespan_context(app):
        for raw in requests[:warm]:
            await _serve(app, raw)
        _toggle(True)
        statuses = [await _serve(app, raw) for raw in requests[warm:]]
        _toggle(False)
    bad = [s for s in statuses if s >= 300]
    if bad:
        raise SystemExit(f"{name}: {len(bad)} answers were not successes (e.g. {bad[0]})")


def _instructions(node: Any, name: str, requests: list[bytes], warm: int) -> float:
    """Instructions per request (callgrind: the event loop's thread and the writer thread)."""
    work = Path(tempfile.mkdtemp(prefix="tether-inproc-cg-"))
    pool = work / "pool.json"
    pool.write_text(json.dumps([r.decode("latin-1") for r in requests]), encoding="utf-8")
    out = work / "callgrind.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        *(["--separate-threads=yes"] if os.environ.get("INPROC_THREADS") else []),
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.light.inproc",
        "--child",
        str(node.data_dir),
        node.addr,
        name,
        str(pool),
        str(warm),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"callgrind run failed: {done.stderr[-1500:]}")
    total = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if total is None:
        raise RuntimeError(f"no instruction count in valgrind's output: {done.stderr[-800:]}")
    return int(total.group(1).replace(",", "")) / (len(requests) - warm)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    if argv is None and sys.argv[1:2] == ["--child"]:
        data_dir, addr, name, pool, warm = sys.argv[2:7]
        requests = [r.encode("latin-1") for r in json.loads(Path(pool).read_text(encoding="utf-8"))]
        asyncio.run(_count(data_dir, addr, name, requests, int(warm)))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="activate,issue,egress")
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="count instructions per request under valgrind instead (deterministic; slow)",
    )
    args = parser.parse_args(argv)
    opts = parse(["--workers", "1"])
    upstream, upstream_url = start_upstream()
    dep = start_deployment("inproc", opts, synchronous="normal", upstream=upstream_url)
    try:
        node = dep.nodes[0]
        builders: dict[str, Callable[[int], list[bytes]]] = {
            "activate": lambda n: pools.activation_pool(dep.grants[0], n),
            "issue": lambda n: pools.issuance_pool(dep.callers[0], n),
            "egress": lambda n: pools.egress_pool(dep.tasks[0], n, "/items/1"),
        }
        wanted = [name for name in args.only.split(",") if name]
        if args.callgrind:
            counts = {}
            for name in wanted:
                counts[name] = _instructions(node, name, builders[name](args.requests + 20), 20)
                print(f"{name:10} {counts[name] / 1e6:8.3f} M instructions/request", flush=True)
            return counts
        runs = {name: [builders[name](args.requests + 1) for _ in range(args.reps)] for name in wanted}
        result = asyncio.run(_measure(str(node.data_dir), node.addr, runs))
    finally:
        stop_deployment(dep)
        stop(upstream)
    for name, row in result.items():
        print(f"{name:10} best {row['best_us']:8.1f} µs CPU/request   median {row['median_us']:8.1f}")
    return result


if __name__ == "__main__":
    main()
