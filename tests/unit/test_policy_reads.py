"""Decisions hand Cedar only the context attributes their policies read: the analysis, and the
property that matters — the answer is Cedar's answer on the whole context, errors included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cedarpy
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_policy_properties import AGENT, POLICIES, SECRET, contexts
from tether.policy import DecisionRequest, compile_policy_set
from tether.policy.reads import context_projection, project

EXAMPLE_TEXT = (Path(__file__).resolve().parents[2] / "examples" / "policies" / "tether.cedar").read_text()
EXAMPLE = compile_policy_set(EXAMPLE_TEXT)


def _ests(text: str) -> list[dict[str, Any]]:
    return list(json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values())


def _projection(conditions: str) -> Any:
    return context_projection(_ests(f"permit(principal, action, resource) when {{ {conditions} }};"))


def test_attribute_chains_are_reads() -> None:
    assert _projection('context.task.purpose == "x" && context.mode != "reveal"') == {
        "task": {"purpose": None},
        "mode": None,
    }
    assert _projection('context["uses"] > 1') == {"uses": None}
    # ``has`` needs presence only: the value is kept as an empty record (or as it is, if no record).
    assert _projection("context has task.depth") == {"task": {"depth": {}}}
    assert _projection('context has task && context.task.purpose == "x"') == {"task": {"purpose": None}}
    assert _projection('context.task.secrets.contains("a")') == {"task": {"secrets": None}}


def test_a_whole_value_is_never_narrowed() -> None:
    assert _projection('context.task == {} || context.task.purpose == "x"') == {"task": None}
    assert _projection('context.request.path like "/a*" || context.request has method') == {
        "request": {"path": None, "method": {}}
    }


def test_any_other_use_of_context_keeps_all_of_it() -> None:
    assert _projection("context == {}") is None
    assert _projection("(if true then context else {}) has mode") is None
    assert _projection("[context].contains({})") is None
    assert _projection('{"c": context} has c') is None


def test_no_conditions_read_nothing() -> None:
    assert context_projection(_ests("permit(principal, action, resource);")) == {}


def test_project_keeps_only_what_is_read_and_never_invents() -> None:
    context = {"task": {"purpose": "p", "chain": ["a"]}, "mode": "inject", "uses": 3}
    assert project(context, {"task": {"purpose": None}, "approval": None}) == {"task": {"purpose": "p"}}
    assert project(context, {"task": None}) == {"task": {"purpose": "p", "chain": ["a"]}}
    # A read into something that is no record keeps the value as it is (Cedar then errors on it).
    assert project({"task": 7}, {"task": {"purpose": None}}) == {"task": 7}
    assert project(context, {"task": {}, "mode": {}}) == {"task": {}, "mode": "inject"}


def _reference(text: str, action: str, resource: Any, context: dict[str, Any]) -> tuple[bool, bool, set[str]]:
    """Cedar's own answer on the whole context: (allowed, errored, determining policy ids)."""
    request = DecisionRequest(AGENT, action, resource, context)
    entities = [
        {"uid": {"type": e.type, "id": e.id}, "attrs": dict(e.attributes), "parents": []}
        for e in (request.principal, request.resource)
    ]
    answer = cedarpy.is_authorized(
        {
            "principal": {"type": "Agent", "id": AGENT.id},
            "action": {"type": "Action", "id": action},
            "resource": {"type": resource.type, "id": resource.id},
            "context": json.dumps(context),
        },
        text,
        json.dumps(entities),
    )
    names = {
        key: est["annotations"]["id"]
        for key, est in json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].items()
    }
    ids = {names[str(reason)] for reason in answer.diagnostics.reasons}
    return answer.decision is cedarpy.Decision.Allow, bool(answer.diagnostics.errors), ids


PROPERTIES_TEXT = POLICIES.text


@settings(max_examples=300, deadline=None)
@given(
    context=contexts(),
    action=st.sampled_from(["open_task", "activate", "issue"]),
    which=st.sampled_from(["example", "properties"]),
)
def test_projected_decision_is_cedars_decision_on_the_whole_context(
    context: dict[str, Any], action: str, which: str
) -> None:
    compiled, text = (EXAMPLE, EXAMPLE_TEXT) if which == "example" else (POLICIES, PROPERTIES_TEXT)
    if which == "properties" and action == "issue":
        action = "activate"  # no permit there applies to issue: the engine denies before asking Cedar
    resource = AGENT if action == "open_task" else SECRET
    decision = compiled.decide(DecisionRequest(AGENT, action, resource, context), trusted_context=True)
    allowed, errored, ids = _reference(text, action, resource, context)
    assert decision.allowed == (allowed and not errored)
    assert bool(decision.errors) == errored
    if decision.allowed:
        assert set(decision.policies) == ids
