"""The audit log on a real SQLite store: fail closed, sinks, fingerprints, checkpoints.

Backend-independent behaviour (group commit, several nodes, tampering on the live store)
runs on every backend in ``tests/conformance/test_audit_storage.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.security.canaries import find_leaks, new_canary
from tether.audit import (
    Actor,
    AuditFilter,
    AuditKeys,
    AuditLog,
    DecisionSummary,
    Event,
    JsonlFileSink,
    Sensitive,
    StdoutSink,
    event_line,
    export_jsonl,
    verify_jsonl,
    verify_store,
)
from tether.clock import FrozenClock
from tether.errors import InvalidInputError, NotFoundError, SealedError, StorageError
from tether.store.base import Storage
from tether.store.sqlite import open_sqlite

AGENT = Actor.agent("spiffe://acme.test/agent/deployer")
ALICE = Actor.operator("alice")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Storage]:
    storage = open_sqlite(tmp_path / "tether.db")
    await storage.migrate()
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def keys(clock: FrozenClock) -> AuditKeys:
    return AuditKeys.generate(clock.now())


class FlakyStore:
    """A real store whose audit appends can be made to fail: before the commit (nothing
    written) or after it (written, but the caller hears an error — an ambiguous commit)."""

    def __init__(self, inner: Storage) -> None:
        self._inner = inner
        self.fail_before_commit = False
        self.fail_after_commit = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def append_audit_events(self, events: Sequence[Event], effects: Any = ()) -> list[list[object]]:
        if self.fail_before_commit:
            raise StorageError("sqlite store error: disk I/O error")
        results: list[list[object]] = await self._inner.append_audit_events(events, effects)
        if self.fail_after_commit:
            self.fail_after_commit -= 1
            raise StorageError("sqlite store error: connection lost during commit")
        return results

    async def append_sealed(self, seal: Any, effects: Any = ()) -> tuple[list[Event], list[list[object]]]:
        # The sealing append of a store that has one (SQLite) fails the same ways.
        if self.fail_before_commit:
            raise StorageError("sqlite store error: disk I/O error")
        done: tuple[list[Event], list[list[object]]] = await self._inner.append_sealed(seal, effects)  # type: ignore[attr-defined]
        if self.fail_after_commit:
            self.fail_after_commit -= 1
            raise StorageError("sqlite store error: connection lost during commit")
        return done


class BrokenSink:
    name = "broken-collector"

    async def write(self, events: Sequence[Event]) -> None:
        raise OSError("collector unreachable")


class ListSink:
    def __init__(self) -> None:
        self.name = "list"
        self.batches: list[list[Event]] = []

    async def write(self, events: Sequence[Event]) -> None:
        self.batches.append(list(events))


def new_log(storage: Any, clock: FrozenClock, **kwargs: Any) -> AuditLog:
    return AuditLog(storage, node_id="node-1", clock=clock, **kwargs)


async def chain_head(store: Storage) -> int:
    """The stored chain's head seq, once the whole chain verifies."""
    result = await verify_store(store)
    assert result
    return result.head_seq


async def test_record_returns_the_durable_event(store: Storage, clock: FrozenClock) -> None:
    log = new_log(store, clock)
    event = await log.record(
        "decision",
        AGENT,
        resource="secret:prod/github/token",
        task_id="task-1",
        chain=["task-0"],
        decision=DecisionSummary(True, ("allow-deploy",)),
        reason="deploy",
        request_id="req-1",
        data={"mode": "inject"},
    )
    assert (event.seq, event.node_id, event.time) == (1, "node-1", clock.now())
    assert await store.read_audit_events(limit=10) == [event]
    assert await store.audit_head() == (1, event.hash)
    second = await log.record("grant.issue", AGENT, task_id="task-1")
    assert (second.seq, second.prev_hash) == (2, event.hash)
    assert await verify_store(store)


async def test_failed_append_fails_every_caller_and_acknowledges_nothing(
    store: Storage, clock: FrozenClock
) -> None:
    flaky = FlakyStore(store)
    log = new_log(flaky, clock)
    flaky.fail_before_commit = True
    results = await asyncio.gather(
        *(log.record("decision", AGENT, data={"i": i}) for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) for r in results)
    assert await store.audit_head() is None
    flaky.fail_before_commit = False
    event = await log.record("decision", AGENT)
    assert event.seq == 1
    assert await verify_store(store)


class BuggyStore(FlakyStore):
    """A store whose sealing append raises something that is not a storage error (a bug)."""

    async def append_sealed(self, seal: Any, effects: Any = ()) -> tuple[list[Event], list[list[object]]]:
        await asyncio.sleep(0)  # the others queue meanwhile: the writer task's batch fails too
        raise RuntimeError("unexpected state in the driver")


