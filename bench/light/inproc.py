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
import os
import statistics
import time
from collections.abc import Callable
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


async def _measure(data_dir: str, addr: str, runs: dict[str, list[list[bytes]]]) -> dict[str, Any]:
    os.environ["TETHER_DATA_DIR"] = data_dir
    os.environ["TETHER_PUBLIC_URL"] = addr
    os.environ["TETHER_SQLITE_SYNCHRONOUS"] = "normal"
    os.environ["TETHER_NODE_ID"] = "node-inproc"
    from tether.api.app import create_app_from_env

    app = create_app_from_env()
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per repetition")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="activate,issue,egress")
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
