"""The audit part of the Storage protocol, and the audit log on it, for every backend.

Runs once per backend through the ``storage`` fixture (SQLite always, PostgreSQL when
``TETHER_TEST_PG_DSN`` is set). Tampering is done with raw SQL behind Tether's back, as
someone with write access to the database would.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import RawStore
from tether.audit import (
    Actor,
    AuditKeys,
    AuditLog,
    Checkpoint,
    DecisionSummary,
    Problem,
    checkpoint_to_json,
    export_jsonl,
    verify_jsonl,
    verify_store,
)
from tether.audit.checkpoint import checkpoint_to_stored
from tether.clock import FrozenClock
from tether.domain.event_records import event_from_body
from tether.domain.events import GENESIS_HASH, Event, EventDraft, event_body_json, seal_event
from tether.errors import ConflictError, StorageError
from tether.store.base import AuditConflictError, AuditCorruptionError, Storage
from tether.store.migrations import head_revision
from tether.store.postgres import open_postgres
from tether.store.sqlite import open_sqlite

AGENT_A = Actor.agent("spiffe://acme.test/agent/a")
AGENT_B = Actor.agent("spiffe://acme.test/agent/b")
ALICE = Actor.operator("alice")


class RawSQL:
    """Run SQL against the backend directly (``?`` placeholders on both backends)."""

    def __init__(self, raw: RawStore) -> None:
        self.raw = raw

    async def execute(self, sql: str, *params: Any) -> None:
        if self.raw.sqlite_path is not None:
            conn = sqlite3.connect(self.raw.sqlite_path)
            try:
                with conn:
                    conn.execute(sql, params)
            finally:
                conn.close()
            return
        conn2 = await asyncpg.connect(self.raw.pg_dsn, server_settings={"search_path": self.raw.pg_schema})
        try:
            await conn2.execute(_pg(sql), *params)
        finally:
            await conn2.close()

    async def fetch(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self.raw.sqlite_path is not None:
            conn = sqlite3.connect(self.raw.sqlite_path)
            try:
                return list(conn.execute(sql, params))
            finally:
                conn.close()
        conn2 = await asyncpg.connect(self.raw.pg_dsn, server_settings={"search_path": self.raw.pg_schema})
        try:
            return [tuple(row) for row in await conn2.fetch(_pg(sql), *params)]
        finally:
            await conn2.close()

    # -- tampering, as an attacker with database access would ---------------------------------
    async def row(self, seq: int) -> tuple[str, bytes]:
        rows = await self.fetch("SELECT body, hash FROM audit_events WHERE seq = ?", seq)
        return rows[0][0], bytes(rows[0][1])

    async def set_body(self, seq: int, body: str, hash_value: bytes | None = None) -> None:
        if hash_value is None:
            await self.execute("UPDATE audit_events SET body = ? WHERE seq = ?", body, seq)
        else:
            await self.execute(
                "UPDATE audit_events SET body = ?, hash = ? WHERE seq = ?", body, hash_value, seq
            )

    async def insert(self, seq: int, event: Event) -> None:
        await self.execute(
            "INSERT INTO audit_events (seq, time_us, kind, actor_id, task_id, resource, allowed, body, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            seq,
            event.time_us,
            event.kind,
            event.actor.id,
            event.task_id,
            event.resource,
            event.allowed,
            event_body_json(event),
            event.hash,
        )

    async def shift_up(self, from_seq: int) -> None:
        # Two steps so that no intermediate state collides on the primary key.
        await self.execute("UPDATE audit_events SET seq = -(seq + 1) WHERE seq >= ?", from_seq)
        await self.execute("UPDATE audit_events SET seq = -seq WHERE seq < 0")

    async def swap(self, a: int, b: int) -> None:
        await self.execute("UPDATE audit_events SET seq = -1 WHERE seq = ?", a)
        await self.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", a, b)
        await self.execute("UPDATE audit_events SET seq = ? WHERE seq = -1", b)


def _pg(sql: str) -> str:
    parts = sql.split("?")
    return "".join(part + (f"${i + 1}" if i < len(parts) - 1 else "") for i, part in enumerate(parts))


@pytest.fixture
def raw_sql(raw_store: RawStore) -> RawSQL:
    return RawSQL(raw_store)


@pytest.fixture
def keys(clock: FrozenClock) -> AuditKeys:
    return AuditKeys.generate(clock.now())


def second_node(raw: RawStore) -> Storage:
    """Another connection pool on the same database: what a second Tether node has."""
    if raw.sqlite_path is not None:
        return open_sqlite(raw.sqlite_path)
    assert raw.pg_dsn is not None
    return open_postgres(raw.pg_dsn, schema=raw.pg_schema)


async def fill(log: AuditLog, clock: FrozenClock, n: int) -> list[Event]:
    events = []
    for i in range(n):
        clock.advance(1)
        events.append(
            await log.record(
                ("decision", "grant.issue", "grant.activate")[i % 3],
                (AGENT_A, AGENT_B)[i % 2],
                resource=f"secret:prod/s{i % 4}",
                task_id=f"task-{i % 3}",
                decision=DecisionSummary(i % 2 == 0, (f"p{i}",), ()),
                reason=f"event {i}",
                data={"i": i},
            )
        )
    return events


def chained(n: int, clock: FrozenClock, start: int = 1, prev: bytes = GENESIS_HASH) -> list[Event]:
    events = []
    for seq in range(start, start + n):
        event = seal_event(
            EventDraft("decision", AGENT_A, data={"seq": seq}),
            seq=seq,
            prev_hash=prev,
            time=clock.now(),
            node_id="node-x",
        )
        events.append(event)
        prev = event.hash
    return events


# -- the storage methods --------------------------------------------------------------------
async def test_append_head_and_read_back(storage: Storage, clock: FrozenClock) -> None:
    assert await storage.audit_head() is None
    assert await storage.read_audit_events(limit=10) == []
    events = chained(5, clock)
    await storage.append_audit_events(events[:2])
    await storage.append_audit_events(events[2:])
    assert await storage.audit_head() == (5, events[-1].hash)
    assert await storage.read_audit_events(limit=10) == events
    assert await storage.read_audit_events(after_seq=3, limit=10) == events[3:]
    assert await storage.read_audit_events(limit=2) == events[:2]
    rows = await storage.read_audit_rows(after_seq=1, limit=2)
    assert [(r.seq, r.hash) for r in rows] == [(2, events[1].hash), (3, events[2].hash)]
    assert event_from_body(rows[0].body, rows[0].hash) == events[1]
    await storage.append_audit_events([])


async def test_append_at_a_taken_seq_is_a_conflict(storage: Storage, clock: FrozenClock) -> None:
    events = chained(3, clock)
    await storage.append_audit_events(events)
    rival = seal_event(
        EventDraft("decision", AGENT_B), seq=3, prev_hash=events[1].hash, time=clock.now(), node_id="n2"
    )
    with pytest.raises(AuditConflictError) as caught:
        await storage.append_audit_events([rival])
    assert isinstance(caught.value, ConflictError)
    assert await storage.read_audit_events(limit=10) == events


async def test_append_that_does_not_continue_the_stored_chain_is_a_conflict(
    storage: Storage, clock: FrozenClock
) -> None:
    events = chained(3, clock)
    await storage.append_audit_events(events)
    with pytest.raises(AuditConflictError):  # stale idea of the head's hash
        await storage.append_audit_events(chained(1, clock, start=4, prev=b"\x01" * 32))
    with pytest.raises(AuditConflictError):  # a gap
        await storage.append_audit_events(chained(1, clock, start=5, prev=events[-1].hash))
    with pytest.raises(AuditConflictError):  # a second genesis
        await storage.append_audit_events(chained(1, clock, start=1, prev=b"\x01" * 32))
    assert await storage.audit_head() == (3, events[-1].hash)


async def test_append_refuses_a_batch_that_is_not_one_run(storage: Storage, clock: FrozenClock) -> None:
    events = chained(3, clock)
    with pytest.raises(StorageError):
        await storage.append_audit_events([events[0], events[2]])
    assert await storage.audit_head() is None


async def test_read_filters(storage: Storage, clock: FrozenClock) -> None:
    log = AuditLog(storage, node_id="node-1", clock=clock)
    start = clock.now()
    events = await fill(log, clock, 12)
    await log.record("approval.request", ALICE, task_id="task-9")
    await log.record("approval.decide", ALICE, task_id="task-9")

    async def seqs(**filters: Any) -> list[int]:
        return [e.seq for e in await storage.read_audit_events(limit=100, **filters)]

    assert await seqs(kind="grant.issue") == [2, 5, 8, 11]
    assert await seqs(kind="approval.*") == [13, 14]
    assert await seqs(actor=AGENT_B.id) == [2, 4, 6, 8, 10, 12]
    assert await seqs(actor="alice") == [13, 14]
    assert await seqs(task_id="task-0") == [1, 4, 7, 10]
    assert await seqs(resource="secret:prod/s1") == [2, 6, 10]
    assert await seqs(allowed=True) == [1, 3, 5, 7, 9, 11]
    assert await seqs(allowed=False) == [2, 4, 6, 8, 10, 12]
    assert await seqs(since=events[2].time, until=events[5].time) == [3, 4, 5]
    assert await seqs(since=start + timedelta(days=1)) == []
    assert await seqs(kind="decision", actor=AGENT_A.id, allowed=True) == [1, 7]
    assert await seqs(kind="grant.issue", after_seq=5) == [8, 11]
    assert [e.seq for e in await storage.read_audit_events(kind="grant.issue", limit=2)] == [2, 5]
    assert await seqs(kind="grant%") == []  # LIKE wildcards are literal
    with pytest.raises(StorageError):
        await storage.read_audit_events(limit=0)


async def test_checkpoints_are_kept_in_seq_order(
    storage: Storage, clock: FrozenClock, keys: AuditKeys
) -> None:
    from tether.audit import sign_checkpoint

    assert await storage.latest_audit_checkpoint() is None
    stored = [
        checkpoint_to_stored(sign_checkpoint(keys, seq=seq, head_hash=bytes([seq]) * 32, time=clock.now()))
        for seq in (10, 3, 7)
    ]
    for item in stored:
        await storage.put_audit_checkpoint(item)
    assert [c.seq for c in await storage.list_audit_checkpoints()] == [3, 7, 10]
    assert [c.seq for c in await storage.list_audit_checkpoints(after_seq=3, limit=1)] == [7]
    assert await storage.latest_audit_checkpoint() == stored[0]
    with pytest.raises(ConflictError):
        await storage.put_audit_checkpoint(stored[1])


# -- the audit log on every backend ------------------------------------------------------------
async def test_group_commit_of_200_concurrent_records(storage: Storage, clock: FrozenClock) -> None:
    log = AuditLog(storage, node_id="node-1", clock=clock)
    events = await asyncio.gather(*(log.record("decision", AGENT_A, data={"i": i}) for i in range(200)))
    # every caller got its own event, durable, in one contiguous chain
    assert sorted(e.seq for e in events) == list(range(1, 201))
    assert sorted(e.data["i"] for e in events) == list(range(200))  # type: ignore[type-var]
    stored = await storage.read_audit_events(limit=500)
    assert sorted(stored, key=lambda e: e.seq) == sorted(events, key=lambda e: e.seq)
    assert log.batches < 200  # batched: far fewer transactions than events
    result = await verify_store(storage, page=64)
    assert result
    assert result.head_seq == 200


async def test_two_nodes_on_one_store_keep_one_chain(
    storage: Storage, raw_store: RawStore, clock: FrozenClock
) -> None:
    other = second_node(raw_store)
    try:
        node_a = AuditLog(storage, node_id="node-a", clock=clock)
        node_b = AuditLog(other, node_id="node-b", clock=clock)
        for round_ in range(4):
            await asyncio.gather(
                *(node_a.record("decision", AGENT_A, data={"r": round_, "i": i}) for i in range(25)),
                *(node_b.record("decision", AGENT_B, data={"r": round_, "i": i}) for i in range(25)),
            )
        await node_a.record("sys.seal", node_a.actor)
        await node_b.record("sys.seal", node_b.actor)
    finally:
        await other.close()
    result = await verify_store(storage)
    assert result
    assert result.head_seq == 202
    stored = await storage.read_audit_events(limit=500)
    assert [e.seq for e in stored] == list(range(1, 203))
    assert {e.node_id for e in stored} == {"node-a", "node-b"}


async def test_export_from_the_store_verifies_offline(
    storage: Storage, clock: FrozenClock, keys: AuditKeys, tmp_path: Path
) -> None:
    log = AuditLog(storage, node_id="node-1", clock=clock, keys=keys)
    await fill(log, clock, 25)
    checkpoint = await log.checkpoint()
    out = io.StringIO()
    assert await export_jsonl(storage, out, page=7) == 26
    path = tmp_path / "export.jsonl"
    path.write_text(out.getvalue())
    result = verify_jsonl(path, checkpoint, trusted_key_ids={keys.key_id})
    assert result
    assert (result.head_seq, result.checkpoints) == (26, 1)
    only_b = io.StringIO()
    assert await export_jsonl(storage, only_b, actor=AGENT_B.id) == 12
    assert all(json.loads(line)["actor"]["id"] == AGENT_B.id for line in only_b.getvalue().splitlines())


# -- tampering with the live store: each detected, at the right seq --------------------------------
@pytest.fixture
async def chain(storage: Storage, clock: FrozenClock, keys: AuditKeys) -> list[Event]:
    log = AuditLog(storage, node_id="node-1", clock=clock, keys=keys)
    return await fill(log, clock, 10)


async def verdict(
    storage: Storage, checkpoint: Checkpoint | None = None
) -> tuple[Problem | None, int | None]:
    result = await verify_store(storage, checkpoint, page=3)
    return result.problem, result.first_bad_seq


async def test_untouched_store_verifies(storage: Storage, chain: list[Event]) -> None:
    result = await verify_store(storage, page=3)
    assert result
    assert (result.checked, result.head_hash) == (10, chain[-1].hash)


async def test_modified_row_is_found(storage: Storage, raw_sql: RawSQL, chain: list[Event]) -> None:
    body, _ = await raw_sql.row(5)
    await raw_sql.set_body(5, body.replace('"reason":"event 4"', '"reason":"all fine"'))
    assert await verdict(storage) == (Problem.MODIFIED, 5)


async def test_modified_row_with_recomputed_hash_is_found(
    storage: Storage, raw_sql: RawSQL, chain: list[Event]
) -> None:
    forged = replace(chain[4], reason="all fine")
    await raw_sql.set_body(5, event_body_json(forged), forged.computed_hash())
    assert await verdict(storage) == (Problem.MODIFIED, 5)


async def test_deleted_row_is_missing(storage: Storage, raw_sql: RawSQL, chain: list[Event]) -> None:
    await raw_sql.execute("DELETE FROM audit_events WHERE seq = ?", 5)
    assert await verdict(storage) == (Problem.MISSING, 5)


async def test_inserted_row_is_found(storage: Storage, raw_sql: RawSQL, chain: list[Event]) -> None:
    forged = seal_event(
        EventDraft("grant.revoke", ALICE, resource="secret:prod/s0"),
        seq=5,
        prev_hash=chain[3].hash,
        time=chain[3].time,
        node_id="node-1",
    )
    await raw_sql.shift_up(5)
    await raw_sql.insert(5, forged)
    assert await verdict(storage) == (Problem.INSERTED, 5)


async def test_swapped_rows_are_reordered(storage: Storage, raw_sql: RawSQL, chain: list[Event]) -> None:
    await raw_sql.swap(5, 6)
    assert await verdict(storage) == (Problem.REORDERED, 5)


async def test_truncation_is_found_against_a_kept_checkpoint(
    storage: Storage, raw_sql: RawSQL, chain: list[Event], clock: FrozenClock, keys: AuditKeys
) -> None:
    log = AuditLog(storage, node_id="node-1", clock=clock, keys=keys)
    kept = await log.checkpoint()  # seq 10; the audit.checkpoint event is 11
    assert kept.seq == 10
    await raw_sql.execute("DELETE FROM audit_events WHERE seq >= ?", 8)
    assert await verdict(storage) == (Problem.TRUNCATED, 8)  # the stored checkpoint sees it
    # a careful attacker removes the stored checkpoints too; the one kept outside still sees it
    await raw_sql.execute("DELETE FROM audit_checkpoints")
    assert await verdict(storage) == (None, None)
    assert await verdict(storage, kept) == (Problem.TRUNCATED, 8)


async def test_rewritten_history_is_found_against_a_kept_checkpoint(
    storage: Storage, raw_sql: RawSQL, chain: list[Event], clock: FrozenClock, keys: AuditKeys
) -> None:
    kept = await AuditLog(storage, node_id="node-1", clock=clock, keys=keys).checkpoint()
    await raw_sql.execute("DELETE FROM audit_checkpoints")
    prev = chain[2].hash
    for event in chain[3:] + (await storage.read_audit_events(after_seq=10, limit=5)):
        forged = replace(event, reason="rewritten", prev_hash=prev)
        forged = replace(forged, hash=forged.computed_hash())
        await raw_sql.set_body(event.seq, event_body_json(forged), forged.hash)
        prev = forged.hash
    assert await verdict(storage) == (None, None)  # a consistent rewrite: only a checkpoint knows
    assert await verdict(storage, kept) == (Problem.MODIFIED, 10)


async def test_bad_checkpoint_signature_is_found(
    storage: Storage, raw_sql: RawSQL, chain: list[Event], clock: FrozenClock, keys: AuditKeys
) -> None:
    kept = await AuditLog(storage, node_id="node-1", clock=clock, keys=keys).checkpoint()
    flipped = replace(kept, signature=bytes([kept.signature[0] ^ 1]) + kept.signature[1:])
    assert await verdict(storage, flipped) == (Problem.BAD_SIGNATURE, 10)
    # the same tampering on the stored copy (body and column alike)
    record = checkpoint_to_json(flipped)
    await raw_sql.execute(
        "UPDATE audit_checkpoints SET body = ?, signature = ? WHERE seq = ?",
        json.dumps(record),
        flipped.signature,
        10,
    )
    assert await verdict(storage) == (Problem.BAD_SIGNATURE, 10)
    # and a stored checkpoint whose columns and body disagree
    await raw_sql.execute("UPDATE audit_checkpoints SET signature = ? WHERE seq = ?", kept.signature, 10)
    assert await verdict(storage) == (Problem.MALFORMED, 10)


async def test_forged_checkpoint_from_another_key_is_refused_when_pinned(
    storage: Storage, chain: list[Event], clock: FrozenClock, keys: AuditKeys
) -> None:
    from tether.audit import sign_checkpoint

    forged = sign_checkpoint(
        AuditKeys.generate(clock.now()), seq=10, head_hash=chain[-1].hash, time=clock.now()
    )
    assert await verify_store(storage, forged)
    pinned = await verify_store(storage, forged, trusted_key_ids={keys.key_id})
    assert (pinned.problem, pinned.first_bad_seq) == (Problem.BAD_SIGNATURE, 10)


async def test_tampered_index_columns_are_found_and_refused_by_queries(
    storage: Storage, raw_sql: RawSQL, chain: list[Event]
) -> None:
    await raw_sql.execute("UPDATE audit_events SET actor_id = ? WHERE seq = ?", "someone-else", 5)
    assert await verdict(storage) == (Problem.MODIFIED, 5)
    with pytest.raises(AuditCorruptionError) as caught:
        await storage.read_audit_events(limit=100)
    assert caught.value.seq == 5
    assert len(await storage.read_audit_events(limit=4)) == 4  # rows before it still read


async def test_unreadable_row_is_malformed(storage: Storage, raw_sql: RawSQL, chain: list[Event]) -> None:
    await raw_sql.set_body(7, "{not json")
    assert await verdict(storage) == (Problem.MALFORMED, 7)
    with pytest.raises(AuditCorruptionError):
        await storage.read_audit_events(after_seq=6, limit=1)


async def test_verification_reports_progress(storage: Storage, chain: list[Event]) -> None:
    seen: list[int] = []
    assert await verify_store(storage, page=4, progress=seen.append)
    assert seen[-1] == 10
    assert seen == sorted(seen)


async def test_migration_creates_the_audit_tables(storage: Storage, raw_store: RawStore) -> None:
    tables = await raw_store.dump()
    assert {"audit_events", "audit_checkpoints"} <= set(tables)
    assert tables["tether_schema_version"] == [(head_revision(),)]
