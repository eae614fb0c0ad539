"""The load generator: several client processes, each running asyncio coroutines over httpx.

One measurement starts ``procs`` processes (spawned, so nothing is shared with the parent's
event loop). Each process does its own setup (Tether: a DPoP-bound token for its agent, and for
activation a task and a reveal grant per coroutine; OpenBao: child tokens made with its parent
token), then waits on a barrier so that all start together. The parent samples the server's CPU
(its process and every worker process) around the measured window. Every Tether request goes
through the SDK's ``AsyncAgent``: a fresh DPoP proof is signed for each one, as a real agent would.

Operations (one "op" is what the issue's B-number counts):

- tether issue: ``POST /v1/tasks`` then ``POST /v1/tasks/{id}/grants`` (two requests);
- tether activate: ``POST /v1/grants/{id}/activate`` of a ``reveal`` grant;
- openbao issue: ``POST /v1/auth/token/create`` with a parent service token, one policy, a TTL;
- openbao activate: ``GET /v1/secret/data/<path>`` (KV v2) with a child token.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.openbao.procs import tree_cpu_seconds
from bench.openbao.server import KV_PATH, READ_POLICY
from bench.openbao.tether_server import GRANT_BODY, TASK_BODY

Op = Callable[[], Awaitable[None]]


class OpError(RuntimeError):
    pass


def _ok(response: httpx.Response, *expected: int) -> dict[str, Any]:
    if response.status_code not in expected:
        request = response.request
        raise OpError(f"{request.method} {request.url.path}: {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json() if response.content else {}
    return body


async def tether_open_and_issue(agent: Any) -> str:
    task = _ok(await agent.request("POST", "/v1/tasks", json=TASK_BODY), 201)
    grant = _ok(await agent.request("POST", f"/v1/tasks/{task['id']}/grants", json=GRANT_BODY), 201)
    return str(grant["id"])


async def bao_child(http: httpx.AsyncClient, addr: str, parent: str, ttl: str = "1h") -> str:
    body = _ok(
        await http.post(
            f"{addr}/v1/auth/token/create",
            json={"policies": [READ_POLICY], "ttl": ttl, "no_default_policy": True},
            headers={"X-Vault-Token": parent},
        ),
        200,
    )
    return str(body["auth"]["client_token"])


async def _make_ops(spec: dict[str, Any], http: httpx.AsyncClient) -> list[Op]:
    """One operation closure per coroutine, after that coroutine's setup."""
    side, kind, addr, concurrency = spec["side"], spec["op"], spec["addr"], spec["concurrency"]
    ops: list[Op] = []
    if side == "tether":
        from tether.sdk import AsyncAgent

        agent = AsyncAgent(addr, spec["agent"]["id"], spec["agent"]["key"], http=http)
        await agent.token()
        for _ in range(concurrency):
            if kind == "issue":

                async def issue(agent: Any = agent) -> None:
                    await tether_open_and_issue(agent)

                ops.append(issue)
            else:
                grant_id = await tether_open_and_issue(agent)

                async def activate(agent: Any = agent, path: str = f"/v1/grants/{grant_id}/activate") -> None:
                    body = _ok(await agent.request("POST", path), 200)
                    if "value" not in body:
                        raise OpError("activation answered without a value")

                ops.append(activate)
        return ops
    parent = spec["parent_token"]
    for _ in range(concurrency):
        if kind == "issue":

            async def create(parent: str = parent) -> None:
                await bao_child(http, addr, parent, ttl="10m")

            ops.append(create)
        else:
            child = await bao_child(http, addr, parent)
            url, headers = f"{addr}/v1/secret/data/{KV_PATH}", {"X-Vault-Token": child}

            async def read(url: str = url, headers: dict[str, str] = headers) -> None:
                body = _ok(await http.get(url, headers=headers), 200)
                if "data" not in body.get("data", {}):
                    raise OpError("KV read answered without data")

            ops.append(read)
    return ops


async def _run(spec: dict[str, Any], barrier: Any) -> dict[str, Any]:
    limits = httpx.Limits(
        max_connections=spec["concurrency"] + 4, max_keepalive_connections=spec["concurrency"] + 4
    )
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as http:
        ops = await _make_ops(spec, http)
        for op in ops:  # warm the connection pool and the server's caches
            for _ in range(spec["warmup"]):
                await op()
        await asyncio.to_thread(barrier.wait, 300)
        cpu0, start = _own_cpu(), time.perf_counter()
        deadline = start + spec["duration_seconds"] if spec.get("duration_seconds") else None
        count = spec.get("count")
        samples: list[int] = []
        errors: list[str] = []

        async def loop(op: Op) -> None:
            while True:
                if deadline is not None and time.perf_counter() >= deadline:
                    return
                if count is not None and len(samples) + len(errors) >= count:
                    return
                t0 = time.perf_counter_ns()
                try:
                    await op()
                except (OpError, httpx.HTTPError) as exc:
                    errors.append(str(exc)[:300])
                    continue
                samples.append(time.perf_counter_ns() - t0)

        await asyncio.gather(*(loop(op) for op in ops))
        elapsed = time.perf_counter() - start
        return {
            "samples_ns": samples,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "elapsed_seconds": elapsed,
            "client_cpu_seconds": _own_cpu() - cpu0,
        }


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _worker(spec: dict[str, Any], barrier: Any, results: Any) -> None:
    try:
        results.put(asyncio.run(_run(spec, barrier)))
    except BaseException as exc:  # report, never hang the parent on a barrier
        barrier.abort()
        results.put({"crash": f"{type(exc).__name__}: {exc}"[:500]})


def measure(specs: list[dict[str, Any]], server_pid: int) -> dict[str, Any]:
    """Run one measurement: len(specs) client processes against the server with ``server_pid``."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(specs) + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(spec, barrier, results), daemon=True) for spec in specs]
    for proc in procs:
        proc.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(300)  # broken when a worker crashed during setup; its report says why
    cpu0, start = tree_cpu_seconds(server_pid), time.perf_counter()
    reports = [results.get(timeout=600) for _ in procs]
    server_cpu = tree_cpu_seconds(server_pid) - cpu0
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(30)
    crashes = [r["crash"] for r in reports if "crash" in r]
    if crashes:
        raise RuntimeError(f"a client process failed: {crashes[0]}")
    samples = [s for r in reports for s in r["samples_ns"]]
    ops = len(samples)
    elapsed = max(r["elapsed_seconds"] for r in reports)
    return {
        "ops": ops,
        "errors": sum(r["errors"] for r in reports),
        "first_error": next((r["first_error"] for r in reports if r["first_error"]), None),
        "elapsed_seconds": elapsed,
        "ops_per_second": ops / elapsed if elapsed else 0.0,
        "samples_ns": samples,
        "server_cpu_seconds": server_cpu,
        "server_cpu_us_per_op": server_cpu / ops * 1e6 if ops else None,
        "server_cpu_cores": server_cpu / wall if wall else None,
        "client_cpu_seconds": sum(r["client_cpu_seconds"] for r in reports),
        "client_cpu_cores": sum(r["client_cpu_seconds"] for r in reports) / elapsed if elapsed else None,
    }
