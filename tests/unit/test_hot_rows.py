"""The hot paths' SQL text and row parsing: column positions match the schema, and a parsed value is
reused only for the very same stored row."""

from __future__ import annotations

from tether.store import _hot as q
from tether.store import _parsed
from tether.store import schema as t


def test_the_use_row_parts_hold_each_tables_columns_in_order() -> None:
    labels = q.GRANT_FOR_USE.columns
    parts = q.USE_PARTS
    assert labels[parts.grant] == tuple("g_" + c.name for c in t.grants.c)
    assert labels[parts.task] == tuple("t_" + c.name for c in t.tasks.c)
    assert labels[parts.secret] == tuple("s_" + c.name for c in t.secrets.c)
    assert labels[parts.destination] == tuple("d_" + c.name for c in t.destinations.c)
    assert labels[-1] == "policy_version"


def test_postgres_placeholders_are_numbered_in_order() -> None:
    assert q.INJECT_GRANT_FOR_USE.sql.count("?") == 4
    assert "$4" in q.INJECT_GRANT_FOR_USE.pg
    assert "?" not in q.INJECT_GRANT_FOR_USE.pg
    assert q.INSERT_TASK.pg.count("$") == len(t.tasks.c)


def _task_row(**changes: object) -> tuple[object, ...]:
    values = {
        "id": "tsk_" + "a" * 22,
        "agent_id": "spiffe://acme.test/agent/bot",
        "status": "active",
        "purpose": "deploy",
        "objective": "ship it",
        "objective_sha256": "0" * 64,
        "sensitivity": 1,
        "secrets": '["prod/x"]',
        "destinations": "[]",
        "tools": "[]",
        "created_at_us": 1_700_000_000_000_000,
        "expires_at_us": 1_700_000_600_000_000,
        "ended_at_us": None,
        "end_reason": None,
        "parent_id": None,
        "root_id": "tsk_" + "a" * 22,
        "depth": 0,
        "chain": "[]",
        "context_version": 1,
        "approval_id": None,
    }
    values.update(changes)
    return tuple(values[c.name] for c in t.tasks.c)


def test_the_same_row_gives_the_same_task_and_a_changed_row_a_new_one() -> None:
    active = _parsed.task(_task_row())
    assert _parsed.task(_task_row()) is active
    revoked = _parsed.task(
        _task_row(status="revoked", ended_at_us=1_700_000_100_000_000, end_reason="revoked")
    )
    assert revoked is not active
    assert (active.status.value, revoked.status.value) == ("active", "revoked")
