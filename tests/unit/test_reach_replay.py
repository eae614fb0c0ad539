"""Policy replay (the pure part): recorded decisions re-decided with a candidate set. Replaying
with the set that made them changes nothing; a changed set reports exactly what it changes, grouped
by policy and by agent; a candidate that does not parse or validate is refused with line and column."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.domain.decision import Decision
from tether.domain.tasks import Intent, Task, decision_context, new_id
from tether.policy import DecisionRequest, Entity, PolicyValidationError, compile_policy_set
from tether.reach.replay import (
    ALLOWED_TO_DENIED,
    DENIED_TO_ALLOWED,
    EXAMPLES,
    POLICIES_CHANGED,
    RecordedDecision,
    compile_candidate,
    locate_errors,
    replay,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
EXAMPLE = (Path(__file__).resolve().parents[2] / "examples" / "policies" / "tether.cedar").read_text()


def agent(name: str, environment: str = "prod") -> Entity:
    return Entity(
        "Agent",
        f"spiffe://acme.test/agent/{name}",
        {"team": "platform", "environment": environment, "owner": "o", "labels": ["deploy", "incident"]},
    )


def secret(path: str, sensitivity: int) -> Entity:
    return Entity(
        "Secret",
        path,
        {
            "path": path,
            "sensitivity": sensitivity,
            "purposes": ["deploy", "incident"],
            "destinations": ["github"],
            "owner": "o",
        },
    )


def recorded(text: str) -> list[RecordedDecision]:
    """Decisions as the broker makes them (``decision_context`` over real tasks), with what was decided."""
    compiled = compile_policy_set(text)
    agents = [agent("deploy-bot"), agent("dev-bot", "dev")]
    secrets = [secret("prod/github/token", 1), secret("prod/db/password", 2), secret("prod/pd/key", 3)]
    found = []
    for n, (principal, resource, action, purpose, mode, approval) in enumerate(
        itertools.product(
            agents,
            secrets,
            ("issue", "activate"),
            ("deploy", "incident"),
            ("inject", "reveal"),
            (False, True),
        )
    ):
        task = Task(
            id=new_id("tsk"),
            agent_id=principal.id,
            intent=Intent(
                purpose=purpose,
                objective="replay test",
                sensitivity=1,
                secrets=frozenset({resource.id}),
                destinations=frozenset({"github"}),
            ),
            status="active",
            created_at=NOW - timedelta(seconds=60),
            expires_at=NOW + timedelta(seconds=600),
        )
        context = decision_context(
            task, NOW, mode=mode, destination="github", method="POST", path="/x", uses=0, approval=approval
        )
        decision = compiled.decide(
            DecisionRequest(principal=principal, action=action, resource=resource, context=context),
            trusted_context=True,
        )
        found.append(
            RecordedDecision(
                f"evt-{n}", NOW, principal, action, resource, context, decision.allowed, decision.policies
            )
        )
    return found


def test_replaying_with_the_set_that_decided_reproduces_every_decision() -> None:
    decisions = recorded(EXAMPLE)
    assert any(d.allowed for d in decisions)
    assert any(not d.allowed for d in decisions)
    report = replay(compile_candidate(EXAMPLE), decisions)
    assert report.total == len(decisions)
    assert report.reproduced
    assert report.to_json()["changed"] == 0


def test_a_removed_permit_turns_its_allows_into_denies_grouped_by_policy_and_agent() -> None:
    decisions = recorded(EXAMPLE)
    start = EXAMPLE.index('@id("reveal-low-sensitivity")')
    end = EXAMPLE.index(";", EXAMPLE.index("when {", start)) + 1
    candidate = EXAMPLE[:start] + EXAMPLE[end:]
    report = replay(compile_candidate(candidate), decisions)
    expected = [d for d in decisions if d.allowed and "reveal-low-sensitivity" in d.policies]
    assert expected
    assert report.counts[ALLOWED_TO_DENIED] == len(expected)
    assert report.counts[DENIED_TO_ALLOWED] == 0
    assert report.counts[POLICIES_CHANGED] == 0
    group = report.by_policy["reveal-low-sensitivity"]
    assert group.counts[ALLOWED_TO_DENIED] == len(expected)
    assert len(group.examples) == min(EXAMPLES, len(expected))
    assert {c.decision.ref for c in group.examples} <= {d.ref for d in expected}
    assert sum(g.counts[ALLOWED_TO_DENIED] for g in report.by_agent.values()) == len(expected)
    assert set(report.by_agent) == {d.principal.id for d in expected}


def test_an_added_permit_reports_what_it_would_allow() -> None:
    decisions = recorded(EXAMPLE)
    extra = (
        '\n@id("incident-without-approval") permit(principal, action == Action::"issue", resource is Secret) '
        'when { context.task.purpose == "incident" && context.mode == "inject" };'
    )
    report = replay(compile_candidate(EXAMPLE + extra), decisions)
    newly = report.by_policy["incident-without-approval"]
    assert newly.counts[DENIED_TO_ALLOWED] > 0
    assert all("incident-without-approval" in c.after for c in newly.examples)
    # A forbid still wins: dev agents stay denied on prod/* (the example set forbids it).
    assert all(
        c.decision.principal.id.endswith("/deploy-bot") for g in report.by_policy.values() for c in g.examples
    )
    assert "spiffe://acme.test/agent/dev-bot" not in report.by_agent
    assert report.counts[ALLOWED_TO_DENIED] == 0


def test_a_candidate_that_does_not_parse_or_validate_is_refused_with_line_and_column() -> None:
    broken = EXAMPLE + '\n@id("half") permit(principal, action, resource'
    with pytest.raises(PolicyValidationError) as parse:
        compile_candidate(broken)
    [located] = locate_errors(broken, parse.value.messages)
    assert located["line"] == broken.count("\n") + 1
    assert located["column"] is not None
    mistyped = (
        '@id("a") permit(principal, action == Action::"issue", resource);\n\n'
        '  @id("b") permit(principal, action == Action::"issue", resource) when { context.mode == 1 };'
    )
    with pytest.raises(PolicyValidationError) as invalid:
        compile_candidate(mistyped)
    assert locate_errors(mistyped, invalid.value.messages)[0] | {"message": ""} == {
        "message": "",
        "line": 3,
        "column": 3,
    }


OVERFLOWING = (
    EXAMPLE + '\n@id("overflows") forbid(principal, action == Action::"activate", resource is Secret) '
    "when { context.task.age_seconds * 9223372036854775807 > 0 };\n"
    + '@id("needs-approval") permit(principal, action == Action::"issue", resource is Secret) '
    'when { context.approval && context.task.purpose == "incident" };\n'
)


def _sorted(decisions: list[Decision]) -> list[Decision]:
    return [dataclasses.replace(d, policies=tuple(sorted(d.policies))) for d in decisions]


@pytest.mark.parametrize("text", [EXAMPLE, OVERFLOWING])
def test_decide_many_answers_exactly_what_decide_answers(text: str) -> None:
    compiled = compile_policy_set(text)
    decisions = recorded(EXAMPLE)
    requests = [d.request() for d in decisions] * 2  # repeats: decided once, answered twice
    one_by_one = [compiled.decide(r, trusted_context=True) for r in requests]
    memo: dict = {}  # type: ignore[type-arg]
    # Cedar names the determining policies as a set: their order is not part of the answer.
    assert _sorted(compiled.decide_many(requests, memo)) == _sorted(one_by_one)
    assert _sorted(compiled.decide_many(requests, memo)) == _sorted(one_by_one)  # from the memo
    assert any(d.errors for d in one_by_one) == (text is OVERFLOWING)
    assert any(d.missing == ("approval",) for d in one_by_one)


def test_an_approved_decision_is_replayed_as_the_broker_made_it() -> None:
    compiled = compile_candidate(OVERFLOWING)
    [asked] = [
        d
        for d in recorded(OVERFLOWING)
        if d.action == "issue"
        and d.principal.id.endswith("deploy-bot")
        and not d.context["approval"]
        and d.context["task"]["purpose"] == "incident"
        and d.resource.id == "prod/pd/key"
        and d.context["mode"] == "inject"
    ]
    assert compiled.decide(asked.request(), trusted_context=True).missing == ("approval",)
    # The broker found an approval and allowed it: replay says the same, with or without the flag.
    approved = dataclasses.replace(asked, allowed=True, approved=True)
    assert replay(compiled, [approved]).reproduced
    assert not replay(compiled, [dataclasses.replace(approved, approved=False)]).reproduced


def test_verify_replays_each_decision_with_its_own_version() -> None:
    first, second = compile_candidate(EXAMPLE), compile_candidate(OVERFLOWING)
    old = [dataclasses.replace(d, policy_version=1) for d in recorded(EXAMPLE)]
    new = [dataclasses.replace(d, policy_version=2) for d in recorded(OVERFLOWING)]
    assert replay(None, old + new, versions={1: first, 2: second}).reproduced
    assert not replay(None, old + new, versions={1: second, 2: first}).reproduced
    with pytest.raises(ValueError, match="not both"):
        replay(first, old, versions={1: first})


# Conjuncts of every form the pruning decides (and some it must not), in orders where a false one
# comes before or after one that fails at run time (the overflow): Cedar stops at the first false.
PRUNED = (
    EXAMPLE + '\n@id("p1") permit(principal, action == Action::"issue", resource is Secret) when { '
    'principal.team == "nope" && context.task.age_seconds * 9223372036854775807 > 0 };\n'
    '@id("f1") forbid(principal, action == Action::"issue", resource is Secret) when { '
    'context.task.age_seconds * 9223372036854775807 > 0 && principal.team == "nope" };\n'
    '@id("p2") permit(principal, action == Action::"activate", resource is Secret) when { '
    'resource.sensitivity <= 1 && principal.labels.contains("deploy") && context.mode == "inject" };\n'
    '@id("f2") forbid(principal, action == Action::"activate", resource is Secret) unless { '
    'resource.sensitivity != 3 || principal.environment == "prod" };\n'
    '@id("p3") permit(principal, action == Action::"issue", resource is Secret) when { '
    '!(resource.owner == "o") && resource.path like "prod/*" && context.approval };\n'
    '@id("f3") forbid(principal, action == Action::"activate", resource is Secret) when { '
    "resource.sensitivity >= 3 && context.task.remaining_seconds * 9223372036854775807 > 0 };\n"
    '@id("p4") permit(principal, action == Action::"open_task", resource) when { '
    'resource.environment == "dev" && principal.team == "platform" };\n'
)


@pytest.mark.parametrize("text", [PRUNED, OVERFLOWING])
def test_decide_many_sets_aside_only_policies_that_cannot_apply(text: str) -> None:
    compiled = compile_policy_set(text)
    decisions = recorded(EXAMPLE)
    opened = [dataclasses.replace(d, action="open_task", resource=d.principal) for d in decisions[::8]]
    requests = [d.request() for d in (*decisions, *opened)]
    one_by_one = [compiled.decide(r, trusted_context=True) for r in requests]
    assert _sorted(compiled.decide_many(requests)) == _sorted(one_by_one)
    assert any(d.errors for d in one_by_one)