async def test_an_unexpected_append_error_reaches_every_caller_as_a_storage_error(
    store: Storage, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    log = new_log(BuggyStore(store), clock)
    alone = await asyncio.gather(log.record("decision", AGENT), return_exceptions=True)
    many = await asyncio.gather(*(log.record("decision", AGENT) for _ in range(5)), return_exceptions=True)
    for error in [*alone, *many]:
        assert isinstance(error, StorageError)
        assert "audit append failed" in str(error)
        assert isinstance(error.__cause__, RuntimeError)
    assert "audit append of 1 event failed" in caplog.text  # the first caller's own append
    assert "audit append of 4 event(s) failed" in caplog.text  # the writer task's batch
    assert await store.audit_head() is None


async def test_ambiguous_commit_is_reported_and_the_chain_continues(
    store: Storage, clock: FrozenClock
) -> None:
    flaky = FlakyStore(store)
    log = new_log(flaky, clock)
    await log.record("sys.init", log.actor)
    flaky.fail_after_commit = 1
    with pytest.raises(StorageError):
        await log.record("secret.write", ALICE, resource="secret:prod/x")
    # The event did land; the log must not reuse its seq or fork the chain.
    after = await log.record("secret.write", ALICE, resource="secret:prod/x")
    assert after.seq == 3
    assert await chain_head(store) == 3


async def test_invalid_event_fails_only_its_own_caller(store: Storage, clock: FrozenClock) -> None:
    log = new_log(store, clock)
    results = await asyncio.gather(
        log.record("decision", AGENT, data={"i": 1}),
        log.record("decision", AGENT, data={"ratio": 0.5}),
        log.record("no.such.kind", AGENT),
        log.record("decision", AGENT, data={"i": 2}),
        return_exceptions=True,
    )
    assert isinstance(results[1], InvalidInputError)
    assert isinstance(results[2], InvalidInputError)
    good = [r for r in results if isinstance(r, Event)]
    assert sorted(e.seq for e in good) == [1, 2]
    assert await verify_store(store)


async def test_failing_secondary_sink_is_reported_and_the_primary_write_stands(
    store: Storage, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    after = ListSink()
    log = new_log(store, clock, sinks=[BrokenSink(), after])
    with caplog.at_level(logging.ERROR, logger="tether.audit"):
        event = await log.record("decision", AGENT)
        await log.flush()
    assert event.seq == 1
    assert await store.read_audit_events(limit=10) == [event]
    assert log.sink_failures == 1
    assert log.sink_failures_by_name == {"broken-collector": 1}
    assert "broken-collector" in caplog.text
    assert after.batches == [[event]]  # later sinks still get the batch


async def test_jsonl_sink_is_a_verifiable_copy(store: Storage, clock: FrozenClock, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = new_log(store, clock, sinks=[JsonlFileSink(path)])
    events = await asyncio.gather(*(log.record("decision", AGENT, data={"i": i}) for i in range(30)))
    await log.record("task.end", AGENT, task_id="t")
    await log.flush()  # sinks trail the durable write: record() does not wait for them
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    result = verify_jsonl(path)
    assert result
    assert result.head_seq == 31
    exported = io.StringIO()
    await export_jsonl(store, exported)
    assert path.read_text() == exported.getvalue()
    assert path.read_text().splitlines()[0] == event_line(events[0]).rstrip("\n")


async def test_stdout_sink_writes_json_lines(
    store: Storage, clock: FrozenClock, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = io.StringIO()
    log = new_log(store, clock, sinks=[StdoutSink(stream), StdoutSink()])
    event = await log.record("sys.unseal", log.actor)
    await log.flush()
    assert json.loads(stream.getvalue())["hash"] == event.hash.hex()
    assert json.loads(capsys.readouterr().out)["seq"] == 1


async def test_sensitive_values_are_stored_only_as_fingerprints(
    store: Storage, clock: FrozenClock, keys: AuditKeys, tmp_path: Path
) -> None:
    canary = new_canary("audit")
    sink_path = tmp_path / "sink.jsonl"
    log = new_log(store, clock, keys=keys, sinks=[JsonlFileSink(sink_path)])
    event = await log.record(
        "secret.write",
        ALICE,
        resource="secret:prod/db/password",
        data={"version": 1, "value": Sensitive(canary), "also": [Sensitive(canary.encode())]},
    )
    await log.flush()
    fingerprint = keys.fingerprinter.fingerprint(canary)
    assert event.data["value"] == fingerprint
    assert event.data["also"] == (fingerprint,)
    assert log.fingerprint(canary) == fingerprint
    exported = io.StringIO()
    await export_jsonl(store, exported)
    await store.close()  # checkpoint the WAL so that the scan sees every byte written
    haystacks = [repr(event), exported.getvalue(), sink_path.read_text()]
    haystacks += [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("tether.db")]
    for haystack in haystacks:
        assert find_leaks(haystack, [canary]) == []
    # and the fingerprint is findable: the point of it
    assert fingerprint in exported.getvalue()


async def test_sensitive_values_need_the_keys(store: Storage, clock: FrozenClock, keys: AuditKeys) -> None:
    log = new_log(store, clock)
    with pytest.raises(SealedError):
        await log.record("secret.write", ALICE, data={"value": Sensitive("v")})
    with pytest.raises(SealedError):
        log.fingerprint("v")
    assert await store.audit_head() is None
    log.attach_keys(keys)
    assert (await log.record("secret.write", ALICE, data={"value": Sensitive("v")})).seq == 1
    log.detach_keys()
    assert log.keys is None
    assert (await log.record("sys.seal", log.actor)).seq == 2  # sealed nodes still record


async def test_checkpoint_signs_the_head_then_records_itself(
    store: Storage, clock: FrozenClock, keys: AuditKeys
) -> None:
    log = new_log(store, clock, keys=keys)
    for i in range(5):
        await log.record("decision", AGENT, data={"i": i})
    checkpoint = await log.checkpoint()
    head = await store.read_audit_events(limit=10)
    assert (checkpoint.seq, checkpoint.head_hash) == (5, head[4].hash)
    assert checkpoint.signature_ok(frozenset({keys.key_id}))
    marker = head[5]
    assert (marker.seq, marker.kind, marker.actor) == (6, "audit.checkpoint", log.actor)
    assert marker.data["seq"] == 5
    assert marker.data["head_hash"] == checkpoint.head_hash.hex()
    assert await log.latest_checkpoint() == checkpoint
    result = await log.verify()
    assert result
    assert result.checkpoints == 1


async def test_checkpoint_needs_keys_and_events(store: Storage, clock: FrozenClock, keys: AuditKeys) -> None:
    with pytest.raises(SealedError):
        await new_log(store, clock).checkpoint()
    with pytest.raises(NotFoundError):
        await new_log(store, clock, keys=keys).checkpoint()


async def test_maybe_checkpoint_takes_one_every_n_events(
    store: Storage, clock: FrozenClock, keys: AuditKeys
) -> None:
    log = new_log(store, clock, keys=keys)
    assert await log.maybe_checkpoint(5) is None  # empty log
    for _ in range(4):
        await log.record("decision", AGENT)
    assert await log.maybe_checkpoint(5) is None
    await log.record("decision", AGENT)
    first = await log.maybe_checkpoint(5)
    assert first is not None
    assert first.seq == 5
    assert await log.maybe_checkpoint(5) is None  # only its own event since
    for _ in range(4):
        await log.record("decision", AGENT)
    second = await log.maybe_checkpoint(5)
    assert second is not None
    assert second.seq == 10
    with pytest.raises(InvalidInputError):
        await log.maybe_checkpoint(0)


async def test_checkpoint_loop_runs_in_the_background(
    store: Storage, clock: FrozenClock, keys: AuditKeys
) -> None:
    log = new_log(store, clock, keys=keys)
    await log.record("decision", AGENT)
    task = asyncio.create_task(log.checkpoint_loop(every_events=1, interval_seconds=0.005))
    try:
        for _ in range(400):
            if await store.latest_audit_checkpoint() is not None:
                break
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await store.latest_audit_checkpoint() is not None


async def test_a_cancelled_caller_does_not_break_the_batch(store: Storage, clock: FrozenClock) -> None:
    log = new_log(store, clock)
    tasks = [asyncio.create_task(log.record("decision", AGENT, data={"i": i})) for i in range(10)]
    await asyncio.sleep(0)  # every task has run up to its append (or been appended)
    tasks[3].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    await log.flush()
    assert await chain_head(store) in (9, 10)  # the cancelled caller's event may or may not be in


async def test_a_lone_record_is_appended_without_a_pass_through_the_event_loop(
    tmp_path: Path, clock: FrozenClock
) -> None:
    # At synchronous=NORMAL a write with nobody queued commits on the caller's thread: the record
    # is then durable before anything else the loop has ready runs (a busy worker's other
    # requests got ahead of a tool call's commit twice when it went through the writer task).
    store = open_sqlite(tmp_path / "normal.db", synchronous="NORMAL")
    await store.migrate()
    try:
        log = new_log(store, clock)
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "other work")
        event = await log.record("decision", AGENT, data={"i": 1})
        assert ran == []
        assert await store.read_audit_events(limit=10) == [event]
        await asyncio.sleep(0)
        assert ran == ["other work"]
    finally:
        await store.close()


class GatedStore(FlakyStore):
    """A real store whose sealing appends wait until the test opens the gate."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.gate = asyncio.Event()

    async def append_sealed(self, seal: Any, effects: Any = ()) -> tuple[list[Event], list[list[object]]]:
        await self.gate.wait()
        return await super().append_sealed(seal, effects)


async def test_records_arriving_during_an_append_share_the_next_transaction(
    store: Storage, clock: FrozenClock
) -> None:
    gated = GatedStore(store)
    log = new_log(gated, clock)
    first = asyncio.create_task(log.record("decision", AGENT, data={"i": 0}))
    await asyncio.sleep(0)  # the first caller appends alone, and waits for the store
    second = asyncio.create_task(log.record("decision", AGENT, data={"i": 1}))
    await asyncio.sleep(0)  # it queued and started the writer task,
    await asyncio.sleep(0)  # which waits for the lock without taking a batch yet
    rest = [asyncio.create_task(log.record("decision", AGENT, data={"i": i})) for i in range(2, 30)]
    await asyncio.sleep(0)
    gated.gate.set()
    events = await asyncio.gather(first, second, *rest)
    assert sorted(e.seq for e in events) == list(range(1, 31))
    assert log.batches == 2  # the first caller's own, then all 29 that queued during it
    assert await chain_head(store) == 30


async def test_a_caller_cancelled_during_its_own_append_leaves_the_chain_whole(
    store: Storage, clock: FrozenClock
) -> None:
    log = new_log(store, clock)
    task = asyncio.create_task(log.record("decision", AGENT, data={"i": 0}))
    await asyncio.sleep(0)  # appending in the caller's task, waiting for the writer thread
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await log.record("decision", AGENT, data={"i": 1})
    # The writer thread never saw the cancellation: it committed the first event (its queue is
    # first come, first served), and the next one is sealed on top of it.
    assert after.seq == 2
    assert await chain_head(store) == 2


async def test_flush_waits_for_an_append_made_in_its_callers_task(store: Storage, clock: FrozenClock) -> None:
    log = new_log(store, clock)
    task = asyncio.create_task(log.record("decision", AGENT))
    await asyncio.sleep(0)
    await log.flush()
    assert task.done()
    assert await store.audit_head() == ((await task).seq, (await task).hash)


async def test_records_with_a_secondary_sink_reach_it_in_order(store: Storage, clock: FrozenClock) -> None:
    sink = ListSink()
    log = new_log(store, clock, sinks=[sink])
    for i in range(3):
        await log.record("decision", AGENT, data={"i": i})
    await log.flush()
    assert [e.seq for batch in sink.batches for e in batch] == [1, 2, 3]


async def test_closed_log_refuses_new_events(store: Storage, clock: FrozenClock) -> None:
    log = new_log(store, clock)
    await log.record("decision", AGENT)
    await log.close()
    with pytest.raises(StorageError, match="closed"):
        await log.record("decision", AGENT)


async def test_query_pages_through_matching_events(store: Storage, clock: FrozenClock) -> None:
    log = new_log(store, clock)
    for i in range(7):
        await log.record("grant.issue" if i % 2 else "decision", AGENT, task_id=f"t{i % 2}")
    page = await log.query(AuditFilter(kind="grant.issue"), limit=2)
    assert [e.seq for e in page.events] == [2, 4]
    assert page.next_after == 4
    page = await log.query(AuditFilter(kind="grant.issue"), after_seq=page.next_after, limit=2)
    assert [e.seq for e in page.events] == [6]
    assert page.next_after is None
    with pytest.raises(InvalidInputError):
        await log.query(limit=0)
    with pytest.raises(InvalidInputError):
        AuditFilter(kind="grant.steal")


def test_node_id_is_validated(clock: FrozenClock) -> None:
    with pytest.raises(InvalidInputError):
        AuditLog(object(), node_id="", clock=clock)  # type: ignore[arg-type]


async def test_export_refuses_unknown_filters(store: Storage) -> None:
    with pytest.raises(InvalidInputError):
        await export_jsonl(store, io.StringIO(), colour="red")
