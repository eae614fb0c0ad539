"""Governed-path benchmark: issuance, activation and revocation (issue 8, B2-B4, Tether side).

Run: ``python -m bench.governed_bench [--issue N] [--activate N] [--grants N]`` (or ``python -m bench
governed``). A real node (``Broker``) on SQLite (WAL, synchronous=FULL, a fresh file in a temporary
directory) with audit on (every decision, issuance, activation and revocation is an event in the
hash chain, durable before the call returns), the example policy set (examples/policies/tether.cedar)
deployed. Prints a table and writes bench/results/governed.json.

- issuance: open a task + issue one ``reveal`` grant (``open_task`` and ``issue`` decided, two
  audit events, two durable writes each), through ``TaskService`` with an ``AgentCaller``
  (no DPoP: the caller is already authenticated). Sequential and 16 concurrent (16 agents).
- activation: ``reveal`` activation of a live grant (store read of grant+task+secret, ``activate``
  decided, use counted atomically, audited, value decrypted), through ``TaskService`` (no DPoP),
  and over HTTP: ``POST /v1/grants/{id}/activate`` through ``httpx.ASGITransport`` with the SDK's
  ``AsyncAgent``, DPoP included (the client signs a proof per request, the server verifies the
  token and proof and records the proof's jti). Sequential and 16 concurrent; ops/s, p50/p99.
- revocation: one task holding N grants; and a delegation tree of 100 sub-tasks (root → 25
  children → 3 grandchildren each) holding N grants in total. Timed from the revoke call until it
  returns (one transaction: every task and grant in it is ended when it commits), then verified by
  activating every grant (each must be refused); the verification is timed separately.

A benchmark measures and reports; it asserts nothing. Failures are counted and shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.identity_bench import _version, summary, timed_runs
from tether.api import create_app
from tether.broker import Broker
from tether.broker.auth import AgentCaller
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.domain.agents import AgentAttributes
from tether.domain.commands import Delegate, IssueGrant, OpenTask
from tether.domain.destinations import Injection, InjectionType
from tether.domain.operators import OperatorRecord
from tether.domain.secrets import SecretMetadata, Sensitivity
from tether.errors import DeniedError
from tether.sdk import AsyncAgent
from tether.sdk._signer import Signer

RESULTS = Path(__file__).parent / "results" / "governed.json"
POLICIES = Path(__file__).resolve().parents[1] / "examples" / "policies" / "tether.cedar"
CONCURRENCY = 16
BASE = "http://tether.test"
SECRET = "bench/github/token"
TASK: dict[str, Any] = {
    "purpose": "deploy",
    "objective": "benchmark",
    "sensitivity": "internal",
    "secrets": [SECRET],
    "destinations": ["github"],
    "ttl_seconds": 3600,
}
GRANT: dict[str, Any] = {"secret": SECRET, "destination": "github", "mode": "reveal"}
# The broker takes typed commands (the API builds them from these bodies).
OPEN = OpenTask(**TASK)
ISSUE = IssueGrant(**GRANT)
ACTIVATE_PATH = "/v1/grants/{}/activate"


class Bench:
    """A node, an admin, and agents with their in-process callers and SDK clients."""

    def __init__(self, broker: Broker, admin: OperatorRecord) -> None:
        self.broker = broker
        self.admin = admin
        self.callers: list[AgentCaller] = []
        self.keys: list[dict[str, str]] = []

    async def seed(self, agents: int) -> None:
        root = self.admin
        await self.broker.policies.deploy(root, POLICIES.read_text(encoding="utf-8"))
        await self.broker.secrets.put(
            root,
            SECRET,
            "bench-token-value",
            SecretMetadata(
                sensitivity=Sensitivity.INTERNAL,
                purposes=frozenset({"deploy"}),
                destinations=frozenset({"github"}),
            ),
        )
        await self.broker.destinations.add(
            root,
            name="github",
            base_url="http://127.0.0.1:9/github",
            secret=SECRET,
            inject=Injection(InjectionType.HEADER, "Authorization", "Bearer {secret}"),
        )
        for i in range(agents):
            private = generate_private_jwk("Ed25519")
            signer = Signer(private)
            record = await self.broker.agents.register(
                root,
                f"bench-gov-{i:02d}",
                dict(signer.public_key.jwk),
                AgentAttributes(
                    team="bench", environment="prod", owner="bench", labels=frozenset({"deploy"})
                ),
            )
            # Grants are bound to the key's thumbprint: the same one a DPoP token carries.
            self.callers.append(AgentCaller(record, signer.public_key.kid))
            self.keys.append(private)

    async def grants(self, n: int) -> list[tuple[int, str]]:
        """``n`` live reveal grants spread over the agents: (agent index, grant id)."""
        tasks = [await self.broker.tasks.open(caller, OPEN) for caller in self.callers]
        out = []
        for i in range(n):
            k = i % len(self.callers)
            grant = await self.broker.tasks.issue(self.callers[k], tasks[k].id, ISSUE)
            out.append((k, grant.id))
        return out


def _figures(n: int, elapsed: float, samples: list[int], failures: int) -> dict[str, Any]:
    out: dict[str, Any] = {"ops_per_s": round(n / elapsed), **summary(samples)}
    if failures:
        out["failures"] = failures
    return out


async def bench_issuance(bench: Bench, n: int) -> dict[str, Any]:
    service = bench.broker.tasks

    def call(i: int) -> Callable[[], Awaitable[bool]]:
        caller = bench.callers[i % len(bench.callers)]

        async def run() -> bool:
            task = await service.open(caller, OPEN)
            await service.issue(caller, task.id, ISSUE)
            return True

        return run

    await timed_runs([call(i) for i in range(50)], 1)  # warm-up
    figures: dict[str, Any] = {"operations": n, "what": "open task + issue grant, TaskService, no DPoP"}
    for concurrency in (1, CONCURRENCY):
        elapsed, samples, failures = await timed_runs([call(i) for i in range(n)], concurrency)
        label = "sequential" if concurrency == 1 else f"{concurrency}_concurrent"
        figures[label] = _figures(n, elapsed, samples, failures)
    return figures


async def bench_activation(bench: Bench, http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    service = bench.broker.tasks
    grants = await bench.grants(len(bench.callers) * 4)

    def service_call(i: int) -> Callable[[], Awaitable[bool]]:
        k, grant_id = grants[i % len(grants)]
        caller = bench.callers[k]
        path = ACTIVATE_PATH.format(grant_id)

        async def run() -> bool:
            activation = await service.activate(caller, grant_id, method="POST", path=path)
            return activation.value is not None

        return run

    sdks = [
        AsyncAgent(BASE, c.agent.id, key, http=http) for c, key in zip(bench.callers, bench.keys, strict=True)
    ]
    for sdk in sdks:  # an access token each, before the timed runs (it lasts minutes)
        await sdk.token()

    def http_call(i: int) -> Callable[[], Awaitable[bool]]:
        k, grant_id = grants[i % len(grants)]
        sdk = sdks[k]
        path = ACTIVATE_PATH.format(grant_id)

        async def run() -> bool:
            return (await sdk.request("POST", path)).status_code == 200

        return run

    figures: dict[str, Any] = {"operations": n}
    for layer, make in (("service", service_call), ("http_dpop", http_call)):
        await timed_runs([make(i) for i in range(100)], 1)  # warm-up
        for concurrency in (1, CONCURRENCY):
            elapsed, samples, failures = await timed_runs([make(i) for i in range(n)], concurrency)
            label = "sequential" if concurrency == 1 else f"{concurrency}_concurrent"
            figures[f"{layer}_{label}"] = _figures(n, elapsed, samples, failures)
    figures["service_what"] = "reveal activation through TaskService.activate (no DPoP authentication)"
    figures["http_dpop_what"] = (
        "POST /v1/grants/{id}/activate via httpx.ASGITransport + SDK AsyncAgent: DPoP proof signed by "
        "the client and verified by the server (token, proof, jti replay record) on every request"
    )
    return figures


async def _verify_refused(bench: Bench, grants: list[tuple[int, str]]) -> tuple[int, float]:
    """Activate every grant; (how many were refused, seconds it took)."""
    refused = 0
    start = time.perf_counter()
    for k, grant_id in grants:
        try:
            await bench.broker.tasks.activate(
                bench.callers[k], grant_id, method="POST", path=ACTIVATE_PATH.format(grant_id)
            )
        except DeniedError:
            refused += 1
    return refused, time.perf_counter() - start


async def bench_revoke_task(bench: Bench, n: int) -> dict[str, Any]:
    service = bench.broker.tasks
    caller = bench.callers[0]
    task = await service.open(caller, OPEN)
    grants = [(0, (await service.issue(caller, task.id, ISSUE)).id) for _ in range(n)]
    before, _ = await _verify_refused(bench, grants[:10])
    start = time.perf_counter()
    ended = await service.revoke_by_operator(bench.admin, task.id, "benchmark")
    revoke_s = time.perf_counter() - start
    refused, verify_s = await _verify_refused(bench, grants)
    return {
        "grants": n,
        "revoke_ms": round(revoke_s * 1000, 2),
        "grants_revoked": ended.grants_revoked,
        "refused_after": refused,
        "refused_before_sample_of_10": before,
        "verify_all_refused_ms": round(verify_s * 1000, 1),
    }


async def bench_revoke_tree(
    bench: Bench, n: int, children: int = 25, grandchildren: int = 3
) -> dict[str, Any]:
    service = bench.broker.tasks
    callers = bench.callers
    root = await service.open(callers[0], OPEN)
    subtasks = []
    for c in range(children):
        k = 1 + c % (len(callers) - 1)
        child = await service.delegate(
            callers[0],
            root.id,
            Delegate(agent=callers[k].agent.id, objective="part", secrets=[SECRET], destinations=["github"]),
        )
        subtasks.append((k, child))
        for g in range(grandchildren):
            j = (k + 1 + g) % len(callers)
            grandchild = await service.delegate(
                callers[k],
                child.id,
                Delegate(
                    agent=callers[j].agent.id, objective="sub-part", secrets=[SECRET], destinations=["github"]
                ),
            )
            subtasks.append((j, grandchild))
    grants = []
    for i in range(n):
        k, task = subtasks[i % len(subtasks)]
        grants.append((k, (await service.issue(callers[k], task.id, ISSUE)).id))
    start = time.perf_counter()
    ended = await service.revoke_by_operator(bench.admin, root.id, "benchmark")
    revoke_s = time.perf_counter() - start
    refused, verify_s = await _verify_refused(bench, grants)
    return {
        "sub_tasks": len(subtasks),
        "shape": f"root -> {children} children -> {grandchildren} grandchildren each (depth 2)",
        "grants": n,
        "revoke_ms": round(revoke_s * 1000, 2),
        "tasks_ended": len(ended.task_ids),
        "grants_revoked": ended.grants_revoked,
        "refused_after": refused,
        "verify_all_refused_ms": round(verify_s * 1000, 1),
    }


async def run(issue_n: int, activate_n: int, grants_n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker.from_settings(Settings(data_dir=Path(tmp)))
        result = await broker.init()
        try:
            bench = Bench(broker, result.root)
            await bench.seed(CONCURRENCY)
            transport = httpx.ASGITransport(app=create_app(broker))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                return {
                    "issuance": await bench_issuance(bench, issue_n),
                    "activation": await bench_activation(bench, http, activate_n),
                    "revoke_task": await bench_revoke_task(bench, grants_n),
                    "revoke_tree": await bench_revoke_tree(bench, grants_n),
                }
        finally:
            await broker.close()


def print_table(results: dict[str, Any]) -> None:
    i = results["issuance"]
    print(f"issuance: open task + issue grant ({i['operations']} per run, TaskService, no DPoP)")
    print(f"  {'':<30}{'ops/s':>9}{'p50 µs':>11}{'p99 µs':>11}")
    for label in ("sequential", "16_concurrent"):
        s = i[label]
        print(f"  {label:<30}{s['ops_per_s']:>9}{s['p50_us']:>11}{s['p99_us']:>11}")
    a = results["activation"]
    print(f"\nactivation: reveal ({a['operations']} per run)")
    print(f"  {'':<30}{'ops/s':>9}{'p50 µs':>11}{'p99 µs':>11}")
    for layer in ("service", "http_dpop"):
        for label in ("sequential", "16_concurrent"):
            s = a[f"{layer}_{label}"]
            print(f"  {layer + ' ' + label:<30}{s['ops_per_s']:>9}{s['p50_us']:>11}{s['p99_us']:>11}")
    for key in ("revoke_task", "revoke_tree"):
        r = results[key]
        where = f"a tree of {r['sub_tasks']} sub-tasks" if key == "revoke_tree" else "one task"
        print(
            f"\nrevocation, {where} holding {r['grants']} grants: revoke call {r['revoke_ms']} ms; "
            f"afterwards {r['refused_after']}/{r['grants']} activations refused "
            f"(checked in {r['verify_all_refused_ms']} ms)"
        )
    failed = {
        f"{k}.{label}": v["failures"]
        for k in ("issuance", "activation")
        for label, v in results[k].items()
        if isinstance(v, dict) and "failures" in v
    }
    if failed:
        print(f"  FAILED operations: {failed}")
    print(f"\n{results['setup']}")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--issue", type=int, default=1000, help="open+issue operations per run")
    parser.add_argument("--activate", type=int, default=2000, help="activations per run")
    parser.add_argument("--grants", type=int, default=1000, help="grants per revocation scenario")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = await run(max(args.issue, CONCURRENCY), max(args.activate, CONCURRENCY), max(args.grants, 1))
    results["setup"] = (
        f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL, temporary file; audit on; example policy "
        f"set; in process (TaskService with AgentCaller, and HTTP via httpx.ASGITransport + SDK with DPoP)"
    )
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "governed",
                "command": " ".join(["python -m bench.governed_bench", *argv]),
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "duration_s": round(time.perf_counter() - started, 1),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "machine": platform.machine(),
                "processor": platform.processor() or "?",
                "cpu_count": os.cpu_count(),
                # Other work on the machine skews every figure: the 1/5/15-minute load at the end.
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "versions": {
                    p: _version(p) for p in ("cedarpy", "sqlalchemy", "aiosqlite", "fastapi", "httpx")
                },
                "concurrency": CONCURRENCY,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    asyncio.run(main())
