"""Effects that ride along with an audit event commit in the same transaction as the event, or not at
all: the activation path's one batched write (use count, DPoP proof single use, the event)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.test_task_store import NOW, at, make_grant, make_task
from tests.conftest import RawStore
from tether.audit import Actor, AuditLog
from tether.clock import FrozenClock
from tether.domain.tasks import TaskStatus
from tether.store.base import (
    ConsumeGrantUse,
    CreateGrant,
    CreateTask,
    EffectFailedError,
    RememberJti,
    Storage,
)
from tether.store.postgres import open_postgres
from tether.store.sqlite import open_sqlite

AGENT = Actor.agent("spiffe://acme.test/agent/deploy-bot")


async def _log(storage: Storage) -> AuditLog:
    return AuditLog(storage, node_id="node-1", clock=FrozenClock(NOW))


async def test_event_and_use_count_commit_together(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task, max_uses=2)
    await storage.create_grant(grant, now=NOW)
    audit = await _log(storage)
    event, results = await audit.record_with(
        "grant.activate", AGENT, effects=[ConsumeGrantUse(grant.id, task.id, at(1))], task_id=task.id
    )
    assert results == [1]
    stored = await storage.get_grant(grant.id)
    assert stored is not None
    assert stored.uses == 1
    assert [e.seq for e in await storage.read_audit_events(limit=10)] == [event.seq]


async def test_a_failed_effect_writes_neither_its_event_nor_its_change(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task, max_uses=1)
    await storage.create_grant(grant, now=NOW)
    audit = await _log(storage)
    proof = RememberJti(b"k" * 32, at(120), at(1))
    await audit.record_with("grant.activate", AGENT, effects=[ConsumeGrantUse(grant.id, task.id, at(1))])
    with pytest.raises(EffectFailedError) as failed:
        # The proof is new but the grant is used up: the proof's record must not survive either.
        await audit.record_with(
            "grant.activate", AGENT, effects=[proof, ConsumeGrantUse(grant.id, task.id, at(2))]
        )
    assert isinstance(next(iter(failed.value.failed.values())), ConsumeGrantUse)
    assert len(await storage.read_audit_events(limit=10)) == 1
    assert await storage.remember_jti(proof.key, expires_at=at(120), now=at(3)) is True


async def test_a_replayed_proof_fails_only_its_own_event_in_a_batch(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task)
    await storage.create_grant(grant, now=NOW)
    audit = await _log(storage)
    proof = RememberJti(b"p" * 32, at(120), at(1))
    await audit.record_with("decision", AGENT, effects=[proof])
    use = ConsumeGrantUse(grant.id, task.id, at(2))
    outcomes = await asyncio.gather(
        audit.record_with("grant.activate", AGENT, effects=[proof, use]),
        audit.record("task.open", AGENT),
        audit.record_with("grant.activate", AGENT, effects=[use]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], EffectFailedError)
    assert not isinstance(outcomes[1], BaseException)
    assert not isinstance(outcomes[2], BaseException)
    events = await storage.read_audit_events(limit=10)
    assert [e.kind for e in events] == ["decision", "task.open", "grant.activate"]
    assert [e.seq for e in events] == [1, 2, 3]
    stored = await storage.get_grant(grant.id)
    assert stored is not None
    assert stored.uses == 1
    assert (await audit.verify()).ok


async def test_an_expired_replay_record_is_replaced(storage: Storage) -> None:
    audit = await _log(storage)
    await audit.record_with("decision", AGENT, effects=[RememberJti(b"e" * 32, at(10), at(1))])
    await audit.record_with("decision", AGENT, effects=[RememberJti(b"e" * 32, at(100), at(20))])
    with pytest.raises(EffectFailedError):
        await audit.record_with("decision", AGENT, effects=[RememberJti(b"e" * 32, at(200), at(30))])


async def test_concurrent_uses_of_a_single_use_grant_succeed_once(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task, max_uses=1)
    await storage.create_grant(grant, now=NOW)
    audit = await _log(storage)
    outcomes = await asyncio.gather(
        *(
            audit.record_with("grant.activate", AGENT, effects=[ConsumeGrantUse(grant.id, task.id, at(1))])
            for _ in range(20)
        ),
        return_exceptions=True,
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, EffectFailedError) for o in outcomes if isinstance(o, BaseException))
    assert len(await storage.read_audit_events(limit=100)) == 1


async def test_a_task_and_its_grant_commit_with_their_events(storage: Storage) -> None:
    task = make_task()
    grant = make_grant(task)
    audit = await _log(storage)
    results = await asyncio.gather(
        audit.record_with("task.open", AGENT, effects=[CreateTask(task)], task_id=task.id),
        audit.record_with("grant.issue", AGENT, effects=[CreateGrant(grant, at(1))], task_id=task.id),
    )
    assert [r for _, r in results] == [[True], [True]]
    assert await storage.get_task(task.id) == task
    assert await storage.get_grant(grant.id) == grant
    assert [e.kind for e in await storage.read_audit_events(limit=10)] == ["task.open", "grant.issue"]


async def test_a_grant_for_an_inactive_task_is_refused_with_its_event(storage: Storage) -> None:
    ended = make_task(status=TaskStatus.COMPLETED)
    await storage.create_task(ended)
    grant = make_grant(ended)
    audit = await _log(storage)
    with pytest.raises(EffectFailedError) as failed:
        await audit.record_with("grant.issue", AGENT, effects=[CreateGrant(grant, at(1))])
    assert isinstance(next(iter(failed.value.failed.values())), CreateGrant)
    assert await storage.get_grant(grant.id) is None
    assert await storage.read_audit_events(limit=10) == []


async def test_a_sub_task_of_an_ended_parent_is_refused_with_its_event(storage: Storage) -> None:
    parent = make_task(status=TaskStatus.REVOKED)
    await storage.create_task(parent)
    child = make_task(parent=parent)
    audit = await _log(storage)
    with pytest.raises(EffectFailedError):
        await audit.record_with("task.open", AGENT, effects=[CreateTask(child)])
    assert await storage.get_task(child.id) is None
    assert await storage.read_audit_events(limit=10) == []


async def test_two_nodes_using_the_same_grants_in_opposite_orders_never_deadlock(
    storage: Storage, raw_store: RawStore
) -> None:
    # Each node's audit log commits the uses queued together in one transaction. Two nodes whose
    # batches touch the same grants in opposite orders must queue, not deadlock (PostgreSQL would
    # abort one of them after its deadlock timeout: a refused use, answered 503).
    other = (
        open_sqlite(raw_store.sqlite_path)
        if raw_store.sqlite_path is not None
        else open_postgres(str(raw_store.pg_dsn), schema=raw_store.pg_schema)
    )
    try:
        task = make_task()
        await storage.create_task(task)
        first_grant, second_grant = make_grant(task), make_grant(task)
        for grant in (first_grant, second_grant):
            await storage.create_grant(grant, now=NOW)
        one = AuditLog(storage, node_id="node-1", clock=FrozenClock(NOW))
        two = AuditLog(other, node_id="node-2", clock=FrozenClock(NOW))

        def use(grant_id: str) -> list[ConsumeGrantUse]:
            return [ConsumeGrantUse(grant_id, task.id, at(1))]

        rounds = 12
        for _ in range(rounds):
            await asyncio.gather(
                one.record_with("grant.activate", AGENT, effects=use(first_grant.id)),
                one.record_with("grant.activate", AGENT, effects=use(second_grant.id)),
                two.record_with("grant.activate", AGENT, effects=use(second_grant.id)),
                two.record_with("grant.activate", AGENT, effects=use(first_grant.id)),
            )
        for grant in (first_grant, second_grant):
            stored = await storage.get_grant(grant.id)
            assert stored is not None
            assert stored.uses == 2 * rounds
        assert len(await storage.read_audit_events(limit=1000)) == 4 * rounds
    finally:
        await other.close()
