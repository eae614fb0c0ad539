"""A compiled policy set may give the answer it gave to an identical input again (``remember=True``,
as the broker decides): the answer must always be the one evaluating would give, whatever was
remembered before, and nothing about an entity or the context may be left out of "identical"."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_policy_properties import AGENT, POLICIES, SECRET, contexts
from tests.unit.test_policy_reads import EXAMPLE
from tether.domain.decision import Decision
from tether.policy import DecisionRequest, Entity, compile_policy_set

SENSITIVITY = compile_policy_set("""
@id("reveal-low") permit(principal, action == Action::"activate", resource is Secret)
  when { resource.sensitivity < 3 && context.mode == "reveal" };
@id("team-only") forbid(principal, action, resource) when { principal.team == "outsiders" };
""")


def _secret(sensitivity: int) -> Entity:
    return Entity(
        "Secret",
        "prod/x",
        {"path": "prod/x", "sensitivity": sensitivity, "purposes": [], "destinations": [], "owner": "o"},
    )


def _context(mode: str = "reveal") -> dict[str, Any]:
    return {
        "task": {
            "id": "tsk_1",
            "purpose": "deploy",
            "objective_sha256": "0" * 64,
            "sensitivity": 1,
            "secrets": ["prod/x"],
            "destinations": [],
            "tools": [],
            "depth": 0,
            "chain": [],
            "age_seconds": 1,
            "remaining_seconds": 100,
        },
        "mode": mode,
        "destination": "",
        "request": {"method": "POST", "path": "/v1/grants/grt_1/activate"},
        "uses": 0,
        "approval": False,
    }


def test_a_remembered_allow_does_not_outlive_a_change_of_the_resource_or_the_context() -> None:
    allowed = DecisionRequest(AGENT, "activate", _secret(2), _context())
    assert SENSITIVITY.decide(allowed, trusted_context=True, remember=True).allowed
    assert SENSITIVITY.decide(allowed, trusted_context=True, remember=True).allowed  # remembered
    raised = DecisionRequest(AGENT, "activate", _secret(3), _context())
    assert not SENSITIVITY.decide(raised, trusted_context=True, remember=True).allowed
    injected = DecisionRequest(AGENT, "activate", _secret(2), _context(mode="inject"))
    assert not SENSITIVITY.decide(injected, trusted_context=True, remember=True).allowed


def test_a_remembered_allow_does_not_outlive_a_change_of_the_principal() -> None:
    request = DecisionRequest(AGENT, "activate", _secret(1), _context())
    assert SENSITIVITY.decide(request, trusted_context=True, remember=True).allowed
    moved = Entity(AGENT.type, AGENT.id, {**AGENT.attributes, "team": "outsiders"})
    decision = SENSITIVITY.decide(
        DecisionRequest(moved, "activate", _secret(1), _context()), trusted_context=True, remember=True
    )
    assert not decision.allowed
    assert decision.policies == ("team-only",)


def test_a_new_policy_set_remembers_nothing() -> None:
    request = DecisionRequest(AGENT, "activate", _secret(1), _context())
    assert SENSITIVITY.decide(request, trusted_context=True, remember=True).allowed
    stricter = compile_policy_set(
        SENSITIVITY.text.replace("resource.sensitivity < 3", "resource.sensitivity < 1")
    )
    assert not stricter.decide(request, trusted_context=True, remember=True).allowed


def _same(decision: Decision) -> tuple[bool, frozenset[str], frozenset[str], tuple[str, ...]]:
    # Cedar names determining policies (and errors) in no fixed order.
    return decision.allowed, frozenset(decision.policies), frozenset(decision.errors), decision.missing


@settings(max_examples=300, deadline=None)
@given(
    context=contexts(),
    action=st.sampled_from(["open_task", "activate", "issue"]),
    which=st.sampled_from(["example", "properties"]),
    sensitivity=st.integers(min_value=0, max_value=4),
)
def test_remembered_answers_are_the_answers(
    context: dict[str, Any], action: str, which: str, sensitivity: int
) -> None:
    # The sets are shared across examples, so each example meets what earlier ones left behind.
    compiled = EXAMPLE if which == "example" else POLICIES
    resource = (
        AGENT
        if action == "open_task"
        else Entity("Secret", SECRET.id, {**SECRET.attributes, "sensitivity": sensitivity})
    )
    request = DecisionRequest(AGENT, action, resource, context)
    fresh = _same(compiled.decide(request, trusted_context=True))
    assert _same(compiled.decide(request, trusted_context=True, remember=True)) == fresh
    assert _same(compiled.decide(request, trusted_context=True, remember=True)) == fresh
    validated = _same(compiled.decide(request))
    assert _same(compiled.decide(request, remember=True)) == validated
    assert _same(compiled.decide(request, remember=True)) == validated
    assert not any(decision.errors for decision in compiled._remembered.values())
