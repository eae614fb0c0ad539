"""Egress benchmark: what the egress path adds over calling the upstream directly.

Run: ``python -m bench.egress_bench [--requests N]``. Prints a table and writes
bench/results/egress.json.

One process, one event loop, real sockets on 127.0.0.1: a small upstream (uvicorn, a ~200-byte
JSON answer), Tether (a node on SQLite — WAL, synchronous=FULL, a temporary file — served by
uvicorn), and the client. The same ``httpx.AsyncClient`` calls:

- direct: ``GET`` the upstream;
- egress: ``GET /v1/egress/bench/items/1`` through Tether with the SDK's ``AsyncEgressClient``
  (a DPoP proof signed per request, as an agent does), which authenticates the proof (a replay
  record: one durable write), reads the task's inject grant, decides ``activate`` with Cedar,
  counts the use and records ``grant.activate`` (a durable write), decrypts the secret, forwards
  with it injected and runs the answer through the leak guard.

Latency p50/p99 sequential, and requests/s sequential and with 16 concurrent callers. Client,
Tether and upstream share one CPU core (one event loop), so these are per-request costs, not a
multi-core server's capacity. A benchmark measures and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tether.api import create_app
from tether.api.routes_egress import close_egress
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.sdk import AsyncAgent
from tether.sdk.egress import AsyncEgressClient

RESULTS = Path(__file__).parent / "results" / "egress.json"
CONCURRENCY = 16
POLICY = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("inject") permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
  when { context.mode == "inject" && context.task.secrets.contains(resource.path) };
"""
ANSWER = json.dumps({"id": 1, "name": "item", "tags": ["a", "b", "c"], "text": "x" * 120}).encode()


async def upstream(scope: Any, receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": ANSWER})


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.005)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


def percentile(samples_ns: list[int], q: float) -> float:
    ordered = sorted(samples_ns)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[rank] / 1000, 1)


async def timed(call: Callable[[], Awaitable[bool]], n: int, concurrency: int) -> dict[str, Any]:
    samples: list[int] = []
    failures = 0
    remaining = n

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter_ns()
            ok = await call()
            samples.append(time.perf_counter_ns() - start)
            failures += not ok

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    figures: dict[str, Any] = {
        "requests_per_s": round(n / elapsed),
        "p50_us": percentile(samples, 0.5),
        "p99_us": percentile(samples, 0.99),
    }
    if failures:
        figures["failures"] = failures
    return figures


async def setup(http: httpx.AsyncClient, url: str, admin: dict[str, str], base: str) -> AsyncEgressClient:
    async def ok(response: httpx.Response) -> dict[str, Any]:
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    await ok(await http.put(url + "/v1/policies", json={"policies": POLICY}, headers=admin))
    await ok(
        await http.put(
            url + "/v1/secrets/bench/token",
            json={"value": "bench-" + "s" * 34, "sensitivity": "internal", "destinations": ["bench"]},
            headers=admin,
        )
    )
    destination = {
        "name": "bench",
        "base_url": base,
        "secret": "bench/token",
        "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
        "methods": ["GET"],
        "path_prefixes": ["/items"],
    }
    await ok(await http.post(url + "/v1/destinations", json=destination, headers=admin))
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    attributes = {"team": "bench", "environment": "test", "owner": "bench", "labels": ["deploy"]}
    registered = await ok(
        await http.post(
            url + "/v1/agents",
            json={"name": "bench-bot", "public_key": public, "attributes": attributes},
            headers=admin,
        )
    )
    agent = AsyncAgent(url, registered["id"], private, http=http)
    task = await ok(
        await agent.request(
            "POST",
            "/v1/tasks",
            json={
                "purpose": "deploy",
                "objective": "bench",
                "secrets": ["bench/token"],
                "destinations": ["bench"],
                "ttl_seconds": 3600,
            },
        )
    )
    await ok(
        await agent.request(
            "POST", f"/v1/tasks/{task['id']}/grants", json={"destination": "bench", "mode": "inject"}
        )
    )
    return AsyncEgressClient(agent, task["id"])


