"""What a decision event records of its inputs (``tether.domain.inputs``): snapshots named by a hash
of their canonical JSON, the per-use fields inline, each snapshot written once per process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tether.domain.inputs import (
    MAX_INLINE_PATH_CHARS,
    SNAPSHOT_HASH_CHARS,
    SnapshotMemo,
    decision_inputs,
    snapshot_of,
)
from tether.domain.tasks import Intent, Task, decision_context, new_id

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
AGENT = (
    "Agent",
    "spiffe://acme.test/agent/bot",
    {"team": "t", "environment": "prod", "owner": "o", "labels": ["a"]},
)
SECRET = (
    "Secret",
    "prod/x",
    {"path": "prod/x", "sensitivity": 1, "purposes": ["deploy"], "destinations": [], "owner": "o"},
)


def _task() -> Task:
    return Task(
        id=new_id("tsk"),
        agent_id=AGENT[1],
        intent=Intent(purpose="deploy", objective="x", sensitivity=1, secrets=frozenset({"prod/x"})),
        status="active",
        created_at=NOW - timedelta(seconds=30),
        expires_at=NOW + timedelta(seconds=600),
    )


def test_a_snapshot_is_named_by_its_content_whatever_the_key_order() -> None:
    one = snapshot_of("entity", {"a": 1, "b": [1, 2]})
    other = snapshot_of("entity", {"b": [1, 2], "a": 1})
    assert one == other
    assert len(one.hash) == SNAPSHOT_HASH_CHARS
    assert snapshot_of("task", {"a": 1, "b": [1, 2]}).hash != one.hash  # the kind is part of it


def test_inputs_name_snapshots_and_keep_the_per_use_fields_inline() -> None:
    memo = SnapshotMemo()
    task = _task()
    first = decision_inputs(
        memo, "activate", AGENT, SECRET, decision_context(task, NOW, mode="inject", uses=2), 3
    )
    data = first.data
    assert data["action"] == "activate"
    assert data["policy_version"] == 3
    assert data["ctx"]["uses"] == 2
    assert data["ctx"]["age_seconds"] == 30
    assert data["ctx"]["remaining_seconds"] == 600
    assert "task" not in data["ctx"]
    assert {s.hash for s in first.snapshots} == {data["principal"], data["resource"], data["task"]}
    # Later, the same task: the task's snapshot is the same (age and uses are not part of it).
    later = decision_inputs(
        memo, "activate", AGENT, SECRET, decision_context(task, NOW + timedelta(seconds=9), uses=3), 3
    )
    assert later.data["task"] == data["task"]
    assert len(later.snapshots) == 3  # not yet known to be stored
    memo.stored(first.snapshots)
    again = decision_inputs(memo, "activate", AGENT, SECRET, decision_context(task, NOW, uses=4), 3)
    assert again.snapshots == ()  # written once per process
    assert again.approved().data["approved"] is True


def test_a_path_too_long_to_record_makes_the_decision_unrecorded() -> None:
    context = decision_context(_task(), NOW, path="/" + "x" * MAX_INLINE_PATH_CHARS)
    inputs = decision_inputs(SnapshotMemo(), "activate", AGENT, SECRET, context, 1)
    assert "unrecorded" in inputs.data
    assert inputs.snapshots == ()
