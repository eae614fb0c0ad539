"""Issue 13's fair benchmark: a light load generator, server CPU per operation from /proc.

Run: ``python -m bench.light [--quick] [--only GROUPS] [--seconds S] [--reps N] [--profile]``.
Writes bench/results/light.json (``--quick`` writes light-quick.json, so a development run never
overwrites the full one). See bench/README.md for what each group measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.light import pools
from bench.light.generator import GeneratorError, Load, raw_request, run_load, write_pool, wrk_path
from bench.light.profile import profile_activation
from bench.openbao.procs import free_port, stop, wait_for_port
from bench.openbao.server import KV_PATH, BaoMissingError, OpenBao
from bench.openbao.tether_server import Tether, server_has_workers_flag
from tether.config import default_workers

RESULTS = Path(__file__).resolve().parents[1] / "results"
CONCURRENCY = 16
SLOTS = 16  # grants (activation) / tasks (fallback issuance) / tokens (OpenBao) rotated over
PG_DSN = os.environ.get("TETHER_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
GROUPS = (
    "generators",
    "openbao",
    "sqlite-normal",
    "sqlite-full",
    "egress",
    "pg",
    "decision",
    "profile",
    "profile-egress",
    "profile-issue",
)
QUICK_GROUPS = ("sqlite-normal", "egress", "decision")
BAO_NUM_USES = 10_000_000  # never runs out: a token's uses are counted, not exhausted


@dataclass
class Options:
    seconds: float
    reps: int
    generator: str
    threads: int
    max_rate: int
    workers: int | None
    groups: tuple[str, ...]
    policy_iterations: int
    quick: bool


class Pools:
    """Temporary pool files of one run."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tether-bench-pool-"))
        self.n = 0

    def write(self, requests: list[bytes], threads: int) -> Path:
        self.n += 1
        prefix = self.dir / f"pool{self.n}"
        write_pool(prefix, requests, threads)
        return prefix

    def clear(self) -> None:
        for path in self.dir.iterdir():
            path.unlink()


