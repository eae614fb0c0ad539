"""Run the side-by-side measurements and write bench/results/openbao.json.

Run: ``python -m bench.openbao [--reps N] [--b4-reps N] [--duration S] [--procs P] [--profile]``.

B2 issuance and B3 activation: sequential (one client, one request at a time: p50/p99) and 16
concurrent (``procs`` processes, ``16/procs`` coroutines) for ``duration`` seconds, ``reps``
times, the two servers alternating so that drift on the machine hits both alike. B4 revocation:
Tether revokes a task holding 1000 grants (alone, then with a tree of 100 delegated sub-tasks
each holding a grant); OpenBao revokes a token with 1000 children; after the revoke call returns,
every grant / child token is tried once and must be refused. B6: audit bytes per event and per
operation over sequential activations. Server RSS after each phase; server and client CPU for
every concurrent run. ``--profile`` samples the Tether server with py-spy during a concurrent
activation run (after, and apart from, the measured runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from bench.openbao.load import bao_child, measure, tether_open_and_issue
from bench.openbao.procs import CLOCK_TICKS, rss_bytes
from bench.openbao.server import KV_PATH, PARENT_POLICY, OpenBao
from bench.openbao.tether_server import DESTINATION, SECRET, Tether
from tether.sdk import AsyncAgent

RESULTS = Path(__file__).resolve().parents[1] / "results" / "openbao.json"
CONCURRENCY = 16
SEQUENTIAL_COUNT = {"issue": 150, "activate": 300}
WARMUP = 3


def percentile(samples_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    if not ordered:
        return math.nan
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[rank] / 1000, 1)


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 2),
        "min": round(min(values), 2),
        "max": round(max(values), 2),
        "reps": [round(v, 2) for v in values],
    }


def machine(bao_version: str) -> dict[str, Any]:
    cpu_model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tether": metadata.version("tether"),
        "openbao": bao_version,
    }


# -- B2 / B3 ---------------------------------------------------------------------------------


def specs(
    side: str, op: str, node: Tether | OpenBao, parents: list[str], *, procs: int, seconds: float | None
) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"side": side, "op": op, "addr": node.addr, "warmup": WARMUP}
    if seconds is None:  # sequential: one process, one coroutine
        base |= {"concurrency": 1, "count": SEQUENTIAL_COUNT[op]}
        procs = 1
    else:
        base |= {"concurrency": CONCURRENCY // procs, "duration_seconds": seconds}
    out = []
    for i in range(procs):
        spec = dict(base)
        if isinstance(node, Tether):
            spec["agent"] = node.agents[i]
        else:
            spec["parent_token"] = parents[i]
        out.append(spec)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    samples = [s for run in runs for s in run["samples_ns"]]
    return {
        "ops_per_second": spread([r["ops_per_second"] for r in runs]),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "ops": sum(r["ops"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), None),
        "server_cpu_us_per_op": spread(
            [r["server_cpu_us_per_op"] for r in runs if r["server_cpu_us_per_op"]]
        ),
        "server_cpu_cores": round(statistics.median(r["server_cpu_cores"] for r in runs), 2),
        "client_cpu_cores": round(statistics.median(r["client_cpu_cores"] for r in runs), 2),
        "client_cpu_us_per_op": round(
            sum(r["client_cpu_seconds"] for r in runs) / max(1, sum(r["ops"] for r in runs)) * 1e6, 1
        ),
    }


def throughput(
    tether: Tether, bao: OpenBao, parents: list[str], args: argparse.Namespace, rss: dict[str, list[int]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op, label in (("issue", "B2_issuance"), ("activate", "B3_activation")):
        seq: dict[str, list[dict[str, Any]]] = {"tether": [], "openbao": []}
        con: dict[str, list[dict[str, Any]]] = {"tether": [], "openbao": []}
        for rep in range(args.reps):
            for side, node in (("tether", tether), ("openbao", bao)):
                if rep == 0:
                    seq[side].append(measure(specs(side, op, node, parents, procs=1, seconds=None), node.pid))
                con[side].append(
                    measure(specs(side, op, node, parents, procs=args.procs, seconds=args.duration), node.pid)
                )
                rss[side].append(rss_bytes(node.pid))
                figure = con[side][-1]
                print(
                    f"  {label} {side:8} rep {rep + 1}: {figure['ops_per_second']:8.1f} ops/s  "
                    f"server {figure['server_cpu_us_per_op']:7.0f} µs CPU/op  errors {figure['errors']}",
                    flush=True,
                )
        out[label] = {
            side: {"sequential": summarise(seq[side]), "concurrent_16": summarise(con[side])}
            for side in ("tether", "openbao")
        }
    return out


# -- B4 --------------------------------------------------------------------------------------


async def _bounded(coros: list[Any], limit: int = CONCURRENCY) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def tether_revocation(node: Tether, grants: int, subtasks: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60.0) as http:
        owner, delegate = node.agents[0], node.agents[-1]
        agent = AsyncAgent(node.addr, owner["id"], owner["key"], http=http)
        helper = AsyncAgent(node.addr, delegate["id"], delegate["key"], http=http)
        task = (await agent.request("POST", "/v1/tasks", json={**_task_body(), "ttl_seconds": 3600})).json()
        ids = await _bounded([_issue(agent, task["id"]) for _ in range(grants)])
        held: list[tuple[AsyncAgent, str]] = [(agent, g) for g in ids]
        for i in range(subtasks):
            child = await agent.request(
                "POST",
                f"/v1/tasks/{task['id']}/delegate",
                json={
                    "agent": delegate["id"],
                    "objective": f"sub-task {i}",
                    "secrets": [SECRET],
                    "destinations": [DESTINATION],
                },
            )
            if child.status_code != 201:
                raise RuntimeError(f"delegate: {child.status_code} {child.text[:300]}")
            held.append((helper, await _issue(helper, child.json()["id"])))
        t0 = time.perf_counter()
        revoked = await http.post(
            f"{node.addr}/v1/tasks/{task['id']}/revoke", headers=node.headers(), json={}
        )
        t1 = time.perf_counter()
        if revoked.status_code != 200:
            raise RuntimeError(f"revoke: {revoked.status_code} {revoked.text[:300]}")
        statuses = await _bounded([a.request("POST", f"/v1/grants/{g}/activate") for a, g in held])
        t2 = time.perf_counter()
    refused = sum(1 for r in statuses if r.status_code == 403)
    return {
        "grants": len(held),
        "revoke_ms": (t1 - t0) * 1000,
        "check_ms": (t2 - t1) * 1000,
        "until_all_refused_ms": (t2 - t0) * 1000,
        "refused": refused,
        "all_refused_at_first_check": refused == len(held),
        "answer": revoked.json(),
    }


def _task_body() -> dict[str, Any]:
    from bench.openbao.tether_server import TASK_BODY

    return dict(TASK_BODY)


async def _issue(agent: AsyncAgent, task_id: str) -> str:
    from bench.openbao.tether_server import GRANT_BODY

    response = await agent.request("POST", f"/v1/tasks/{task_id}/grants", json=GRANT_BODY)
    if response.status_code != 201:
        raise RuntimeError(f"grant: {response.status_code} {response.text[:300]}")
    return str(response.json()["id"])


async def bao_revocation(bao: OpenBao, children: int) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60.0) as http:
        parent = await _bao_parent(http, bao)
        tokens = await _bounded([bao_child(http, bao.addr, parent) for _ in range(children)])
        t0 = time.perf_counter()
        revoked = await http.post(
            f"{bao.addr}/v1/auth/token/revoke", json={"token": parent}, headers=bao.headers()
        )
        t1 = time.perf_counter()
        if revoked.status_code not in (200, 204):
            raise RuntimeError(f"revoke: {revoked.status_code} {revoked.text[:300]}")
        url = f"{bao.addr}/v1/secret/data/{KV_PATH}"
        statuses = await _bounded([http.get(url, headers={"X-Vault-Token": t}) for t in tokens])
        t2 = time.perf_counter()
    refused = sum(1 for r in statuses if r.status_code == 403)
    return {
        "children": len(tokens),
        "revoke_ms": (t1 - t0) * 1000,
        "check_ms": (t2 - t1) * 1000,
        "until_all_refused_ms": (t2 - t0) * 1000,
        "refused": refused,
        "all_refused_at_first_check": refused == len(tokens),
    }


async def _bao_parent(http: httpx.AsyncClient, bao: OpenBao) -> str:
    response = await http.post(
        f"{bao.addr}/v1/auth/token/create",
        json={"policies": [PARENT_POLICY, "bench-read"], "ttl": "2h", "no_default_policy": True},
        headers=bao.headers(),
    )
    if response.status_code != 200:
        raise RuntimeError(f"parent token: {response.status_code} {response.text[:300]}")
    return str(response.json()["auth"]["client_token"])


def revocation(tether: Tether, bao: OpenBao, reps: int, rss: dict[str, list[int]]) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {
        "tether_1000_grants": [],
        "tether_1000_grants_100_subtasks": [],
        "openbao_1000_children": [],
    }
    for rep in range(reps):
        runs["tether_1000_grants"].append(asyncio.run(tether_revocation(tether, 1000, 0)))
        runs["tether_1000_grants_100_subtasks"].append(asyncio.run(tether_revocation(tether, 1000, 100)))
        runs["openbao_1000_children"].append(asyncio.run(bao_revocation(bao, 1000)))
        rss["tether"].append(rss_bytes(tether.pid))
        rss["openbao"].append(rss_bytes(bao.pid))
        print(
            f"  B4 rep {rep + 1}: "
            + "  ".join(f"{k} revoke {v[-1]['revoke_ms']:.1f} ms" for k, v in runs.items()),
            flush=True,
        )
    out: dict[str, Any] = {}
    for name, items in runs.items():
        out[name] = {
            "revoke_ms": spread([r["revoke_ms"] for r in items]),
            "until_all_refused_ms": spread([r["until_all_refused_ms"] for r in items]),
            "check_ms": spread([r["check_ms"] for r in items]),
            "items": items[0].get("grants", items[0].get("children")),
            "all_refused_at_first_check": all(r["all_refused_at_first_check"] for r in items),
        }
    return out


# -- B6 --------------------------------------------------------------------------------------


async def audit_cost(tether: Tether, bao: OpenBao, count: int = 200) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60.0) as http:
        owner = tether.agents[0]
        agent = AsyncAgent(tether.addr, owner["id"], owner["key"], http=http)
        grant = await tether_open_and_issue(agent)
        await agent.request("POST", f"/v1/grants/{grant}/activate")
        events0, bytes0 = tether.audit_totals()
        for _ in range(count):
            await agent.request("POST", f"/v1/grants/{grant}/activate")
        events1, bytes1 = tether.audit_totals()
        parent = await _bao_parent(http, bao)
        child = await bao_child(http, bao.addr, parent)
        url = f"{bao.addr}/v1/secret/data/{KV_PATH}"
        await http.get(url, headers={"X-Vault-Token": child})
        lines0, size0 = bao.audit_lines(), bao.audit_bytes()
        for _ in range(count):
            await http.get(url, headers={"X-Vault-Token": child})
        lines1, size1 = bao.audit_lines(), bao.audit_bytes()
    t_events, o_lines = events1 - events0, lines1 - lines0
    return {
        "operation": "activation (Tether reveal) / KV v2 read (OpenBao)",
        "requests": count,
        "tether": {
            "events_per_op": round(t_events / count, 2),
            "bytes_per_event": round((bytes1 - bytes0) / max(1, t_events)),
            "bytes_per_op": round((bytes1 - bytes0) / count),
            "what": "stored audit row: canonical JSON body + 32-byte chain hash (SQLite, excluding indexes)",
        },
        "openbao": {
            "events_per_op": round(o_lines / count, 2),
            "bytes_per_event": round((size1 - size0) / max(1, o_lines)),
            "bytes_per_op": round((size1 - size0) / count),
            "what": "file audit device: one JSON line for the request, one for the response",
        },
    }


# -- profile ---------------------------------------------------------------------------------


def profile(tether: Tether, bao: OpenBao, parents: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """py-spy samples the Tether server during a 16-concurrent activation run (not a measured run)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {"skipped": "py-spy is not installed (requirements/bench.lock)"}
    out = Path(tempfile.mkdtemp(prefix="tether-bench-prof-")) / "activate.txt"
    seconds = max(8, int(args.duration * 2))
    sampler = subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(tether.pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "--duration",
            str(seconds + 4),
            "--output",
            str(out),
            "--nonblocking",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        before = thread_cpu(tether.pid)
        run = measure(
            specs("tether", "activate", tether, parents, procs=args.procs, seconds=seconds), tether.pid
        )
        after = thread_cpu(tether.pid)
        _, err = sampler.communicate(timeout=seconds + 60)
    finally:
        if sampler.poll() is None:
            sampler.terminate()
            sampler.wait(10)
    if not out.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
    report = hot_spots(out.read_text(encoding="utf-8"))
    report["ops_per_second_while_sampled"] = round(run["ops_per_second"], 1)
    cpu: dict[str, float] = {}
    for tid, (name, seconds_used) in after.items():
        cpu[name] = cpu.get(name, 0.0) + seconds_used - before.get(tid, (name, 0.0))[1]
    report["server_cpu_us_per_op_by_thread"] = {
        name: round(used / max(1, run["ops"]) * 1e6)
        for name, used in sorted(cpu.items(), key=lambda kv: -kv[1])
        if used > 0.005
    }
    report["raw_stacks"] = str(out)  # ~1 MB of collapsed stacks: kept out of the repository
    return report


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """CPU seconds per thread of ``pid``: {tid: (name, seconds)}, from /proc/<pid>/task/*/stat."""
    out: dict[str, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except FileNotFoundError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        name = "main (event loop)" if tid == str(pid) else "other threads (aiosqlite, AnyIO)"
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return out


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module path:line)``, shortened at site-packages/src."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/src/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def _strip_line(frame: str) -> str:
    head, _, _ = frame.rpartition(":")
    return head + ")" if head else frame


def hot_spots(raw: str, top: int = 20) -> dict[str, Any]:
    """Sample shares per function (lines merged) from py-spy's collapsed stacks (``--threads``).

    Shares are of the event-loop thread's samples (MainThread: where requests are handled);
    the other threads (aiosqlite connection threads, AnyIO workers) are listed by share only.
    """
    threads: Counter[str] = Counter()
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, *rest = stack.split(";")
        thread = head.split(": ", 1)[-1]
        threads[thread.split(" (")[0] if "Thread-" in thread else thread] += count
        if thread != "MainThread" or not rest:
            continue
        total += count
        frames = [_frame_name(_strip_line(f)) for f in rest if f]
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count

    def share(counter: Counter[str], predicate: Any = None) -> list[dict[str, Any]]:
        rows = [(n, c) for n, c in counter.most_common() if predicate is None or predicate(n)]
        return [{"function": n, "percent": round(100 * c / max(1, total), 1)} for n, c in rows[:top]]

    everything = sum(threads.values())
    return {
        "samples_main_thread": total,
        "threads_percent": {k: round(100 * v / max(1, everything), 1) for k, v in threads.most_common(8)},
        "self": share(self_counts),
        "inclusive_tether": share(incl_counts, lambda n: "tether/" in n and "cli/" not in n),
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="concurrent runs per measure and server")
    parser.add_argument("--b4-reps", type=int, default=2, help="revocation runs per case")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per concurrent run")
    parser.add_argument("--procs", type=int, default=4, help="client processes for the 16 concurrent clients")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the Tether server under activation load"
    )
    parser.add_argument(
        "--sqlite-synchronous",
        choices=("normal", "full"),
        default="normal",
        help="Tether's durability: normal (default) matches OpenBao's file audit device, which writes "
        "without fsync; full fsyncs every commit",
    )
    args = parser.parse_args(argv)
    if CONCURRENCY % args.procs:
        parser.error(f"--procs must divide {CONCURRENCY}")
    started = time.perf_counter()
    value = "bench-" + secrets.token_urlsafe(24)
    rss: dict[str, list[int]] = {"tether": [], "openbao": []}
    results_path = RESULTS if args.sqlite_synchronous == "normal" else RESULTS.with_name("openbao-full.json")
    with OpenBao() as bao, Tether(args.sqlite_synchronous) as tether:
        print(
            f"side by side: Tether pid {tether.pid} at {tether.addr}; "
            f"{bao.version} pid {bao.pid} at {bao.addr}",
            flush=True,
        )
        tether.seed(value, agents=args.procs)
        with httpx.Client(timeout=30) as http:
            http.post(
                f"{bao.addr}/v1/secret/data/{KV_PATH}", json={"data": {"value": value}}, headers=bao.headers()
            )
            parents = []
            for _ in range(args.procs):
                r = http.post(
                    f"{bao.addr}/v1/auth/token/create",
                    json={"policies": [PARENT_POLICY, "bench-read"], "ttl": "4h", "no_default_policy": True},
                    headers=bao.headers(),
                )
                parents.append(r.json()["auth"]["client_token"])
        rss["tether"].append(rss_bytes(tether.pid))
        rss["openbao"].append(rss_bytes(bao.pid))
        results: dict[str, Any] = {
            "benchmark": "Tether vs OpenBao, side by side (issue 8)",
            "machine": machine(bao.version),
            "config": {
                "reps": args.reps,
                "b4_reps": args.b4_reps,
                "concurrent_seconds": args.duration,
                "client_processes": args.procs,
                "concurrency": CONCURRENCY,
                "sequential_ops": SEQUENTIAL_COUNT,
                "tether": f"tether server ({_workers_note()}), SQLite WAL with "
                f"sqlite_synchronous={args.sqlite_synchronous}, hash-chained audit in the store, "
                "DPoP on every agent request, example policy set",
                "openbao": "bao server, raft storage, file audit device, KV v2, service tokens, "
                "TLS off on loopback",
            },
        }
        results |= throughput(tether, bao, parents, args, rss)
        results["B4_revocation"] = revocation(tether, bao, args.b4_reps, rss)
        results["B6_audit"] = asyncio.run(audit_cost(tether, bao))
        results["rss"] = {
            "tether": {"peak_bytes": max(rss["tether"]), "final_bytes": rss["tether"][-1], **tether.counts()},
            "openbao": {"peak_bytes": max(rss["openbao"]), "final_bytes": rss["openbao"][-1]},
        }
        if args.profile:
            results["profile_tether_activation"] = profile(tether, bao, parents, args)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    for section in results.values():
        _drop_samples(section)
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {results_path} in {results['wall_seconds']} s", flush=True)
    return results


def _workers_note() -> str:
    from bench.openbao.tether_server import server_has_workers_flag

    return "default workers: one per core" if server_has_workers_flag() else "one process"


def _drop_samples(value: Any) -> None:
    if isinstance(value, dict):
        value.pop("samples_ns", None)
        for item in value.values():
            _drop_samples(item)
    elif isinstance(value, list):
        for item in value:
            _drop_samples(item)
