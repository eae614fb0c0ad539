"""Storage conformance for tasks, grants, approvals and leases.

Each test runs once per backend through the ``storage`` fixture (SQLite always, PostgreSQL when
``TETHER_TEST_PG_DSN`` is set). Times are explicit: nothing here reads a clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tether.crypto.envelope import EncryptedValue
from tether.domain.secrets import SecretMetadata, Sensitivity
from tether.domain.tasks import (
    Approval,
    ApprovalStatus,
    Ended,
    Grant,
    GrantMode,
    Intent,
    Lease,
    Task,
    TaskStatus,
    new_id,
)
from tether.errors import ConflictError, NotFoundError, StorageError
from tether.store.base import Storage

NOW = datetime(2026, 1, 1, 12, 30, 15, 123456, tzinfo=UTC)
AGENT = "spiffe://acme.test/agent/deploy-bot"
OTHER = "spiffe://acme.test/agent/other-bot"
GITHUB = "prod/github/token"
DOCS = "prod/docs/token"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def make_intent(**kw: Any) -> Intent:
    values: dict[str, Any] = {
        "purpose": "deploy",
        "objective": "ship release 1.2",
        "sensitivity": Sensitivity.INTERNAL,
        "secrets": frozenset({GITHUB, DOCS}),
        "destinations": frozenset({"github"}),
        "tools": frozenset({"git:push"}),
    }
    values.update(kw)
    return Intent(**values)


def make_task(
    *,
    parent: Task | None = None,
    status: TaskStatus = TaskStatus.ACTIVE,
    ttl: float = 600,
    created: datetime = NOW,
    agent: str = AGENT,
    task_id: str | None = None,
    **intent: Any,
) -> Task:
    task_id = task_id or new_id("tsk")
    chain = () if parent is None else (*parent.chain, parent.id)
    return Task(
        id=task_id,
        agent_id=agent,
        intent=make_intent(**intent),
        status=status,
        created_at=created,
        expires_at=created + timedelta(seconds=ttl),
        parent_id=None if parent is None else parent.id,
        root_id=task_id if parent is None else parent.root_id,
        depth=len(chain),
        chain=chain,
    )


def make_grant(
    task: Task,
    *,
    secret: str | None = GITHUB,
    mode: GrantMode = GrantMode.REVEAL,
    max_uses: int | None = None,
    ttl: float = 300,
    jkt: str = "jkt-key-1",
    created: datetime = NOW,
) -> Grant:
    return Grant(
        id=new_id("grt"),
        task_id=task.id,
        agent_id=task.agent_id,
        jkt=jkt,
        secret=secret,
        destination="github",
        mode=mode,
        created_at=created,
        expires_at=created + timedelta(seconds=ttl),
        max_uses=max_uses,
    )


def make_approval(
    task: Task,
    *,
    action: str = "issue",
    resource: str = f"Secret::{GITHUB}",
    context_hash: str | None = None,
    requested: datetime = NOW,
    ttl: float = 900,
    approval_id: str | None = None,
) -> Approval:
    return Approval(
        id=approval_id or new_id("apr"),
        task_id=task.id,
        agent_id=task.agent_id,
        action=action,
        resource=resource,
        context_hash=context_hash or task.context_hash,
        status=ApprovalStatus.PENDING,
        policies=("restricted-incident-with-approval",),
        requested_at=requested,
        expires_at=requested + timedelta(seconds=ttl),
    )


def make_lease(grant: Grant, *, ttl: float = 120) -> Lease:
    return Lease(
        id=new_id("lse"),
        grant_id=grant.id,
        task_id=grant.task_id,
        engine="static",
        handle={"secret": grant.secret, "version": 1},
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=ttl),
    )


def encrypted(tag: bytes) -> EncryptedValue:
    return EncryptedValue(1, b"wrapped-" + tag.ljust(32, b"."), b"ciphertext-" + tag.ljust(32, b"."))


async def write_secret(storage: Storage, path: str, value: EncryptedValue, version: int = 0) -> None:
    metadata = SecretMetadata(
        sensitivity=Sensitivity.INTERNAL, purposes=frozenset({"deploy"}), destinations=frozenset({"github"})
    )
    await storage.append_secret_version(
        path,
        value,
        expected_version=version,
        metadata=metadata if version == 0 else None,
        actor="alice",
        now=NOW,
    )


async def stored(storage: Storage, *tasks: Task) -> None:
    for task in tasks:
        await storage.create_task(task)


# -- tasks -------------------------------------------------------------------------------------
async def test_task_round_trips_with_every_field(storage: Storage) -> None:
    root = make_task()
    child = replace(
        make_task(parent=root, ttl=300, sensitivity=Sensitivity.PUBLIC, tools=frozenset()),
        context_version=3,
        approval_id=new_id("apr"),
        status=TaskStatus.PENDING_APPROVAL,
    )
    await stored(storage, root, child)
    assert await storage.get_task(root.id) == root
    assert await storage.get_task(child.id) == child
    assert (await storage.get_task(child.id)).context_hash == child.context_hash  # type: ignore[union-attr]
    assert await storage.get_task(new_id("tsk")) is None


async def test_task_id_taken_is_a_conflict(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    with pytest.raises(ConflictError):
        await storage.create_task(replace(task, intent=make_intent(objective="something else")))
    assert await storage.get_task(task.id) == task


@pytest.mark.parametrize(
    "parent_state", ["missing", "completed", "pending_approval", "expired"], ids=lambda s: f"parent-{s}"
)
async def test_child_task_needs_an_active_parent(storage: Storage, parent_state: str) -> None:
    parent = make_task(ttl=60)
    if parent_state == "pending_approval":
        parent = replace(parent, status=TaskStatus.PENDING_APPROVAL)
    if parent_state != "missing":
        await storage.create_task(parent)
    if parent_state == "completed":
        await storage.end_tasks([parent.id], TaskStatus.COMPLETED.value, "done", at(1))
    created = at(60) if parent_state == "expired" else at(1)
    child = make_task(parent=parent, created=created, ttl=10)
    with pytest.raises(ConflictError):
        await storage.create_task(child)
    assert await storage.get_task(child.id) is None


async def test_list_tasks_filters_and_pages_by_id(storage: Storage) -> None:
    a = make_task()
    b = make_task(agent=OTHER)
    a_child = make_task(parent=a)
    ended = make_task()
    await stored(storage, a, b, a_child, ended)
    await storage.end_tasks([ended.id], TaskStatus.FAILED.value, "broke", at(1))

    everything = await storage.list_tasks()
    assert [t.id for t in everything] == sorted(t.id for t in (a, b, a_child, ended))
    assert {t.id for t in await storage.list_tasks(agent_id=OTHER)} == {b.id}
    assert {t.id for t in await storage.list_tasks(agent_id=AGENT, statuses=["active"])} == {a.id, a_child.id}
    assert {t.id for t in await storage.list_tasks(statuses=["failed", "completed"])} == {ended.id}
    assert {t.id for t in await storage.list_tasks(root_id=a.id)} == {a.id, a_child.id}

    first = await storage.list_tasks(limit=2)
    rest = await storage.list_tasks(after=first[-1].id, limit=10)
    assert [t.id for t in first + rest] == [t.id for t in everything]
    with pytest.raises(StorageError):
        await storage.list_tasks(limit=0)


async def test_update_task_stores_the_new_context_revokes_and_voids(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    doomed, kept = make_grant(task), make_grant(task, secret=DOCS)
    await storage.create_grant(doomed, now=NOW)
    await storage.create_grant(kept, now=NOW)
    pending = await storage.open_approval(make_approval(task), NOW)

    changed = replace(task, intent=make_intent(secrets=frozenset({DOCS})), context_version=2)
    await storage.update_task(
        changed, expected_version=1, revoke_grants=[doomed.id], reason="context_changed", now=at(5)
    )
    assert await storage.get_task(task.id) == changed
    revoked = await storage.get_grant(doomed.id)
    assert revoked is not None
    assert (revoked.revoked_at, revoked.revoke_reason) == (at(5), "context_changed")
    assert (await storage.get_grant(kept.id)).revoked_at is None  # type: ignore[union-attr]
    assert (await storage.get_approval(pending.id)).status is ApprovalStatus.VOIDED  # type: ignore[union-attr]


async def test_update_task_refuses_a_stale_version_an_ended_or_an_expired_task(storage: Storage) -> None:
    task = make_task(ttl=60)
    await storage.create_task(task)
    changed = replace(task, intent=make_intent(objective="v2"), context_version=2)
    with pytest.raises(ConflictError):
        await storage.update_task(changed, expected_version=7, revoke_grants=[], reason="x", now=at(1))
    with pytest.raises(ConflictError):  # expired, swept or not
        await storage.update_task(changed, expected_version=1, revoke_grants=[], reason="x", now=at(60))
    await storage.end_tasks([task.id], TaskStatus.COMPLETED.value, "done", at(2))
    with pytest.raises(ConflictError):
        await storage.update_task(changed, expected_version=1, revoke_grants=[], reason="x", now=at(3))
    assert (await storage.get_task(task.id)).context_version == 1  # type: ignore[union-attr]


# -- grants ------------------------------------------------------------------------------------
async def test_grant_round_trips_and_lists_oldest_first(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    first = make_grant(task, max_uses=3)
    second = make_grant(task, secret=None, mode=GrantMode.INJECT, created=at(1))
    await storage.create_grant(second, now=at(1))
    await storage.create_grant(first, now=NOW)
    assert await storage.get_grant(first.id) == first
    assert await storage.get_grant(second.id) == second
    assert await storage.get_grant(new_id("grt")) is None
    assert await storage.list_grants(task.id) == [first, second]
    assert await storage.list_grants(new_id("tsk")) == []
    with pytest.raises(ConflictError):
        await storage.create_grant(first, now=NOW)


@pytest.mark.parametrize("state", ["missing", "pending_approval", "completed", "revoked", "expired"])
async def test_create_grant_is_refused_for_a_task_that_is_not_active(storage: Storage, state: str) -> None:
    task = make_task(ttl=60)
    if state == "pending_approval":
        task = replace(task, status=TaskStatus.PENDING_APPROVAL)
    if state != "missing":
        await storage.create_task(task)
    if state in {"completed", "revoked"}:
        await storage.end_tasks([task.id], state, "ended", at(1))
    now = at(60) if state == "expired" else at(2)
    grant = make_grant(task, created=now, ttl=5)
    with pytest.raises(ConflictError):
        await storage.create_grant(grant, now=now)
    assert await storage.get_grant(grant.id) is None


async def test_consume_grant_use_counts_until_the_budget_is_spent(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task, max_uses=2)
    unlimited = make_grant(task)
    await storage.create_grant(grant, now=NOW)
    await storage.create_grant(unlimited, now=NOW)
    assert await storage.consume_grant_use(grant.id, task.id, at(1)) == 1
    assert await storage.consume_grant_use(grant.id, task.id, at(2)) == 2
    assert await storage.consume_grant_use(grant.id, task.id, at(3)) is None
    assert [await storage.consume_grant_use(unlimited.id, task.id, at(1)) for _ in range(3)] == [1, 2, 3]
    after = await storage.get_grant(grant.id)
    assert after is not None
    assert (after.uses, after.uses_left) == (2, 0)


async def test_consume_grant_use_refuses_what_cannot_be_used(storage: Storage) -> None:
    task, other = make_task(ttl=100), make_task()
    await stored(storage, task, other)
    short = make_grant(task, ttl=10)
    revoked = make_grant(task)
    live = make_grant(task)
    for grant in (short, revoked, live):
        await storage.create_grant(grant, now=NOW)
    await storage.revoke_grants(grant_ids=[revoked.id], reason="x", now=at(1))

    assert await storage.consume_grant_use(short.id, task.id, at(10)) is None  # grant expired
    assert await storage.consume_grant_use(revoked.id, task.id, at(2)) is None
    assert await storage.consume_grant_use(live.id, other.id, at(2)) is None  # wrong task
    assert await storage.consume_grant_use(new_id("grt"), task.id, at(2)) is None
    assert await storage.consume_grant_use(live.id, task.id, at(100)) is None  # task expired
    assert await storage.consume_grant_use(live.id, task.id, at(99)) == 1
    await storage.end_tasks([task.id], TaskStatus.COMPLETED.value, "done", at(99))
    assert await storage.consume_grant_use(live.id, task.id, at(99)) is None


async def test_consume_grant_use_is_atomic_under_concurrency(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task, max_uses=5)
    await storage.create_grant(grant, now=NOW)
    results = await asyncio.gather(*(storage.consume_grant_use(grant.id, task.id, at(1)) for _ in range(20)))
    counted = sorted(r for r in results if r is not None)
    assert counted == [1, 2, 3, 4, 5]
    assert results.count(None) == 15
    assert (await storage.get_grant(grant.id)).uses == 5  # type: ignore[union-attr]


async def test_revoke_grants_by_secret_and_by_id(storage: Storage) -> None:
    one, two = make_task(), make_task(agent=OTHER)
    await stored(storage, one, two)
    g1, g2, d1 = make_grant(one), make_grant(two), make_grant(one, secret=DOCS)
    for grant in (g1, g2, d1):
        await storage.create_grant(grant, now=NOW)
    assert await storage.revoke_grants(reason="nothing named", now=at(1)) == 0
    assert await storage.revoke_grants(secret=GITHUB, reason="leaked", now=at(2)) == 2
    assert await storage.revoke_grants(secret=GITHUB, reason="again", now=at(3)) == 0  # already revoked
    for grant in (g1, g2):
        after = await storage.get_grant(grant.id)
        assert after is not None
        assert (after.revoked_at, after.revoke_reason) == (at(2), "leaked")
    assert (await storage.get_grant(d1.id)).revoked_at is None  # type: ignore[union-attr]
    assert await storage.revoke_grants(grant_ids=[d1.id], reason="by id", now=at(4)) == 1
    assert (await storage.get_grant(d1.id)).revoke_reason == "by id"  # type: ignore[union-attr]


async def test_grant_for_use_reads_grant_task_and_current_encrypted_value(storage: Storage) -> None:
    await write_secret(storage, GITHUB, encrypted(b"v1"))
    await write_secret(storage, GITHUB, encrypted(b"v2"), version=1)
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task)
    await storage.create_grant(grant, now=NOW)

    use = await storage.grant_for_use(grant.id)
    assert use is not None
    assert use.grant == grant
    assert use.task == task
    assert use.secret is not None
    assert use.secret.path == GITHUB
    assert use.secret.current_version == 2
    assert use.value is not None
    assert (use.value.path, use.value.version, use.value.value) == (GITHUB, 2, encrypted(b"v2"))
    assert use.value == await storage.read_secret_value(GITHUB)
    assert await storage.grant_for_use(new_id("grt")) is None

    assert await storage.delete_secret(GITHUB, now=at(1))
    gone = await storage.grant_for_use(grant.id)
    assert gone is not None
    assert gone.secret is None
    assert gone.value is None
    assert gone.grant == grant


async def test_grant_for_use_of_a_destination_grant_has_no_secret(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task, secret=None, mode=GrantMode.INJECT)
    await storage.create_grant(grant, now=NOW)
    use = await storage.grant_for_use(grant.id)
    assert use is not None
    assert (use.secret, use.value) == (None, None)


# -- ending tasks ------------------------------------------------------------------------------
async def test_end_tasks_cascades_to_descendants_only(storage: Storage) -> None:
    root = make_task()
    child = make_task(parent=root)
    grandchild = make_task(parent=child)
    sibling = make_task(parent=root)
    stranger = make_task()
    await stored(storage, root, child, grandchild, sibling, stranger)
    grants = {t.id: make_grant(t) for t in (root, child, grandchild, sibling, stranger)}
    for grant in grants.values():
        await storage.create_grant(grant, now=NOW)
    lease = make_lease(grants[grandchild.id])
    await storage.create_lease(lease)
    approval = await storage.open_approval(make_approval(grandchild), NOW)

    ended = await storage.end_tasks([child.id], TaskStatus.COMPLETED.value, "done", at(5))
    assert set(ended.task_ids) == {child.id, grandchild.id}
    assert ended.grants_revoked == 2
    assert [item.id for item in ended.leases] == [lease.id]

    after = {t.id: await storage.get_task(t.id) for t in (root, child, grandchild, sibling, stranger)}
    assert after[child.id] is not None
    assert (after[child.id].status, after[child.id].end_reason) == (TaskStatus.COMPLETED, "done")  # type: ignore[union-attr]
    assert after[child.id].ended_at == at(5)  # type: ignore[union-attr]
    assert (after[grandchild.id].status, after[grandchild.id].end_reason) == (  # type: ignore[union-attr]
        TaskStatus.REVOKED,
        "parent_ended",
    )
    for untouched in (root, sibling, stranger):
        assert after[untouched.id] == untouched
        assert (await storage.get_grant(grants[untouched.id].id)).revoked_at is None  # type: ignore[union-attr]
    for ended_id in (child.id, grandchild.id):
        assert (await storage.get_grant(grants[ended_id].id)).revoked_at == at(5)  # type: ignore[union-attr]
    assert (await storage.get_approval(approval.id)).status is ApprovalStatus.VOIDED  # type: ignore[union-attr]

    assert await storage.end_tasks([child.id], TaskStatus.REVOKED.value, "again", at(6)) == Ended()
    assert await storage.end_tasks([new_id("tsk")], TaskStatus.REVOKED.value, "nobody", at(6)) == Ended()
    assert (await storage.get_task(child.id)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


async def test_ending_the_root_ends_the_whole_tree(storage: Storage) -> None:
    root = make_task()
    child = make_task(parent=root)
    grandchild = make_task(parent=child)
    await stored(storage, root, child, grandchild)
    ended = await storage.end_tasks([root.id], TaskStatus.REVOKED.value, "operator", at(1))
    assert set(ended.task_ids) == {root.id, child.id, grandchild.id}
    statuses = {t.id: (await storage.get_task(t.id)).status for t in (root, child, grandchild)}  # type: ignore[union-attr]
    assert set(statuses.values()) == {TaskStatus.REVOKED}


async def test_expire_tasks_ends_only_tasks_past_their_lifetime(storage: Storage) -> None:
    short = make_task(ttl=10)
    shorter = make_task(ttl=5)
    long = make_task(ttl=1000)
    pending = make_task(ttl=10, status=TaskStatus.PENDING_APPROVAL)
    done = make_task(ttl=10)
    await stored(storage, short, shorter, long, pending, done)
    await storage.end_tasks([done.id], TaskStatus.COMPLETED.value, "done", at(1))
    grant = make_grant(short)
    await storage.create_grant(grant, now=NOW)

    assert await storage.expire_tasks(at(4)) == Ended()
    first = await storage.expire_tasks(at(10), limit=1)
    assert first.task_ids == (shorter.id,)  # soonest first
    rest = await storage.expire_tasks(at(10))
    assert set(rest.task_ids) == {short.id, pending.id}
    assert rest.grants_revoked == 1
    for task in (short, shorter, pending):
        after = await storage.get_task(task.id)
        assert after is not None
        assert (after.status, after.end_reason, after.ended_at) == (TaskStatus.EXPIRED, "expired", at(10))
    assert (await storage.get_task(done.id)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    assert (await storage.get_task(long.id)).status is TaskStatus.ACTIVE  # type: ignore[union-attr]
    assert (await storage.get_grant(grant.id)).revoke_reason == "expired"  # type: ignore[union-attr]
    assert await storage.expire_tasks(at(10)) == Ended()


# -- approvals ---------------------------------------------------------------------------------
async def test_approval_round_trips(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    approval = make_approval(task)
    assert await storage.open_approval(approval, NOW) == approval
    assert await storage.get_approval(approval.id) == approval
    assert await storage.get_approval(new_id("apr")) is None


async def test_open_approval_reuses_a_live_one_for_the_same_context(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    first = await storage.open_approval(make_approval(task), NOW)
    again = await storage.open_approval(make_approval(task, requested=at(1)), at(1))
    assert again == first
    other_resource = await storage.open_approval(make_approval(task, resource=f"Secret::{DOCS}"), at(1))
    other_action = await storage.open_approval(make_approval(task, action="activate"), at(1))
    other_context = await storage.open_approval(make_approval(task, context_hash="0" * 64), at(1))
    ids = {first.id, other_resource.id, other_action.id, other_context.id}
    assert len(ids) == 4

    # Approved is still live: reused. Denied or expired is not.
    await storage.decide_approval(
        first.id, "approved", decided_by="carol", reason="ok", now=at(2), expires_at=at(100)
    )
    assert (await storage.open_approval(make_approval(task, requested=at(3)), at(3))).id == first.id
    assert (await storage.open_approval(make_approval(task, requested=at(100)), at(100))).id != first.id


async def test_open_approval_dedups_under_concurrency(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    opened = await asyncio.gather(*(storage.open_approval(make_approval(task), NOW) for _ in range(20)))
    assert len({approval.id for approval in opened}) == 1
    assert len(await storage.list_approvals(statuses=["pending"])) == 1


async def test_find_approval_matches_only_an_approved_unexpired_exact_one(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    approval = await storage.open_approval(make_approval(task), NOW)
    key = (task.id, "issue", f"Secret::{GITHUB}", task.context_hash)
    assert await storage.find_approval(*key, at(1)) is None  # pending
    await storage.decide_approval(
        approval.id, "approved", decided_by="carol", reason="ok", now=at(1), expires_at=at(60)
    )
    found = await storage.find_approval(*key, at(2))
    assert found is not None
    assert found.id == approval.id
    assert found.status is ApprovalStatus.APPROVED
    assert await storage.find_approval(*key, at(60)) is None  # expired
    assert await storage.find_approval(task.id, "activate", key[2], key[3], at(2)) is None
    assert await storage.find_approval(task.id, "issue", f"Secret::{DOCS}", key[3], at(2)) is None
    assert await storage.find_approval(task.id, "issue", key[2], "f" * 64, at(2)) is None


async def test_deciding_an_open_task_approval_activates_the_pending_task(storage: Storage) -> None:
    task = make_task(status=TaskStatus.PENDING_APPROVAL)
    approval = make_approval(task, action="open_task", resource=f"Agent::{AGENT}")
    await storage.create_task(replace(task, approval_id=approval.id))
    await storage.open_approval(approval, NOW)
    decided, changed = await storage.decide_approval(
        approval.id, "approved", decided_by="carol", reason="go", now=at(5), expires_at=at(905)
    )
    assert decided.status is ApprovalStatus.APPROVED
    assert (decided.decided_by, decided.reason, decided.decided_at, decided.expires_at) == (
        "carol",
        "go",
        at(5),
        at(905),
    )
    assert await storage.get_approval(approval.id) == decided
    assert changed is not None
    assert changed.status is TaskStatus.ACTIVE
    assert (await storage.get_task(task.id)).status is TaskStatus.ACTIVE  # type: ignore[union-attr]


async def test_denying_an_open_task_approval_revokes_the_pending_task(storage: Storage) -> None:
    task = make_task(status=TaskStatus.PENDING_APPROVAL)
    approval = make_approval(task, action="open_task", resource=f"Agent::{AGENT}")
    task = replace(task, approval_id=approval.id)  # the approval the task waits for
    await storage.create_task(task)
    await storage.open_approval(approval, NOW)
    decided, changed = await storage.decide_approval(
        approval.id, "denied", decided_by="carol", reason="no", now=at(5), expires_at=at(905)
    )
    assert decided.status is ApprovalStatus.DENIED
    assert changed is not None
    assert (changed.status, changed.end_reason, changed.ended_at) == (
        TaskStatus.REVOKED,
        "approval_denied",
        at(5),
    )
    assert await storage.get_task(task.id) == changed


async def test_deciding_an_issue_approval_leaves_the_task_alone(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    approval = await storage.open_approval(make_approval(task), NOW)
    _, changed = await storage.decide_approval(
        approval.id, "denied", decided_by="carol", reason="no", now=at(1), expires_at=at(2)
    )
    assert changed is None
    assert await storage.get_task(task.id) == task


async def test_decide_twice_missing_or_expired_is_refused(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    approval = await storage.open_approval(make_approval(task, ttl=60), NOW)
    kwargs: dict[str, Any] = {"decided_by": "carol", "reason": "ok", "expires_at": at(500)}
    await storage.decide_approval(approval.id, "approved", now=at(1), **kwargs)
    with pytest.raises(ConflictError):
        await storage.decide_approval(approval.id, "denied", now=at(2), **kwargs)
    assert (await storage.get_approval(approval.id)).status is ApprovalStatus.APPROVED  # type: ignore[union-attr]
    with pytest.raises(NotFoundError):
        await storage.decide_approval(new_id("apr"), "approved", now=at(2), **kwargs)
    late = await storage.open_approval(make_approval(task, action="activate", ttl=60), NOW)
    with pytest.raises(ConflictError):
        await storage.decide_approval(late.id, "approved", now=at(60), **kwargs)


async def test_deciding_concurrently_only_one_wins(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    approval = await storage.open_approval(make_approval(task), NOW)
    results = await asyncio.gather(
        *(
            storage.decide_approval(
                approval.id, status, decided_by=f"op{i}", reason="r", now=at(1), expires_at=at(100)
            )
            for i, status in enumerate(["approved", "denied"] * 5)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, ConflictError) for r in results if isinstance(r, BaseException))
    final = await storage.get_approval(approval.id)
    assert final is not None
    assert final.status is winners[0][0].status


async def test_list_approvals_filters_by_status_and_pages(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    opened = [
        await storage.open_approval(make_approval(task, resource=f"Secret::prod/s{i}/key"), NOW)
        for i in range(4)
    ]
    await storage.decide_approval(
        opened[0].id, "approved", decided_by="carol", reason="ok", now=at(1), expires_at=at(100)
    )
    assert {a.id for a in await storage.list_approvals(statuses=["pending"])} == {a.id for a in opened[1:]}
    assert [a.id for a in await storage.list_approvals(statuses=["approved"])] == [opened[0].id]
    everything = await storage.list_approvals()
    first = await storage.list_approvals(limit=2)
    rest = await storage.list_approvals(after=first[-1].id)
    assert [a.id for a in first + rest] == [a.id for a in everything]
    with pytest.raises(StorageError):
        await storage.list_approvals(limit=0)


async def test_list_approvals_is_oldest_first(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    for i, letter in enumerate("zmA"):  # ids sort opposite to request time
        approval = make_approval(
            task,
            resource=f"Secret::prod/s{i}/key",
            requested=at(i),
            approval_id="apr_" + letter * 22,
        )
        await storage.open_approval(approval, at(i))
    listed = await storage.list_approvals()
    assert [a.requested_at for a in listed] == [at(0), at(1), at(2)]


# -- leases ------------------------------------------------------------------------------------
async def test_leases_to_revoke_are_revoked_or_expired_until_marked(storage: Storage) -> None:
    task, other = make_task(), make_task()
    await stored(storage, task, other)
    grant, other_grant = make_grant(task), make_grant(other)
    await storage.create_grant(grant, now=NOW)
    await storage.create_grant(other_grant, now=NOW)
    live = make_lease(other_grant, ttl=1000)
    expiring = make_lease(other_grant, ttl=30)
    ended = make_lease(grant, ttl=1000)
    for lease in (live, expiring, ended):
        await storage.create_lease(lease)
    with pytest.raises(ConflictError):
        await storage.create_lease(live)

    assert await storage.leases_to_revoke(at(1)) == []
    result = await storage.end_tasks([task.id], TaskStatus.COMPLETED.value, "done", at(2))
    assert [lease.id for lease in result.leases] == [ended.id]
    assert dict(result.leases[0].handle) == {"secret": GITHUB, "version": 1}
    pending = await storage.leases_to_revoke(at(2))
    assert [lease.id for lease in pending] == [ended.id]
    assert pending[0].revoked_at == at(2)
    assert pending[0].engine_revoked_at is None

    assert {lease.id for lease in await storage.leases_to_revoke(at(30))} == {ended.id, expiring.id}
    assert [lease.id for lease in await storage.leases_to_revoke(at(30), limit=1)] == [expiring.id]
    await storage.mark_lease_revoked(ended.id, at(31))
    await storage.mark_lease_revoked(expiring.id, at(31))
    await storage.mark_lease_revoked(expiring.id, at(32))  # idempotent
    assert await storage.leases_to_revoke(at(40)) == []
    again = await storage.end_tasks([other.id], TaskStatus.COMPLETED.value, "done", at(41))
    assert [lease.id for lease in again.leases] == [live.id]  # the engine already revoked `expiring`


async def test_revoking_a_secrets_grants_marks_their_leases_for_engine_revocation(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task)
    await storage.create_grant(grant, now=NOW)
    lease = make_lease(grant)
    await storage.create_lease(lease)
    assert await storage.leases_to_revoke(at(1)) == []
    assert await storage.revoke_grants(secret=GITHUB, reason="rotated", now=at(2)) == 1
    assert [pending.id for pending in await storage.leases_to_revoke(at(3))] == [lease.id]


async def test_a_lease_revoked_while_its_handle_was_unknown_is_pending_again(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task)
    await storage.create_grant(grant, now=NOW)
    lease = make_lease(grant)
    await storage.create_lease(lease)
    ended = await storage.end_tasks([task.id], TaskStatus.COMPLETED.value, "done", at(1))
    assert [item.id for item in ended.leases] == [lease.id]
    await storage.mark_lease_revoked(lease.id, at(2))  # revoked by lease id, before the handle was known
    assert await storage.set_lease_handle(lease.id, {"role": "r1"}, at(60)) is False
    (pending,) = await storage.leases_to_revoke(at(3))
    assert pending.id == lease.id
    assert dict(pending.handle) == {"role": "r1"}


async def test_a_lease_cannot_be_recorded_for_an_ended_task(storage: Storage) -> None:
    task = make_task()
    await storage.create_task(task)
    grant = make_grant(task)
    await storage.create_grant(grant, now=NOW)
    await storage.end_tasks([task.id], TaskStatus.COMPLETED.value, "done", at(1))
    with pytest.raises(ConflictError):
        await storage.create_lease(make_lease(grant))
