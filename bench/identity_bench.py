"""Agent identity benchmark: tokens issued per second, per-request authentication cost.

Run: ``python -m bench.identity_bench [--tokens N] [--requests N]``. A real node (``Broker``) on
SQLite (WAL, synchronous=FULL, a fresh file in a temporary directory), in process: the service
layer called directly, and the HTTP API through ``httpx.ASGITransport`` (no sockets, no server).
Prints a table and writes bench/results/identity.json.

- tokens/s: ``client_credentials`` grants, each with an RFC 7523 assertion and a DPoP proof
  built by the SDK's ``Signer``. Assertions and proofs are signed BEFORE the timed region, so
  the figure is the server's cost; the client's signing cost is reported on its own line.
  Sequential (one request awaited after another) and 16 concurrent tasks, 16 agents.
  Each grant verifies the proof and the assertion, writes two replay records (assertion jti,
  proof jti), signs the token and records an ``auth.token`` audit event: three durable writes.
- authenticate: ``AuthService.authenticate`` per request (token + proof + replay write + agent
  read), p50/p99 over ``--requests`` calls with proofs signed beforehand; then each step alone:
  ``verify_access_token``, ``verify_dpop_proof``, ``storage.remember_jti``, ``storage.get_agent``.
- whoami: ``GET /v1/auth/whoami`` end to end through the ASGI app (routing, dependency,
  authenticate, JSON response), p50/p99 sequential, and requests/s at 16 concurrent.

A benchmark measures and reports; it asserts nothing. Requests that fail are counted and shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from tether.api import create_app
from tether.broker import Broker
from tether.broker.auth import ASSERTION_TYPE
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.domain.agents import AgentAttributes
from tether.domain.operators import OperatorRecord
from tether.identity.dpop import verify_dpop_proof
from tether.identity.signing import load_or_create_token_keys
from tether.identity.tokens import verify_access_token
from tether.sdk._signer import Signer

RESULTS = Path(__file__).parent / "results" / "identity.json"
CONCURRENCY = 16
BASE = "http://tether.test"
TOKEN_URL = BASE + "/v1/auth/token"
WHOAMI_URL = BASE + "/v1/auth/whoami"
# Assertions and proofs are signed before a timed run; they must still be valid when used
# (assertions live at most 300 s, proofs are accepted for 300 s after iat).
ASSERTION_LIFETIME_SECONDS = 280


def percentile(samples_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    rank = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return round(ordered[rank] / 1000, 1)


def summary(samples_ns: list[int]) -> dict[str, float]:
    return {
        "p50_us": percentile(samples_ns, 0.50),
        "p99_us": percentile(samples_ns, 0.99),
        "mean_us": round(sum(samples_ns) / len(samples_ns) / 1000, 1),
    }


class Agents:
    """Registered agents, each with the SDK's signer for its key."""

    def __init__(self, broker: Broker, admin: OperatorRecord) -> None:
        self.broker = broker
        self.admin = admin
        self.ids: list[str] = []
        self.signers: list[Signer] = []

    async def register(self, count: int) -> None:
        for i in range(count):
            private = generate_private_jwk("Ed25519")
            signer = Signer(private)
            record = await self.broker.agents.register(
                self.admin,
                f"bench-{i:02d}",
                dict(signer.public_key.jwk),
                AgentAttributes(team="bench", environment="test", labels=frozenset({"bench"})),
            )
            self.ids.append(record.id)
            self.signers.append(signer)

    def token_request(self, i: int) -> tuple[dict[str, str], str]:
        """(form, DPoP proof) for a client_credentials grant of agent ``i % count``."""
        k = i % len(self.ids)
        now = int(time.time())
        signer = self.signers[k]
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signer.client_assertion(
                self.ids[k], TOKEN_URL, now, lifetime_seconds=ASSERTION_LIFETIME_SECONDS
            ),
        }
        return form, signer.proof("POST", TOKEN_URL, now)


async def timed_runs(
    calls: list[Callable[[], Awaitable[bool]]], concurrency: int
) -> tuple[float, list[int], int]:
    """Run ``calls`` with ``concurrency`` workers: (elapsed seconds, per-call ns, failures)."""
    samples: list[int] = []
    failures = 0
    queue = iter(calls)

    async def worker() -> None:
        nonlocal failures
        for call in queue:
            start = time.perf_counter_ns()
            ok = await call()
            samples.append(time.perf_counter_ns() - start)
            failures += not ok

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, samples, failures


