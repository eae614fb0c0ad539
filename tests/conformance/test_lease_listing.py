"""Storage conformance for reading leases back: by id (the orphan sweep's question, "is this
credential's lease still live?") and listed by state (``tether lease list``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from tests.conformance.test_task_store import DOCS, at, make_grant, make_intent, make_lease, make_task, stored
from tether.domain.tasks import TaskStatus, new_id
from tether.store.base import Storage


async def test_leases_are_read_by_id_and_listed_by_state(storage: Storage) -> None:
    task, other = make_task(), make_task()
    await stored(storage, task, other)
    grant, other_grant = make_grant(task), make_grant(other)
    await storage.create_grant(grant, now=at(0))
    await storage.create_grant(other_grant, now=at(0))
    live = make_lease(other_grant, ttl=1000)
    ending = make_lease(grant, ttl=1000)
    for lease in (live, ending):
        await storage.create_lease(lease)

    found = await storage.get_leases([live.id, ending.id, new_id("lse"), live.id])
    assert sorted(lease.id for lease in found) == sorted([live.id, ending.id])
    assert await storage.get_leases([]) == []
    assert await storage.get_leases([new_id("lse")]) == []

    assert {lease.id for lease in await storage.list_leases(at(1))} == {live.id, ending.id}
    assert {lease.id for lease in await storage.list_leases(at(1), state="active")} == {live.id, ending.id}
    await storage.end_tasks([task.id], TaskStatus.COMPLETED.value, "done", at(2))
    assert [lease.id for lease in await storage.list_leases(at(3), state="active")] == [live.id]
    assert [lease.id for lease in await storage.list_leases(at(3), state="revoking")] == [ending.id]
    assert await storage.list_leases(at(3), state="revoked") == []
    assert [lease.id for lease in await storage.list_leases(at(3), task_id=task.id)] == [ending.id]
    assert len(await storage.list_leases(at(3), limit=1)) == 1

    await storage.mark_lease_revoked(ending.id, at(4))
    assert await storage.list_leases(at(5), state="revoking") == []
    [revoked] = await storage.list_leases(at(5), state="revoked")
    assert (revoked.id, revoked.engine_revoked_at) == (ending.id, at(4))
    [again] = await storage.get_leases([ending.id])
    assert again.revoked_at == at(2)
    # Expired without an ending: no longer active, waiting for the engine.
    assert [lease.id for lease in await storage.list_leases(at(2000), state="revoking")] == [live.id]


async def test_a_context_change_that_revokes_a_grant_marks_its_leases_for_the_engine(
    storage: Storage,
) -> None:
    task = make_task()
    await storage.create_task(task)
    doomed, kept = make_grant(task), make_grant(task, secret=DOCS)
    await storage.create_grant(doomed, now=at(0))
    await storage.create_grant(kept, now=at(0))
    voided, alive = make_lease(doomed, ttl=1000), make_lease(kept, ttl=1000)
    for lease in (voided, alive):
        await storage.create_lease(lease)
    changed = replace(task, intent=make_intent(secrets=frozenset({DOCS})), context_version=2)
    await storage.update_task(
        changed, expected_version=1, revoke_grants=[doomed.id], reason="context_changed", now=at(5)
    )
    assert [lease.id for lease in await storage.leases_to_revoke(at(6))] == [voided.id]
    assert [lease.id for lease in await storage.list_leases(at(6), state="active")] == [alive.id]


async def test_incomplete_leases_are_live_ones_without_a_handle_recorded_before_a_time(
    storage: Storage,
) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task)
    await storage.create_grant(grant, now=at(0))
    issued = make_lease(grant, ttl=1000)  # has a handle
    bare = replace(make_lease(grant, ttl=1000), handle={})
    ended = replace(make_lease(grant, ttl=1000), handle={})
    for lease in (issued, bare, ended):
        await storage.create_lease(lease)
    await storage.mark_lease_revoked(ended.id, at(1))
    assert [lease.id for lease in await storage.incomplete_leases(at(10))] == [bare.id]
    assert await storage.incomplete_leases(bare.created_at - timedelta(seconds=1)) == []
    assert await storage.set_lease_handle(bare.id, {"role": "x"}, bare.expires_at)
    assert await storage.incomplete_leases(at(10)) == []
