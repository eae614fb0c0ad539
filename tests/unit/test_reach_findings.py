"""Findings from reach rules (pure): restricted without approval, revealable and injected, unused
reach, grants never used, tasks near the maximum lifetime; windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tether.domain.tasks import Grant, Intent, Task, new_id
from tether.errors import InvalidInputError
from tether.policy import Entity, compile_policy_set
from tether.reach import Grid, SecretTarget, compute_reach, group_agents
from tether.reach.findings import find, parse_window

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BOT = "spiffe://acme.test/agent/bot"


def _rules(text: str, sensitivity: int) -> list:  # type: ignore[type-arg]
    compiled = compile_policy_set(text)
    agent = Entity("Agent", BOT, {"team": "t", "environment": "prod", "owner": "o", "labels": []})
    secret = Entity(
        "Secret",
        "prod/x",
        {"path": "prod/x", "sensitivity": sensitivity, "purposes": [], "destinations": [], "owner": ""},
    )
    grid = Grid(purposes=("deploy",), destinations=("api",), max_depth=0)
    return compute_reach(compiled, group_agents(compiled, [("bot", agent)]), [SecretTarget(secret)], grid)


def test_each_kind_of_finding_names_its_policies() -> None:
    rules = _rules('@id("open") permit(principal, action, resource is Secret);', sensitivity=3)
    task = Task(
        id=new_id("tsk"),
        agent_id=BOT,
        intent=Intent(purpose="deploy", objective="x", sensitivity=3, secrets=frozenset({"prod/x"})),
        status="active",
        created_at=NOW - timedelta(hours=1),
        expires_at=NOW + timedelta(hours=23),
    )
    grant = Grant(
        id=new_id("grt"),
        task_id=task.id,
        agent_id=BOT,
        jkt="j",
        secret="prod/x",
        destination="api",
        mode="inject",
        created_at=NOW - timedelta(minutes=5),
        expires_at=NOW + timedelta(minutes=5),
    )
    found = find(
        rules,
        {"prod/x": 3},
        {"prod/x": ["api"]},
        set(),
        [grant],
        [task],
        {BOT: "bot"},
        max_task_ttl_seconds=86_400,
        window="30d",
        now=NOW,
    )
    kinds = {f.kind: f for f in found}
    assert set(kinds) == {
        "restricted-without-approval",
        "revealable-injected",
        "reach-never-used",
        "grant-never-activated",
        "task-near-max-lifetime",
    }
    assert kinds["restricted-without-approval"].policies == ("open",)
    assert kinds["revealable-injected"].subject == "destination:api"
    assert kinds["reach-never-used"].agents == ("bot",)
    used = find(
        rules,
        {"prod/x": 3},
        {},
        {("bot", "prod/x")},
        [],
        [],
        {},
        max_task_ttl_seconds=86_400,
        window="30d",
        now=NOW,
    )
    assert "reach-never-used" not in {f.kind for f in used}


def test_an_approval_requirement_is_not_a_finding() -> None:
    rules = _rules(
        '@id("approved") permit(principal, action, resource is Secret) when { context.approval };', 3
    )
    found = find(
        rules, {"prod/x": 3}, {}, set(), [], [], {}, max_task_ttl_seconds=86_400, window="1d", now=NOW
    )
    assert "restricted-without-approval" not in {f.kind for f in found}


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("5s", 5)])
def test_windows_parse(text: str, seconds: int) -> None:
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0d", "forever", "-1d", "400d", "1w"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_window(text)