def _pool_size(opts: Options, last_rate: float | None, share: int = 1) -> int:
    """Requests to pre-sign for one run: twice the last measured rate (or ``--max-rate`` first),
    never fewer than a few per connection."""
    rate = 2 * last_rate + 200 if last_rate else opts.max_rate
    return max(CONCURRENCY * 8, int(rate * opts.seconds / share) + CONCURRENCY * 4)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median (and min-max) over reps; errors summed; every run kept."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "no runs", "runs": runs}

    def med(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return round(statistics.median(values), 1) if values else None

    rates = [r["ops_per_second"] for r in ok]
    return {
        "ops_per_second": med("ops_per_second"),
        "ops_per_second_min": min(rates),
        "ops_per_second_max": max(rates),
        "server_cpu_us_per_op": med("server_cpu_us_per_op"),
        "server_cpu_cores": med("server_cpu_cores"),
        "generator_cpu_us_per_request": med("generator_cpu_us_per_request"),
        "generator_cpu_cores": med("generator_cpu_cores"),
        "p50_us": round(statistics.median(r["latency_us"]["p50"] for r in ok), 1),
        "p99_us": round(statistics.median(r["latency_us"]["p99"] for r in ok), 1),
        "status_errors": sum(r["status_errors"] for r in ok),
        "socket_errors": sum(r["socket_errors"] for r in ok),
        "pool_exhausted": any(r["pool_exhausted"] for r in ok),
        "reps": len(ok),
        "runs": runs,
    }


def _print(label: str, run: dict[str, Any]) -> None:
    if "error" in run:
        print(f"  {label:34} ERROR {run['error'][:200]}", flush=True)
        return
    flags = []
    if run["status_errors"] or run["socket_errors"]:
        flags.append(f"errors {run['status_errors']}+{run['socket_errors']}")
    if run["pool_exhausted"]:
        flags.append("POOL EXHAUSTED (raise --max-rate)")
    cpu = run["server_cpu_us_per_op"]
    print(
        f"  {label:34} {run['ops_per_second']:9.1f} ops/s  server {cpu if cpu is not None else '-':>8} "
        f"µs CPU/op ({run['server_cpu_cores']} cores)  generator {run['generator_cpu_us_per_request']} "
        f"µs/req  p50 {run['latency_us']['p50'] / 1000:.2f} ms  {' '.join(flags)}",
        flush=True,
    )


def _guarded(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A failed measure is reported as such; the rest of the run goes on."""
    try:
        run = fn()
    except (GeneratorError, RuntimeError, OSError, httpx.HTTPError) as exc:
        run = {"error": f"{type(exc).__name__}: {exc}"[:600]}
    _print(label, run)
    return run


# -- Tether deployments -------------------------------------------------------------------------


@dataclass
class Deployment:
    """One or more Tether nodes sharing a store, seeded, each with its callers and grants."""

    name: str
    nodes: list[Tether]
    callers: list[list[pools.Caller]]
    grants: list[list[tuple[pools.Caller, str]]]
    tasks: list[list[tuple[pools.Caller, str]]]
    one_request_issuance: bool
    pg_schema: str | None = None

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]


def start_deployment(
    name: str,
    opts: Options,
    *,
    synchronous: str = "normal",
    pg: bool = False,
    nodes: int = 1,
    upstream: str = "",
) -> Deployment:
    schema = f"bench_{secrets.token_hex(6)}" if pg else None
    started: list[Tether] = []
    try:
        first = Tether(
            synchronous,
            workers=opts.workers,
            database_url=PG_DSN if pg else None,
            pg_schema=schema,
            node_id="node-1",
        )
        started.append(first.start())
        for i in range(1, nodes):
            started.append(
                Tether(synchronous, workers=opts.workers, node_id=f"node-{i + 1}", join=first).start()
            )
        value = "bench-" + secrets.token_urlsafe(24)
        first.seed(value, agents=4, destination_url=upstream or "http://127.0.0.1:9/github")
        for node in started[1:]:
            node.agents = first.agents
        all_callers, all_grants, all_tasks = [], [], []
        with httpx.Client(timeout=60) as http:
            for node in started:
                cs = pools.callers(node, http)
                mode = "inject" if upstream else "reveal"
                opened = [pools.open_with_grant(cs[i % len(cs)], "reveal") for i in range(SLOTS)]
                all_grants.append([(cs[i % len(cs)], g) for i, (_, g) in enumerate(opened)])
                if upstream:  # the egress measure needs inject grants on their own tasks
                    injected = [pools.open_with_grant(cs[i % len(cs)], mode) for i in range(len(cs))]
                    all_tasks.append([(cs[i], t) for i, (t, _) in enumerate(injected)])
                else:
                    all_tasks.append([(cs[i % len(cs)], t) for i, (t, _) in enumerate(opened)])
                all_callers.append(cs)
            one = pools.issue_in_one_request(all_callers[0][0])
    except BaseException:
        for node in started:
            node.close()
        if schema:
            drop_schema(schema)
        raise
    return Deployment(name, started, all_callers, all_grants, all_tasks, one, schema)


def stop_deployment(dep: Deployment) -> None:
    for node in reversed(dep.nodes):
        node.close()
    if dep.pg_schema:
        drop_schema(dep.pg_schema)


def drop_schema(schema: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _tether_run(
    dep: Deployment,
    opts: Options,
    files: Pools,
    build: Callable[[int, int], list[bytes]],
    last: float | None,
    connections: int = CONCURRENCY,
) -> dict[str, Any]:
    """One run on every node of ``dep`` at once: ``build(node_index, count)`` makes that node's pool."""
    share = len(dep.nodes)
    loads = []
    for i, node in enumerate(dep.nodes):
        requests = build(i, _pool_size(opts, last, share))
        loads.append(Load(node.addr, files.write(requests, opts.threads), connections // share, once=True))
    try:
        return run_load(loads, dep.pids, opts.seconds, generator=opts.generator, threads=opts.threads)
    finally:
        files.clear()


def tether_activate(dep: Deployment, opts: Options, files: Pools, last: float | None) -> dict[str, Any]:
    return _tether_run(dep, opts, files, lambda i, n: pools.activation_pool(dep.grants[i], n), last)


def tether_issue(dep: Deployment, opts: Options, files: Pools, last: float | None) -> dict[str, Any]:
    """Issuance of a task with its grant: one request when the server takes ``grants: [...]``,
    else the two requests measured one after the other and combined (labelled so)."""
    if dep.one_request_issuance:
        run = _tether_run(dep, opts, files, lambda i, n: pools.issuance_pool(dep.callers[i], n), last)
        return run | {"requests_per_issuance": 1}
    opened = _tether_run(dep, opts, files, lambda i, n: pools.open_task_pool(dep.callers[i], n), last)
    granted = _tether_run(dep, opts, files, lambda i, n: pools.grant_pool(dep.tasks[i], n), last)
    return combine(opened, granted)


def combine(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two requests per operation, measured apart: rates combine harmonically, CPU adds."""
    out = dict(first)
    rate = (
        1 / (1 / first["ops_per_second"] + 1 / second["ops_per_second"]) if first["ops_per_second"] else 0.0
    )
    out |= {
        "requests_per_issuance": 2,
        "ops_per_second": round(rate, 1),
        "server_cpu_us_per_op": (
            round(first["server_cpu_us_per_op"] + second["server_cpu_us_per_op"], 1)
            if first["server_cpu_us_per_op"] and second["server_cpu_us_per_op"]
            else None
        ),
        "generator_cpu_us_per_request": round(
            (first["generator_cpu_seconds"] + second["generator_cpu_seconds"])
            / max(1, first["requests"] + second["requests"])
            * 1e6,
            1,
        ),
        "latency_us": {k: first["latency_us"][k] + second["latency_us"][k] for k in first["latency_us"]},
        "status_errors": first["status_errors"] + second["status_errors"],
        "socket_errors": first["socket_errors"] + second["socket_errors"],
        "pool_exhausted": first["pool_exhausted"] or second["pool_exhausted"],
        "parts": {"open_task": first, "issue_grant": second},
    }
    return out


def tether_measures(dep: Deployment, opts: Options, files: Pools) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op, fn in (("activate", tether_activate), ("issue", tether_issue)):
        runs: list[dict[str, Any]] = []
        for rep in range(opts.reps):
            last = runs[-1].get("ops_per_second") if runs and "error" not in runs[-1] else None
            runs.append(
                _guarded(
                    f"{dep.name} {op} rep {rep + 1}", lambda fn=fn, last=last: fn(dep, opts, files, last)
                )
            )
        out[op] = summarise(runs)
    out["issue"]["one_request"] = dep.one_request_issuance
    return out


def egress(dep: Deployment, opts: Options, files: Pools, upstream_url: str, path: str) -> dict[str, Any]:
    """Sequential (one connection) p50: the upstream called directly, then through /v1/egress."""
    host = upstream_url.split("//", 1)[1]
    direct_pool = files.write([raw_request("GET", host, f"/api{path}")], 1)
    direct = _guarded(
        f"{dep.name} egress direct",
        lambda: run_load(
            [Load(upstream_url, direct_pool, 1, once=False)], [], opts.seconds, generator=opts.generator
        ),
    )
    through = _guarded(
        f"{dep.name} egress via Tether",
        lambda: _tether_run(dep, opts, files, lambda i, n: pools.egress_pool(dep.tasks[i], n, path), None, 1),
    )
    files.clear()
    added = None
    if "error" not in direct and "error" not in through:
        added = through["latency_us"]["p50"] - direct["latency_us"]["p50"]
    return {"direct": direct, "egress": through, "added_p50_us": added}


# -- OpenBao -----------------------------------------------------------------------------------


def openbao_measures(bao: OpenBao, opts: Options, files: Pools, reps: list[int]) -> dict[str, Any]:
    """One rep of each OpenBao measure (called once per rep, alternating with Tether's)."""
    out: dict[str, Any] = {}
    plain = pools.bao_read_pool(bao, pools.bao_tokens(bao, SLOTS))
    counted = pools.bao_read_pool(bao, pools.bao_tokens(bao, SLOTS, num_uses=BAO_NUM_USES))
    create = pools.bao_create_pool(bao, pools.bao_parents(bao, SLOTS))
    for name, requests in (("kv_read", plain), ("kv_read_counted", counted), ("token_create", create)):
        prefix = files.write(requests, opts.threads)
        out[name] = _guarded(
            f"openbao {name} rep {reps[0]}",
            lambda prefix=prefix: run_load(
                [Load(bao.addr, prefix, CONCURRENCY, once=False)],
                [bao.pid],
                opts.seconds,
                generator=opts.generator,
                threads=opts.threads,
            ),
        )
        files.clear()
    return out


# -- the generators themselves --------------------------------------------------------------------


def generators(opts: Options, files: Pools, upstream_url: str) -> dict[str, Any]:
    """Both generators against the same static loopback upstream: each one's CPU per request."""
    host = upstream_url.split("//", 1)[1]
    out: dict[str, Any] = {}
    for name in ("wrk", "asyncio"):
        if name == "wrk" and wrk_path() is None:
            out[name] = {"error": "wrk is not installed"}
            continue
        prefix = files.write([raw_request("GET", host, "/api/items/1")] * 64, 1)
        out[name] = _guarded(
            f"generator {name} (static upstream)",
            lambda prefix=prefix, name=name: run_load(
                [Load(upstream_url, prefix, CONCURRENCY, once=False)],
                [],
                min(opts.seconds, 4),
                generator=name,
            ),
        )
        files.clear()
    return out


def start_upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.light.upstream", str(port)], cwd=Path(__file__).resolve().parents[2]
    )
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


# -- decision -----------------------------------------------------------------------------------


def decision(iterations: int) -> dict[str, Any]:
    """policy_bench at 1,000 policies (the broker's path) and cedarpy's floor per call."""
    from bench.policy_bench import cedar_floor
    from bench.policy_bench import run as policy_run

    row = policy_run(1000, iterations)
    floor = cedar_floor(iterations)
    print(
        f"  decision p50 at 1000 policies {row['latency']['activate allow']['p50_us']} µs; "
        f"cedarpy floor (1 policy, is_authorized) p50 {floor['p50_us']} µs",
        flush=True,
    )
    return {"policies_1000": row, "cedarpy_floor": floor}


# -- main ---------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"3 s, 1 rep, groups {','.join(QUICK_GROUPS)}")
    parser.add_argument("--only", help=f"comma-separated groups of {','.join(GROUPS)}")
    parser.add_argument("--seconds", type=float, help="seconds per run (default 10, quick 3)")
    parser.add_argument("--reps", type=int, help="runs per measure (default 3, quick 1)")
    parser.add_argument("--generator", choices=("wrk", "asyncio"), default="wrk")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1 drives 16 connections)")
    parser.add_argument(
        "--max-rate", type=int, default=4000, help="requests/s a first run's pool is sized for"
    )
    parser.add_argument("--workers", type=int, help="tether server --workers (default: the cores)")
    parser.add_argument("--profile", action="store_true", help="add the profile group")
    args = parser.parse_args(argv)
    groups = tuple(args.only.split(",")) if args.only else (QUICK_GROUPS if args.quick else GROUPS)
    if args.profile and "profile" not in groups:
        groups = (*groups, "profile")
    unknown = set(groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    if args.generator == "wrk" and wrk_path() is None:
        parser.error(
            "wrk is not installed: apt-get install -y wrk (as root or with sudo), or --generator asyncio"
        )
    return Options(
        seconds=args.seconds or (3.0 if args.quick else 10.0),
        reps=args.reps or (1 if args.quick else 3),
        generator=args.generator,
        threads=args.threads,
        max_rate=args.max_rate,
        workers=args.workers or default_workers(),  # tether server's default
        groups=groups,
        policy_iterations=1000 if args.quick else 5000,
        quick=args.quick,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse(argv)
    quick = opts.quick
    from bench.openbao.run import machine

    started = time.perf_counter()
    files = Pools()
    upstream, upstream_url = start_upstream()
    results: dict[str, Any] = {
        "benchmark": "issue 13: light load generator, server CPU per operation",
        "config": {
            "seconds": opts.seconds,
            "reps": opts.reps,
            "generator": opts.generator,
            "wrk_threads": opts.threads,
            "concurrency": CONCURRENCY,
            "workers": opts.workers if server_has_workers_flag() else None,
            "workers_note": (
                f"tether server --workers {opts.workers}"
                if server_has_workers_flag()
                else "tether server has no --workers yet: one process"
            ),
            "groups": list(opts.groups),
            "quick": quick,
        },
        "tether": {},
    }
    bao_version = "OpenBao not run"
    try:
        if "decision" in opts.groups:
            # First, on a quiet machine: no server, upstream load or PostgreSQL work behind it.
            print("decision", flush=True)
            results["decision"] = decision(opts.policy_iterations)
        if "generators" in opts.groups:
            print("generators: CPU per request against a static loopback upstream", flush=True)
            results["generators"] = generators(opts, files, upstream_url)
        want_bao = "openbao" in opts.groups
        bao: OpenBao | None = None
        if want_bao:
            try:
                bao = OpenBao().start()
                bao_version = bao.version
                with httpx.Client(timeout=30) as http:
                    http.post(
                        f"{bao.addr}/v1/secret/data/{KV_PATH}",
                        json={"data": {"value": "bench-" + secrets.token_urlsafe(24)}},
                        headers=bao.headers(),
                    )
            except BaoMissingError as exc:
                results["openbao"] = {"error": str(exc)}
                bao = None
        try:
            if (
                "sqlite-normal" in opts.groups
                or "profile" in opts.groups
                or "profile-egress" in opts.groups
                or "egress" in opts.groups
                or "profile-issue" in opts.groups
                or bao is not None
            ):
                print(
                    "Tether sqlite_synchronous=normal" + (" and OpenBao, alternating" if bao else ""),
                    flush=True,
                )
                dep = start_deployment("sqlite-normal", opts, synchronous="normal", upstream=upstream_url)
                try:
                    bao_runs: dict[str, list[dict[str, Any]]] = {}
                    tether_runs: dict[str, list[dict[str, Any]]] = {"activate": [], "issue": []}
                    for rep in range(opts.reps):
                        if bao is not None:
                            for name, run in openbao_measures(bao, opts, files, [rep + 1]).items():
                                bao_runs.setdefault(name, []).append(run)
                        if "sqlite-normal" in opts.groups:
                            for op, fn in (("activate", tether_activate), ("issue", tether_issue)):
                                prev = tether_runs[op]
                                last = (
                                    prev[-1].get("ops_per_second")
                                    if prev and "error" not in prev[-1]
                                    else None
                                )
                                prev.append(
                                    _guarded(
                                        f"sqlite-normal {op} rep {rep + 1}",
                                        lambda fn=fn, last=last: fn(dep, opts, files, last),
                                    )
                                )
                    if bao is not None:
                        results["openbao"] = {name: summarise(runs) for name, runs in bao_runs.items()}
                    if "sqlite-normal" in opts.groups:
                        section = {op: summarise(runs) for op, runs in tether_runs.items()}
                        section["issue"]["one_request"] = dep.one_request_issuance
                        results["tether"]["sqlite-normal"] = section
                    if "egress" in opts.groups:
                        results["tether"].setdefault("sqlite-normal", {})["egress"] = egress(
                            dep, opts, files, upstream_url, "/items/1"
                        )
                    if "profile" in opts.groups:
                        results["profile"] = profile_activation(
                            dep.pids[0], lambda: tether_activate(dep, opts, files, None), opts
                        )
                    if "profile-issue" in opts.groups:
                        results["profile_issue"] = profile_activation(
                            dep.pids[0], lambda: tether_issue(dep, opts, files, None), opts, name="issue"
                        )
                    if "profile-egress" in opts.groups:
                        results["profile_egress"] = profile_activation(
                            dep.pids[0],
                            lambda: _tether_run(
                                dep,
                                opts,
                                files,
                                lambda i, n: pools.egress_pool(dep.tasks[i], n, "/items/1"),
                                None,
                            ),
                            opts,
                            name="egress",
                        )
                finally:
                    stop_deployment(dep)
        finally:
            if bao is not None:
                bao.close()
        if "sqlite-full" in opts.groups:
            print("Tether sqlite_synchronous=full", flush=True)
            dep = start_deployment("sqlite-full", opts, synchronous="full", upstream=upstream_url)
            try:
                section = tether_measures(dep, opts, files)
                if "egress" in opts.groups:
                    section["egress"] = egress(dep, opts, files, upstream_url, "/items/1")
                results["tether"]["sqlite-full"] = section
            finally:
                stop_deployment(dep)
        if "pg" in opts.groups:
            if not pg_available():
                results["tether"]["pg"] = {"error": f"PostgreSQL not reachable at {PG_DSN}"}
            for nodes in (1, 2) if pg_available() else ():
                name = f"pg-{nodes}-node{'s' if nodes > 1 else ''}"
                print(f"Tether on PostgreSQL, {nodes} node(s)", flush=True)
                try:
                    dep = start_deployment(name, opts, pg=True, nodes=nodes)
                except RuntimeError as exc:
                    results["tether"][name] = {"error": str(exc)[:600]}
                    print(f"  {name} ERROR {exc}", flush=True)
                    continue
                try:
                    results["tether"][name] = tether_measures(dep, opts, files)
                finally:
                    stop_deployment(dep)
    finally:
        stop(upstream)
        files.clear()
        files.dir.rmdir()
    results["machine"] = machine(bao_version)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    out = RESULTS / ("light-quick.json" if quick else "light.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} in {results['wall_seconds']} s", flush=True)
    from bench.light.report import done_means, verdict

    print("Done means (issue 13), from this run only:")
    for row in done_means(results):
        print(f"  {verdict(row):12} {row['target']}: {row['figure']}")
    return results
