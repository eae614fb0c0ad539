"""Tasks, grants and approvals as values: validation when built, expiry at an explicit ``now``,
context hashing, narrowing — and properties over generated intents."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.domain.secrets import MAX_SET_SIZE, Sensitivity
from tether.domain.tasks import (
    MAX_OBJECTIVE_CHARS,
    Approval,
    ApprovalStatus,
    Ended,
    Grant,
    GrantMode,
    Intent,
    Lease,
    Task,
    TaskStatus,
    decision_context,
    new_id,
    validate_id,
)
from tether.errors import InvalidInputError

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TASK_ID = "tsk_" + "a" * 22
PARENT_ID = "tsk_" + "p" * 22
ROOT_ID = "tsk_" + "r" * 22
AGENT = "spiffe://acme.test/agent/deploy-bot"


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def intent(**kw: Any) -> Intent:
    values: dict[str, Any] = {
        "purpose": "deploy",
        "objective": "ship release 1.2",
        "sensitivity": Sensitivity.INTERNAL,
        "secrets": frozenset({"prod/github/token"}),
        "destinations": frozenset({"github"}),
        "tools": frozenset({"git:push"}),
    }
    values.update(kw)
    return Intent(**values)


def task(**kw: Any) -> Task:
    values: dict[str, Any] = {
        "id": TASK_ID,
        "agent_id": AGENT,
        "intent": intent(),
        "status": TaskStatus.ACTIVE,
        "created_at": NOW,
        "expires_at": at(600),
    }
    values.update(kw)
    return Task(**values)


def grant(**kw: Any) -> Grant:
    values: dict[str, Any] = {
        "id": "grt_" + "g" * 22,
        "task_id": TASK_ID,
        "agent_id": AGENT,
        "jkt": "thumbprint",
        "secret": "prod/github/token",
        "destination": "github",
        "mode": GrantMode.REVEAL,
        "created_at": NOW,
        "expires_at": at(300),
    }
    values.update(kw)
    return Grant(**values)


def approval(subject: Task | None = None, **kw: Any) -> Approval:
    subject = subject or task()
    values: dict[str, Any] = {
        "id": "apr_" + "x" * 22,
        "task_id": subject.id,
        "agent_id": subject.agent_id,
        "action": "activate",
        "resource": "Secret::prod/github/token",
        "context_hash": subject.context_hash,
        "status": ApprovalStatus.APPROVED,
        "policies": ("restricted-incident-with-approval",),
        "requested_at": NOW,
        "expires_at": at(900),
    }
    values.update(kw)
    return Approval(**values)


# -- ids ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["tsk", "grt", "apr", "lse"])
def test_new_ids_are_fresh_and_valid(prefix: str) -> None:
    ids = {new_id(prefix) for _ in range(50)}
    assert len(ids) == 50
    for value in ids:
        assert validate_id(value, prefix) == value


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("grt_" + "a" * 22, "tsk"),  # another kind's id
        ("tsk_short", "tsk"),
        ("tsk_" + "a" * 44, "tsk"),
        ("tsk_" + "a" * 21 + "!", "tsk"),
        ("tsk_" + "a" * 22 + "\n", "tsk"),
        ("xyz_" + "a" * 22, "xyz"),
        (None, "tsk"),
        (42, "tsk"),
    ],
)
def test_validate_id_refuses_malformed_ids(value: object, prefix: str) -> None:
    with pytest.raises(InvalidInputError):
        validate_id(value, prefix)


# -- Intent ------------------------------------------------------------------------------------
def test_intent_normalises_its_sets_and_sensitivity() -> None:
    built = Intent(
        purpose="incident",
        objective="page the on-call\n\tfor INC-7",
        sensitivity="restricted",  # type: ignore[arg-type]
        secrets=["prod/a/b", "prod/a/b"],  # type: ignore[arg-type]
        destinations=("pagerduty",),  # type: ignore[arg-type]
    )
    assert built.sensitivity is Sensitivity.RESTRICTED
    assert built.secrets == frozenset({"prod/a/b"})
    assert built.destinations == frozenset({"pagerduty"})
    assert built.tools == frozenset()
    assert built.objective_sha256 == hashlib.sha256(built.objective.encode()).hexdigest()
    assert intent(sensitivity=3).sensitivity is Sensitivity.RESTRICTED


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "Deploy"},
        {"purpose": ""},
        {"purpose": "-deploy"},
        {"purpose": "x" * 65},
        {"purpose": 7},
        {"objective": ""},
        {"objective": "   "},
        {"objective": "a\x00b"},
        {"objective": "bell\x07"},
        {"objective": "x" * (MAX_OBJECTIVE_CHARS + 1)},
        {"objective": None},
        {"sensitivity": "secret"},
        {"sensitivity": 4},
        {"sensitivity": True},
        {"secrets": "prod/github/token"},  # a string is not a list of paths
        {"secrets": ["/leading/slash"]},
        {"secrets": ["prod/../etc"]},
        {"secrets": [""]},
        {"secrets": [7]},
        {"secrets": [f"prod/s/{i}" for i in range(MAX_SET_SIZE + 1)]},
        {"destinations": ["GitHub"]},
        {"destinations": ["has space"]},
        {"tools": ["bad tool"]},
        {"tools": ["x" * 129]},
        {"tools": None},
    ],
)
def test_intent_refuses_bad_input(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        intent(**change)


def test_objective_at_the_limit_is_accepted() -> None:
    assert len(intent(objective="x" * MAX_OBJECTIVE_CHARS).objective) == MAX_OBJECTIVE_CHARS


def test_widening_names_each_way_a_child_exceeds_its_parent() -> None:
    parent = intent()
    assert parent.widening(parent) == []
    assert (
        intent(secrets=frozenset(), tools=frozenset(), sensitivity=Sensitivity.PUBLIC).widening(parent) == []
    )
    wider = intent(
        secrets=frozenset({"prod/github/token", "prod/stripe/key"}),
        destinations=frozenset({"github", "stripe"}),
        tools=frozenset({"git:push", "shell"}),
        sensitivity=Sensitivity.CONFIDENTIAL,
    )
    problems = wider.widening(parent)
    assert len(problems) == 4
    assert "prod/stripe/key" in problems[0]
    assert problems[0].startswith("secrets")
    assert problems[1].startswith("destinations")
    assert "stripe" in problems[1]
    assert problems[2].startswith("tools")
    assert "shell" in problems[2]
    assert "confidential" in problems[3]
    assert "internal" in problems[3]


def test_widening_ignores_purpose_and_objective() -> None:
    # Those are for policy (delegation inherits the purpose); narrowing is about reach.
    assert intent(purpose="incident", objective="other").widening(intent()) == []


# -- Task --------------------------------------------------------------------------------------
def test_root_task_defaults() -> None:
    built = task()
    assert built.root_id == TASK_ID
    assert built.depth == 0
    assert built.chain == ()
    assert built.context_version == 1
    assert built.parent_id is None


def test_child_task_takes_its_root_from_the_chain() -> None:
    child = task(parent_id=PARENT_ID, depth=2, chain=[ROOT_ID, PARENT_ID])
    assert child.chain == (ROOT_ID, PARENT_ID)
    assert child.root_id == ROOT_ID


@pytest.mark.parametrize(
    "change",
    [
        {"id": "grt_" + "a" * 22},
        {"id": "not-an-id"},
        {"intent": {"purpose": "deploy"}},
        {"status": "sleeping"},
        {"created_at": datetime(2026, 1, 1)},
        {"expires_at": datetime(2026, 1, 2)},
        {"ended_at": datetime(2026, 1, 2)},
        {"expires_at": NOW},  # zero lifetime
        {"expires_at": at(-1)},
        {"depth": 1},  # no chain, no parent
        {"parent_id": PARENT_ID},  # a parent but depth 0
        {"parent_id": PARENT_ID, "depth": 1, "chain": (ROOT_ID,)},  # chain must end with the parent
        {"parent_id": PARENT_ID, "depth": 2, "chain": (PARENT_ID,)},
        {"depth": 1, "chain": (PARENT_ID,)},  # a chain without a parent
    ],
)
def test_task_refuses_inconsistent_values(change: dict[str, Any]) -> None:
    with pytest.raises((InvalidInputError, ValueError)):
        task(**change)


@pytest.mark.parametrize("status", [TaskStatus.ACTIVE, TaskStatus.PENDING_APPROVAL])
def test_live_task_is_expired_from_its_expiry_instant(status: TaskStatus) -> None:
    built = task(status=status)
    assert built.effective_status(at(599.999)) is status
    assert built.effective_status(at(600)) is TaskStatus.EXPIRED
    assert built.effective_status(at(10_000)) is TaskStatus.EXPIRED
    assert built.is_active(at(599)) is (status is TaskStatus.ACTIVE)
    assert not built.is_active(at(600))


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.REVOKED])
def test_ended_task_keeps_its_status_past_expiry(status: TaskStatus) -> None:
    built = task(status=status, ended_at=at(1))
    assert built.effective_status(at(0)) is status
    assert built.effective_status(at(10_000)) is status
    assert not built.is_active(at(0))


def test_remaining_seconds_counts_down_to_zero() -> None:
    built = task()
    assert built.remaining_seconds(NOW) == 600
    assert built.remaining_seconds(at(599.5)) == 0
    assert built.remaining_seconds(at(100)) == 500
    assert built.remaining_seconds(at(601)) == 0


def test_context_hash_is_stable_and_binds_version_intent_and_chain() -> None:
    base = task()
    assert base.context_hash == task().context_hash
    assert len(base.context_hash) == 64
    variants = [
        replace(base, context_version=2),
        replace(base, intent=intent(purpose="incident")),
        replace(base, intent=intent(objective="ship release 1.3")),
        replace(base, intent=intent(sensitivity=Sensitivity.CONFIDENTIAL)),
        replace(base, intent=intent(secrets=frozenset())),
        replace(base, intent=intent(destinations=frozenset())),
        replace(base, intent=intent(tools=frozenset())),
        task(id="tsk_" + "b" * 22),
        task(parent_id=PARENT_ID, depth=1, chain=(PARENT_ID,)),
    ]
    hashes = {v.context_hash for v in variants}
    assert base.context_hash not in hashes
    assert len(hashes) == len(variants)


def test_context_hash_ignores_status_and_lifetime() -> None:
    base = task()
    same = replace(base, status=TaskStatus.PENDING_APPROVAL, expires_at=at(60), approval_id="apr_" + "x" * 22)
    assert same.context_hash == base.context_hash


def test_cedar_context_is_what_policies_see() -> None:
    child = task(
        parent_id=PARENT_ID, depth=2, chain=(ROOT_ID, PARENT_ID), intent=intent(tools=frozenset({"b", "a"}))
    )
    ctx = decision_context(
        child, at(100), mode="reveal", destination="github", method="POST", path="/x", uses=4
    )
    assert ctx == {
        "task": {
            "id": TASK_ID,
            "purpose": "deploy",
            "objective_sha256": child.intent.objective_sha256,
            "sensitivity": 1,
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
            "tools": ["a", "b"],
            "depth": 2,
            "chain": [ROOT_ID, PARENT_ID],
            "age_seconds": 100,
            "remaining_seconds": 500,
        },
        "approval": False,
        "mode": "reveal",
        "destination": "github",
        "request": {"method": "POST", "path": "/x"},
        "uses": 4,
    }
    assert decision_context(child, at(700))["task"]["remaining_seconds"] == 0
    assert decision_context(child, at(-5))["task"]["age_seconds"] == 0
    assert decision_context(child, NOW, approval=True)["approval"] is True


# -- Grant -------------------------------------------------------------------------------------
def test_grant_defaults_and_resource() -> None:
    built = grant()
    assert built.uses == 0
    assert built.uses_left is None
    assert built.resource == ("Secret", "prod/github/token")
    assert grant(secret=None, mode="inject").resource == ("Destination", "github")
    assert grant(mode="dynamic").mode is GrantMode.DYNAMIC


@pytest.mark.parametrize(
    "change",
    [
        {"id": "tsk_" + "a" * 22},
        {"task_id": "grt_" + "a" * 22},
        {"mode": "peek"},
        {"secret": None, "destination": None},
        {"max_uses": 0},
        {"max_uses": -1},
        {"max_uses": 1_000_001},
        {"uses": -1},
        {"created_at": datetime(2026, 1, 1)},
        {"revoked_at": datetime(2026, 1, 1)},
    ],
)
def test_grant_refuses_bad_values(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        grant(**change)


def test_grant_mode_parse() -> None:
    assert GrantMode.parse("reveal") is GrantMode.REVEAL
    for bad in ("REVEAL", "", None, 1):
        with pytest.raises(InvalidInputError):
            GrantMode.parse(bad)


def test_uses_left_counts_down_and_never_goes_negative() -> None:
    assert grant(max_uses=3, uses=1).uses_left == 2
    assert grant(max_uses=3, uses=3).uses_left == 0
    assert grant(max_uses=3, uses=5).uses_left == 0
    assert grant(uses=10).uses_left is None


def test_unusable_says_why() -> None:
    assert grant().unusable(at(299)) is None
    assert grant().unusable(at(300)) == "grant expired"
    assert grant(max_uses=1, uses=1).unusable(NOW) == "grant has no uses left"
    revoked = grant(revoked_at=at(1), revoke_reason="context_changed")
    assert revoked.unusable(at(2)) == "grant revoked (context_changed)"
    assert grant(revoked_at=at(1)).unusable(at(2)) == "grant revoked (revoked)"
    # Revocation is the first reason given, even when others apply too.
    assert grant(revoked_at=at(1), max_uses=1, uses=1).unusable(at(400)).startswith("grant revoked")  # type: ignore[union-attr]


# -- Approval ----------------------------------------------------------------------------------
def test_approval_grants_exactly_its_task_context_action_and_resource() -> None:
    subject = task()
    approved = approval(subject)
    args = ("activate", "Secret::prod/github/token")
    assert approved.grants(subject, *args, at(1))
    assert not approved.grants(subject, "issue", args[1], at(1))
    assert not approved.grants(subject, args[0], "Secret::prod/stripe/key", at(1))
    assert not approved.grants(replace(subject, context_version=2), *args, at(1))  # context changed
    assert not approved.grants(task(id="tsk_" + "b" * 22), *args, at(1))
    assert not approved.grants(subject, *args, at(900))  # expired
    for status in (
        ApprovalStatus.PENDING,
        ApprovalStatus.DENIED,
        ApprovalStatus.VOIDED,
        ApprovalStatus.EXPIRED,
    ):
        assert not approval(subject, status=status).grants(subject, *args, at(1))


def test_approval_effective_status() -> None:
    for status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED):
        assert approval(status=status).effective_status(at(899)) is status
        assert approval(status=status).effective_status(at(900)) is ApprovalStatus.EXPIRED
    for status in (ApprovalStatus.DENIED, ApprovalStatus.VOIDED):
        assert approval(status=status).effective_status(at(10_000)) is status


@pytest.mark.parametrize(
    "change",
    [
        {"id": "tsk_" + "a" * 22},
        {"status": "maybe"},
        {"requested_at": datetime(2026, 1, 1)},
        {"decided_at": datetime(2026, 1, 1)},
    ],
)
def test_approval_refuses_bad_values(change: dict[str, Any]) -> None:
    with pytest.raises((InvalidInputError, ValueError)):
        approval(**change)


# -- Lease, Ended ------------------------------------------------------------------------------
def test_lease_validates_its_ids_and_times() -> None:
    good: dict[str, Any] = {
        "id": "lse_" + "l" * 22,
        "grant_id": "grt_" + "g" * 22,
        "task_id": TASK_ID,
        "engine": "static",
        "handle": {"secret": "prod/github/token", "version": 1},
        "created_at": NOW,
        "expires_at": at(60),
    }
    assert Lease(**good).engine == "static"
    for field, bad in (
        ("id", "grt_" + "g" * 22),
        ("grant_id", TASK_ID),
        ("task_id", "x"),
        ("expires_at", datetime(2026, 1, 1)),
    ):
        with pytest.raises(InvalidInputError):
            Lease(**{**good, field: bad})


def test_ended_adds_up() -> None:
    lease = Lease("lse_" + "l" * 22, "grt_" + "g" * 22, TASK_ID, "static", {}, NOW, at(1))
    total = Ended(("tsk_a",), 2) + Ended(("tsk_b", "tsk_c"), 3, (lease,)) + Ended()
    assert total == Ended(("tsk_a", "tsk_b", "tsk_c"), 5, (lease,))
    assert Ended() + Ended() == Ended()


# -- properties --------------------------------------------------------------------------------
PATHS = st.sampled_from(["prod/a/one", "prod/a/two", "prod/b/three", "dev/c/four", "x"])
NAMES = st.sampled_from(["github", "stripe", "pagerduty", "jira"])
TOOLS = st.sampled_from(["git:push", "shell", "mcp/search", "db.query"])
LEVELS = st.sampled_from(list(Sensitivity))


@st.composite
def intents(draw: st.DrawFn) -> Intent:
    return Intent(
        purpose=draw(st.sampled_from(["deploy", "incident", "report"])),
        objective=draw(st.text(alphabet="abc xyz\n", min_size=1, max_size=20).filter(str.strip)),
        sensitivity=draw(LEVELS),
        secrets=draw(st.frozensets(PATHS)),
        destinations=draw(st.frozensets(NAMES)),
        tools=draw(st.frozensets(TOOLS)),
    )


def narrows(child: Intent, parent: Intent) -> bool:
    return (
        child.secrets <= parent.secrets
        and child.destinations <= parent.destinations
        and child.tools <= parent.tools
        and child.sensitivity <= parent.sensitivity
    )


@given(intents(), intents())
def test_widening_is_empty_exactly_when_the_child_narrows(child: Intent, parent: Intent) -> None:
    assert (child.widening(parent) == []) == narrows(child, parent)


@given(intents(), intents())
def test_widening_names_one_problem_per_exceeded_dimension(child: Intent, parent: Intent) -> None:
    expected = sum(
        [
            not child.secrets <= parent.secrets,
            not child.destinations <= parent.destinations,
            not child.tools <= parent.tools,
            child.sensitivity > parent.sensitivity,
        ]
    )
    assert len(child.widening(parent)) == expected


@given(intents())
def test_every_intent_narrows_itself(value: Intent) -> None:
    assert value.widening(value) == []


@given(intents(), intents(), intents())
def test_narrowing_is_transitive(a: Intent, b: Intent, c: Intent) -> None:
    if b.widening(a) == [] and c.widening(b) == []:
        assert c.widening(a) == []


@given(intents(), st.integers(min_value=1, max_value=10_000), st.integers(min_value=1, max_value=10_000))
def test_context_hash_changes_with_context_version(value: Intent, v1: int, v2: int) -> None:
    first = task(intent=value, context_version=v1)
    second = task(intent=value, context_version=v2)
    assert (first.context_hash == second.context_hash) == (v1 == v2)


@given(intents(), intents())
def test_context_hash_differs_for_different_intents(a: Intent, b: Intent) -> None:
    same_context = (
        a.purpose == b.purpose
        and a.objective == b.objective
        and a.sensitivity == b.sensitivity
        and a.secrets == b.secrets
        and a.destinations == b.destinations
        and a.tools == b.tools
    )
    assert (task(intent=a).context_hash == task(intent=b).context_hash) == same_context


@given(
    st.integers(min_value=1, max_value=10**6),
    st.integers(min_value=-(10**6), max_value=2 * 10**6),
    st.integers(min_value=0, max_value=10**6),
)
def test_expiry_is_monotone(ttl: int, offset: int, later: int) -> None:
    built = task(expires_at=at(ttl))
    now = at(offset)
    if built.effective_status(now) is TaskStatus.EXPIRED:
        assert built.effective_status(now + timedelta(seconds=later)) is TaskStatus.EXPIRED
    assert (built.effective_status(now) is TaskStatus.EXPIRED) == (offset >= ttl)
    assert built.remaining_seconds(now) == max(0, ttl - offset)


@given(st.integers(min_value=1, max_value=1_000_000), st.integers(min_value=0, max_value=2_000_000))
def test_uses_left_plus_uses_is_the_budget(max_uses: int, uses: int) -> None:
    built = grant(max_uses=max_uses, uses=uses)
    assert built.uses_left == max(0, max_uses - uses)
    assert (built.unusable(NOW) == "grant has no uses left") == (uses >= max_uses)
