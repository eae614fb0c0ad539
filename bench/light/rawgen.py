"""A load generator on raw asyncio sockets, for machines without ``wrk``: same pool files, same
protocol (``ready`` on stderr, one ``BENCHJSON`` line on stdout) as ``pool.lua``.

Run: ``python -m bench.light.rawgen URL POOL_PREFIX once|cycle --connections 16 --seconds 10``;
``TETHER_BENCH_THINK_MS`` paces each connection as it paces ``pool.lua``.
Requests are pre-built bytes; per request it writes them, reads the status line and headers,
then exactly Content-Length bytes of body (no parsing beyond that). uvloop is used when present.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit


def load_pool(prefix: str) -> list[bytes]:
    data = Path(f"{prefix}.0").read_bytes()
    return [r for r in data.split(b"\0") if r]


async def run(
    url: str, pool: list[bytes], once: bool, connections: int, seconds: float, think_ms: float = 0
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    streams = [await asyncio.open_connection(host, port) for _ in range(connections)]
    sys.stderr.write(f"ready 0 {len(pool)}\n")
    sys.stderr.flush()
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    state = {"next": 0, "short": 0, "bytes": 0}
    start = time.perf_counter()
    deadline = start + seconds

    async def pause() -> None:  # as pool.lua: a random 0.5-1.5 x think_ms, never timed
        await asyncio.sleep(think_ms * (0.5 + random.random()) / 1000)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if think_ms > 0:  # wrk pauses before a connection's first request too: no opening burst
            await pause()
        while time.perf_counter() < deadline:
            i = state["next"]
            if i >= len(pool):
                if once:  # out of proofs: stop this connection, never resend one
                    return
                i = 0
            state["next"] = i + 1
            t0 = time.perf_counter_ns()
            writer.write(pool[i])
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                errors["read"] += 1
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
                    break
            body = await reader.readexactly(length) if length else b""
            latencies.append(time.perf_counter_ns() - t0)
            state["bytes"] += len(head) + len(body)
            if int(head[9:12]) > 399:
                errors["status"] += 1
            if think_ms > 0:
                await pause()

    await asyncio.gather(*(connection(r, w) for r, w in streams))
    elapsed = time.perf_counter() - start
    for _, writer in streams:
        writer.close()
    latencies.sort()

    def pct(q: float) -> int:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] // 1000 if latencies else 0

    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "bytes": state["bytes"],
        "errors": errors,
        "latency_us": {
            "p50": pct(0.5),
            "p90": pct(0.9),
            "p99": pct(0.99),
            "mean": round(sum(latencies) / max(1, len(latencies)) / 1000, 1),
            "max": latencies[-1] // 1000 if latencies else 0,
        },
        "consumed": state["next"],
        "short": 0,
        "exhausted": once and state["next"] >= len(pool),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("pool")
    parser.add_argument("mode", choices=("once", "cycle"))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    pool = load_pool(args.pool)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    think_ms = float(os.environ.get("TETHER_BENCH_THINK_MS") or 0)
    report = runner(run(args.url, pool, args.mode == "once", args.connections, args.seconds, think_ms))
    sys.stdout.write("BENCHJSON " + json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