async def run(requests: int, sqlite_synchronous: str = "full") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.from_settings(Settings(data_dir=Path(tmp), sqlite_synchronous=sqlite_synchronous))
        init = await broker.init()
        app = create_app(broker)
        up_server, up_task, up_port = await serve(upstream)
        server, task, port = await serve(app)
        url = f"http://127.0.0.1:{port}"
        direct_url = f"http://127.0.0.1:{up_port}/api/items/1"
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        try:
            async with httpx.AsyncClient(timeout=30, limits=limits) as http:
                admin = {"Authorization": f"Bearer {init.root_token}"}
                egress = await setup(http, url, admin, f"http://127.0.0.1:{up_port}/api")

                async def direct() -> bool:
                    return (await http.get(direct_url)).status_code == 200

                async def through() -> bool:
                    response = await egress.get("bench", "/items/1")
                    return response.status_code == 200 and response.content == ANSWER

                for call in (direct, through):  # warm-up: connections, caches, first requests
                    await timed(call, 50, 1)
                results: dict[str, Any] = {"requests": requests}
                for name, call in (("direct", direct), ("egress", through)):
                    results[name] = {
                        "sequential": await timed(call, requests, 1),
                        f"{CONCURRENCY}_concurrent": await timed(call, requests, CONCURRENCY),
                    }
                seq_direct, seq_egress = results["direct"]["sequential"], results["egress"]["sequential"]
                results["added_by_egress"] = {
                    "p50_us": round(seq_egress["p50_us"] - seq_direct["p50_us"], 1),
                    "p99_us": round(seq_egress["p99_us"] - seq_direct["p99_us"], 1),
                }
                return results
        finally:
            server.should_exit = True
            up_server.should_exit = True
            await asyncio.gather(task, up_task)
            await close_egress(app)
            await broker.close()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def print_table(results: dict[str, Any]) -> None:
    print(f"egress vs direct ({results['requests']} GETs per run, loopback, µs)")
    print(f"  {'':<10}{'p50':>10}{'p99':>10}{'seq req/s':>12}{'16-conc req/s':>15}{'16-conc p50':>13}")
    for name in ("direct", "egress"):
        s, c = results[name]["sequential"], results[name][f"{CONCURRENCY}_concurrent"]
        print(
            f"  {name:<10}{s['p50_us']:>10}{s['p99_us']:>10}{s['requests_per_s']:>12}"
            f"{c['requests_per_s']:>15}{c['p50_us']:>13}"
        )
        failed = s.get("failures", 0) + c.get("failures", 0)
        if failed:
            print(f"  FAILED requests ({name}): {failed}")
    added = results["added_by_egress"]
    print(f"  added by the egress path: p50 {added['p50_us']} µs, p99 {added['p99_us']} µs")
    normal = results.get("sqlite_synchronous_normal")
    if normal:
        added = normal["added_by_egress"]
        print(
            f"  with sqlite_synchronous=normal: added p50 {added['p50_us']} µs, p99 {added['p99_us']} µs; "
            f"egress {normal['egress']['sequential']['requests_per_s']} req/s sequential, "
            f"{normal['egress'][f'{CONCURRENCY}_concurrent']['requests_per_s']} at {CONCURRENCY} concurrent"
        )
    print(f"\n{results['setup']}")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    results = await run(max(args.requests, CONCURRENCY))
    # The same with sqlite_synchronous=normal: commits survive a process crash, not a power loss
    # (what OpenBao's file audit device offers); no fsync on the request path.
    normal = await run(max(args.requests, CONCURRENCY), "normal")
    results["sqlite_synchronous_normal"] = {
        "egress": normal["egress"],
        "direct": normal["direct"],
        "added_by_egress": normal["added_by_egress"],
    }
    results["setup"] = (
        f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL, temporary file; Tether and the upstream "
        "served by uvicorn on 127.0.0.1 in the client's process and event loop; Ed25519 agent key"
    )
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "egress",
                "command": " ".join(["python -m bench.egress_bench", *argv]),
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
                "versions": {p: _version(p) for p in ("httpx", "uvicorn", "fastapi", "cedarpy")},
                "concurrency": CONCURRENCY,
                "results": results,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