async def bench_tokens(broker: Broker, agents: Agents, http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    # Client side: what the SDK spends signing one grant (assertion + proof).
    start = time.perf_counter_ns()
    for i in range(n):
        agents.token_request(i)
    client_us = (time.perf_counter_ns() - start) / n / 1000

    figures: dict[str, Any] = {"client_signing_us_per_grant": round(client_us, 1)}

    def service_call(form: dict[str, str], proof: str) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            await broker.auth.issue_token(form, proof, TOKEN_URL)
            return True

        return call

    def http_call(form: dict[str, str], proof: str) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            response = await http.post("/v1/auth/token", data=form, headers={"DPoP": proof})
            return response.status_code == 200

        return call

    for layer, make in (("service", service_call), ("asgi", http_call)):
        for concurrency in (1, CONCURRENCY):
            requests = [agents.token_request(i) for i in range(n)]
            elapsed, samples, failures = await timed_runs(
                [make(form, proof) for form, proof in requests], concurrency
            )
            label = "sequential" if concurrency == 1 else f"{concurrency}_concurrent"
            figures[f"{layer}_{label}_tokens_per_s"] = round(n / elapsed)
            figures[f"{layer}_{label}_p50_us"] = percentile(samples, 0.5)
            if failures:
                figures[f"{layer}_{label}_failures"] = failures
    figures["grants_per_run"] = n
    return figures


async def issue(broker: Broker, agents: Agents) -> list[str]:
    """One access token per agent (through the service layer)."""
    tokens = []
    for i in range(len(agents.ids)):
        form, proof = agents.token_request(i)
        tokens.append((await broker.auth.issue_token(form, proof, TOKEN_URL)).token.token)
    return tokens


def request_proofs(agents: Agents, tokens: list[str], n: int) -> list[tuple[int, str]]:
    """``n`` (agent index, GET whoami proof) pairs, signed now."""
    now = int(time.time())
    count = len(tokens)
    return [
        (i % count, agents.signers[i % count].proof("GET", WHOAMI_URL, now, tokens[i % count]))
        for i in range(n)
    ]


async def bench_authenticate(broker: Broker, agents: Agents, n: int) -> dict[str, Any]:
    tokens = await issue(broker, agents)
    auth = broker.auth
    figures: dict[str, Any] = {"requests": n}

    start = time.perf_counter_ns()
    request_proofs(agents, tokens, n)
    figures["client_proof_us_per_request"] = round((time.perf_counter_ns() - start) / n / 1000, 1)

    # warm-up
    for k, proof in request_proofs(agents, tokens, 100):
        await auth.authenticate(f"DPoP {tokens[k]}", proof, "GET", WHOAMI_URL)

    proofs = request_proofs(agents, tokens, n)
    samples = []
    failures = 0
    for k, proof in proofs:
        start = time.perf_counter_ns()
        try:
            await auth.authenticate(f"DPoP {tokens[k]}", proof, "GET", WHOAMI_URL)
        except Exception:  # counted and reported, not asserted
            failures += 1
        samples.append(time.perf_counter_ns() - start)
    figures["authenticate"] = summary(samples)
    if failures:
        figures["authenticate_failures"] = failures

    # The steps alone.
    keys = await load_or_create_token_keys(broker.storage, broker.keys.root_key(), broker.clock.now())
    trust_domain = broker.settings.trust_domain
    samples = []
    for i in range(n):
        token = tokens[i % len(tokens)]
        now = broker.clock.now()
        start = time.perf_counter_ns()
        verify_access_token(token, keys=keys, trust_domain=trust_domain, now=now)
        samples.append(time.perf_counter_ns() - start)
    figures["verify_access_token"] = summary(samples)

    jkts = [
        verify_access_token(t, keys=keys, trust_domain=trust_domain, now=broker.clock.now()).jkt
        for t in tokens
    ]
    proofs = request_proofs(agents, tokens, n)
    samples = []
    for k, proof in proofs:
        now = broker.clock.now()
        start = time.perf_counter_ns()
        verify_dpop_proof(
            proof, method="GET", url=WHOAMI_URL, now=now, access_token=tokens[k], expected_jkt=jkts[k]
        )
        samples.append(time.perf_counter_ns() - start)
    figures["verify_dpop_proof"] = summary(samples)

    samples = []
    for _ in range(n):
        key = secrets.token_bytes(32)
        now = broker.clock.now()
        start = time.perf_counter_ns()
        await broker.storage.remember_jti(key, expires_at=now + timedelta(seconds=300), now=now)
        samples.append(time.perf_counter_ns() - start)
    figures["storage_remember_jti"] = summary(samples)

    samples = []
    for i in range(n):
        agent = agents.ids[i % len(agents.ids)]
        start = time.perf_counter_ns()
        await broker.storage.get_agent(agent)
        samples.append(time.perf_counter_ns() - start)
    figures["storage_get_agent"] = summary(samples)
    return figures


async def bench_whoami(broker: Broker, agents: Agents, http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    tokens = await issue(broker, agents)
    figures: dict[str, Any] = {"requests": n}

    def call(k: int, proof: str) -> Callable[[], Awaitable[bool]]:
        headers = {"Authorization": f"DPoP {tokens[k]}", "DPoP": proof}

        async def run() -> bool:
            return (await http.get("/v1/auth/whoami", headers=headers)).status_code == 200

        return run

    await timed_runs([call(k, p) for k, p in request_proofs(agents, tokens, 100)], 1)  # warm-up
    elapsed, samples, failures = await timed_runs(
        [call(k, p) for k, p in request_proofs(agents, tokens, n)], 1
    )
    figures["sequential"] = summary(samples)
    figures["sequential_requests_per_s"] = round(n / elapsed)
    if failures:
        figures["sequential_failures"] = failures
    elapsed, samples, failures = await timed_runs(
        [call(k, p) for k, p in request_proofs(agents, tokens, n)], CONCURRENCY
    )
    figures[f"{CONCURRENCY}_concurrent_requests_per_s"] = round(n / elapsed)
    figures[f"{CONCURRENCY}_concurrent_p50_us"] = percentile(samples, 0.5)
    if failures:
        figures[f"{CONCURRENCY}_concurrent_failures"] = failures
    return figures


async def run(tokens: int, requests: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))
        broker = Broker.from_settings(settings)
        result = await broker.init()
        try:
            agents = Agents(broker, result.root)
            await agents.register(CONCURRENCY)
            transport = httpx.ASGITransport(app=create_app(broker))
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
                # warm-up: connections, caches, the app's first request
                for i in range(50):
                    form, proof = agents.token_request(i)
                    await broker.auth.issue_token(form, proof, TOKEN_URL)
                    form, proof = agents.token_request(i)
                    await http.post("/v1/auth/token", data=form, headers={"DPoP": proof})
                return {
                    "token_issuance": await bench_tokens(broker, agents, http, tokens),
                    "authentication": await bench_authenticate(broker, agents, requests),
                    "whoami_asgi": await bench_whoami(broker, agents, http, requests),
                }
        finally:
            await broker.close()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def print_table(results: dict[str, Any]) -> None:
    t = results["token_issuance"]
    print(f"token issuance ({t['grants_per_run']} client_credentials grants per run, 16 agents)")
    print(f"  {'':<28}{'sequential':>14}{'16 concurrent':>16}")
    for layer in ("service", "asgi"):
        row = [
            f"{t[f'{layer}_sequential_tokens_per_s']} /s",
            f"{t[f'{layer}_16_concurrent_tokens_per_s']} /s",
        ]
        print(f"  {layer + ' layer':<28}{row[0]:>14}{row[1]:>16}")
    print(f"  client signing (assertion + proof): {t['client_signing_us_per_grant']} µs per grant")
    failed = {k: v for k, v in t.items() if k.endswith("_failures")}
    if failed:
        print(f"  FAILED requests: {failed}")

    a = results["authentication"]
    print(f"\nper-request authentication ({a['requests']} requests, µs)")
    print(f"  {'':<34}{'p50':>9}{'p99':>9}{'mean':>9}")
    for name in (
        "authenticate",
        "verify_access_token",
        "verify_dpop_proof",
        "storage_remember_jti",
        "storage_get_agent",
    ):
        s = a[name]
        print(f"  {name:<34}{s['p50_us']:>9}{s['p99_us']:>9}{s['mean_us']:>9}")
    w = results["whoami_asgi"]
    s = w["sequential"]
    print(f"  {'GET /v1/auth/whoami (ASGI)':<34}{s['p50_us']:>9}{s['p99_us']:>9}{s['mean_us']:>9}")
    print(f"  client proof signing: {a['client_proof_us_per_request']} µs per request")
    print(
        f"  whoami requests/s: {w['sequential_requests_per_s']} sequential, "
        f"{w['16_concurrent_requests_per_s']} at 16 concurrent"
    )
    if "authenticate_failures" in a:
        print(f"  FAILED authentications: {a['authenticate_failures']}")
    print(f"\n{results['setup']}")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000, help="grants per token-issuance run")
    parser.add_argument("--requests", type=int, default=2000, help="requests per authentication run")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    results = await run(max(args.tokens, CONCURRENCY), max(args.requests, 100))
    results["setup"] = (
        f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL, temporary file; in process "
        f"(service layer and httpx.ASGITransport); Ed25519 agent keys"
    )
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "identity",
                "command": " ".join(["python -m bench.identity_bench", *argv]),
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "machine": platform.machine(),
                "processor": platform.processor() or "?",
                "cpu_count": os.cpu_count(),
                "versions": {p: _version(p) for p in ("joserfc", "cryptography", "fastapi", "httpx")},
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
