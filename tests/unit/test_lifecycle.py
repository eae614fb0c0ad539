"""The lifecycle rules the store applies, as pure functions: ending a tree, an approval deciding its
pending task, approvals voided by a change of context."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from tests.conformance.test_task_store import NOW, make_task
from tether.domain.lifecycle import approval_voided, task_after_approval, tree_ending
from tether.domain.tasks import Approval, ApprovalStatus, Task, TaskStatus, new_id


def _pending() -> tuple[Task, Approval]:
    approval_id = new_id("apr")
    task = replace(make_task(), status=TaskStatus.PENDING_APPROVAL, approval_id=approval_id)
    approval = Approval(
        id=approval_id,
        task_id=task.id,
        agent_id=task.agent_id,
        action="open_task",
        resource=f"Agent::{task.agent_id}",
        context_hash=task.context_hash,
        status=ApprovalStatus.PENDING,
        policies=("needs-approval",),
        requested_at=NOW,
        expires_at=NOW + timedelta(hours=1),
    )
    return task, approval


def test_ending_a_task_ends_its_live_descendants_and_nothing_beside_them() -> None:
    root = make_task()
    child = make_task(parent=root)
    grandchild = make_task(parent=child)
    sibling = make_task(parent=root)
    live = [(t.id, t.chain) for t in (root, child, grandchild, sibling)]
    ending = tree_ending({child.id}, live)
    assert ending.direct == (child.id,)
    assert ending.descendants == (grandchild.id,)
    assert ending.all == (child.id, grandchild.id)


def test_ending_a_task_that_is_no_longer_live_ends_nothing() -> None:
    root = make_task()
    assert tree_ending({root.id}, []).all == ()


@given(st.integers(min_value=1, max_value=6), st.data())
def test_every_task_below_an_ended_one_ends(depth: int, data: st.DataObject) -> None:
    chain = [make_task()]
    for _ in range(depth):
        chain.append(make_task(parent=chain[-1]))
    cut = data.draw(st.integers(min_value=0, max_value=depth))
    ending = tree_ending({chain[cut].id}, [(t.id, t.chain) for t in chain])
    assert ending.direct == (chain[cut].id,)
    assert ending.descendants == tuple(t.id for t in chain[cut + 1 :])


def test_approving_the_awaited_open_task_approval_activates_the_task() -> None:
    task, approval = _pending()
    after = task_after_approval(task, approval, ApprovalStatus.APPROVED, NOW)
    assert after is not None
    assert after.status is TaskStatus.ACTIVE
    assert after.ended_at is None


def test_denying_the_awaited_open_task_approval_revokes_the_task() -> None:
    task, approval = _pending()
    after = task_after_approval(task, approval, ApprovalStatus.DENIED, NOW)
    assert after is not None
    assert (after.status, after.ended_at, after.end_reason) == (TaskStatus.REVOKED, NOW, "approval_denied")


def test_an_approval_for_another_context_action_or_task_changes_nothing() -> None:
    task, approval = _pending()
    assert (
        task_after_approval(task, replace(approval, context_hash="0" * 64), ApprovalStatus.APPROVED, NOW)
        is None
    )
    assert task_after_approval(task, replace(approval, action="issue"), ApprovalStatus.APPROVED, NOW) is None
    assert (
        task_after_approval(task, replace(approval, id=new_id("apr")), ApprovalStatus.APPROVED, NOW) is None
    )
    active = replace(task, status=TaskStatus.ACTIVE)
    assert task_after_approval(active, approval, ApprovalStatus.DENIED, NOW) is None
    assert task_after_approval(task, approval, ApprovalStatus.APPROVED, task.expires_at) is None


def test_a_context_change_voids_live_approvals_bound_to_another_context_only() -> None:
    assert approval_voided(ApprovalStatus.PENDING, "old", keep_hash="new")
    assert approval_voided(ApprovalStatus.APPROVED, "old", keep_hash="new")
    assert not approval_voided(ApprovalStatus.APPROVED, "new", keep_hash="new")
    assert not approval_voided(ApprovalStatus.DENIED, "old", keep_hash="new")
    assert approval_voided(ApprovalStatus.APPROVED, "new")  # the task ended: every live approval goes
