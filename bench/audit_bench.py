"""Audit log benchmark: append rate, verify rate, bytes per event.

Run: ``python -m bench.audit_bench [--events N] [--pg-dsn DSN]``. Measures on SQLite (WAL,
synchronous=FULL, a fresh file in a temporary directory) and, with ``--pg-dsn``, on
PostgreSQL in a throwaway schema. Prints a table and writes bench/results/audit.json.

- append, 1 writer: one ``record()`` awaited after another: one transaction per event.
- append, 16 concurrent: 16 tasks each awaiting its own ``record()`` in a loop; group
  commit batches whatever is queued while a transaction is in flight.
- verify: ``verify_store`` over the whole chain (parse, re-encode, hash, link checks).
- bytes/event: stored body (canonical JSON) + 32-byte hash; and one JSON Lines export line.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import secrets
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.audit import (
    Actor,
    AuditKeys,
    AuditLog,
    DecisionSummary,
    Sensitive,
    export_jsonl,
    verify_jsonl,
    verify_store,
)
from tether.clock import SystemClock
from tether.store.base import Storage
from tether.store.postgres import open_postgres
from tether.store.sqlite import open_sqlite

RESULTS = Path(__file__).parent / "results" / "audit.json"
CONCURRENCY = 16


async def record_one(log: AuditLog, i: int) -> None:
    """A typical activation decision: what most events in a busy deployment look like."""
    await log.record(
        "decision",
        Actor.agent("spiffe://acme.test/agent/release-bot"),
        resource="secret:prod/github/token",
        task_id=f"tsk_{i:020d}",
        chain=("tsk_00000000000000000000",),
        decision=DecisionSummary(True, ("allow-release-inject", "restricted-needs-approval"), ()),
        reason="activate",
        request_id=f"req_{i:020d}",
        data={
            "mode": "inject",
            "destination": "github",
            "method": "POST",
            "path": "/repos/acme/app/releases",
            "uses": i % 10,
            "value_fp": Sensitive(f"ghp_{i:036d}"),
        },
    )


def verify_file_rate(text: str, events: int) -> float:
    """Events per second of ``verify_jsonl`` on an export file (what an offline auditor runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.jsonl"
        path.write_text(text, encoding="utf-8")
        start = time.perf_counter()
        result = verify_jsonl(path)
        elapsed = time.perf_counter() - start
    if not result:
        raise SystemExit(f"exported chain does not verify: {result}")
    return events / elapsed


async def bench_store(storage: Storage, *, events: int) -> dict[str, Any]:
    await storage.migrate()
    keys = AuditKeys.generate(datetime.now(UTC))
    log = AuditLog(storage, node_id="bench-1", clock=SystemClock(), keys=keys)
    for i in range(50):  # warm up connections and caches
        await record_one(log, i)

    single = max(events // 4, 100)
    start = time.perf_counter()
    for i in range(single):
        await record_one(log, i)
    single_rate = single / (time.perf_counter() - start)

    per_task = events // CONCURRENCY
    batches_before = log.batches

    async def writer(offset: int) -> None:
        for i in range(per_task):
            await record_one(log, offset + i)

    start = time.perf_counter()
    await asyncio.gather(*(writer(t * per_task) for t in range(CONCURRENCY)))
    concurrent_elapsed = time.perf_counter() - start
    concurrent_rate = per_task * CONCURRENCY / concurrent_elapsed
    mean_batch = per_task * CONCURRENCY / max(log.batches - batches_before, 1)

    start = time.perf_counter()
    result = await verify_store(storage, page=1000)
    verify_elapsed = time.perf_counter() - start
    if not result:
        raise SystemExit(f"benchmark chain does not verify: {result}")

    rows, after = [], 0
    while batch := await storage.read_audit_rows(after_seq=after, limit=5000):
        rows.extend(batch)
        after = batch[-1].seq
    body_bytes = sum(len(r.body.encode()) + len(r.hash) for r in rows) / len(rows)
    export = io.StringIO()
    await export_jsonl(storage, export)
    text = export.getvalue()
    line_bytes = len(text.encode()) / result.checked

    offline_rate = verify_file_rate(text, result.checked)

    return {
        "events_total": result.checked,
        "append_single_writer_events_per_s": round(single_rate),
        "append_16_concurrent_events_per_s": round(concurrent_rate),
        "append_16_concurrent_mean_batch": round(mean_batch, 1),
        "verify_store_events_per_s": round(result.checked / verify_elapsed),
        "verify_jsonl_events_per_s": round(offline_rate),
        "bytes_per_event_body_and_hash": round(body_bytes, 1),
        "bytes_per_event_jsonl_line": round(line_bytes, 1),
    }


async def run_sqlite(events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        storage = open_sqlite(path)
        try:
            figures = await bench_store(storage, events=events)
        finally:
            await storage.close()
        conn = sqlite3.connect(path)
        try:
            # whole-file bytes per event, indexes included (the other tables are empty)
            pages = (
                conn.execute("PRAGMA page_count").fetchone()[0]
                * conn.execute("PRAGMA page_size").fetchone()[0]
            )
        finally:
            conn.close()
        figures["bytes_per_event_on_disk_with_indexes"] = round(pages / figures["events_total"], 1)
    figures["setup"] = f"SQLite {sqlite3.sqlite_version}, WAL, synchronous=FULL, temporary file"
    return figures


async def run_postgres(dsn: str, events: int) -> dict[str, Any]:
    import asyncpg

    schema = "bench_" + secrets.token_hex(4)
    storage = open_postgres(dsn, schema=schema)
    try:
        figures = await bench_store(storage, events=events)
    finally:
        await storage.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()
    figures["setup"] = "PostgreSQL (asyncpg), throwaway schema"
    return figures


def print_table(results: dict[str, dict[str, Any]]) -> None:
    names = list(results)
    rows = sorted({key for figures in results.values() for key in figures if key != "setup"})
    width = max(len(r) for r in rows)
    print(f"{'metric':<{width}}  " + "  ".join(f"{n:>12}" for n in names))
    for row in rows:
        print(f"{row:<{width}}  " + "  ".join(f"{results[n].get(row, ''):>12}" for n in names))
    for name in names:
        print(f"{name}: {results[name]['setup']}")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=8000, help="events for the concurrent run")
    parser.add_argument("--pg-dsn", default=None, help="also measure PostgreSQL at this DSN")
    args = parser.parse_args(argv)
    results = {"sqlite": await run_sqlite(args.events)}
    if args.pg_dsn:
        results["postgresql"] = await run_postgres(args.pg_dsn, args.events)
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "audit",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
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
