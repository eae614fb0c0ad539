"""Properties of decisions over generated requests: any error means deny."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.policy import DecisionRequest, Entity, compile_policy_set

# Every policy here can error at runtime on some contexts (overflow, arithmetic on large values).
POLICIES = compile_policy_set("""
@id("open") permit(principal, action == Action::"open_task", resource);
@id("activate") permit(principal, action == Action::"activate", resource is Secret)
  when { context.uses + context.task.depth < 1000 || context.approval };
@id("depth-cap") forbid(principal, action, resource)
  when { context.task.depth * context.task.remaining_seconds > 1000000 };
@id("use-cap") forbid(principal, action, resource) when { context.uses * 1000 > 10000000 };
@id("old-task") forbid(principal, action, resource)
  when { context.task.age_seconds + context.task.remaining_seconds > 86400 * 365 };
""")

LONG = st.one_of(
    st.integers(min_value=-10, max_value=10_000),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
TEXT = st.text(max_size=12)


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    task = {
        "id": draw(TEXT),
        "purpose": draw(st.sampled_from(["deploy", "incident", "analytics"])),
        "objective_sha256": "0" * 64,
        "sensitivity": draw(LONG),
        "secrets": draw(st.lists(TEXT, max_size=3)),
        "destinations": [],
        "tools": [],
        "depth": draw(LONG),
        "chain": [],
        "age_seconds": draw(LONG),
        "remaining_seconds": draw(LONG),
    }
    context: dict[str, Any] = {
        "task": task,
        "approval": draw(st.booleans()),
        "mode": draw(st.sampled_from(["inject", "reveal", "dynamic"])),
        "destination": draw(TEXT),
        "request": {"method": "GET", "path": "/"},
        "uses": draw(LONG),
    }
    # Sometimes break the shape: a missing field or a wrong type must be an error, so a deny.
    drop = draw(st.sampled_from([None, None, None, "approval", "uses", "task"]))
    if drop is not None:
        del context[drop]
    if draw(st.integers(0, 9)) == 0:
        context["uses"] = "many"
    return context


AGENT = Entity(
    "Agent", "spiffe://acme.test/agent/a", {"team": "t", "environment": "e", "owner": "o", "labels": []}
)
SECRET = Entity(
    "Secret",
    "prod/x",
    {"path": "prod/x", "sensitivity": 2, "purposes": [], "destinations": [], "owner": "o"},
)


@settings(max_examples=300, deadline=None)
@given(context=contexts(), action=st.sampled_from(["open_task", "activate"]))
def test_any_error_means_deny(context: dict[str, Any], action: str) -> None:
    resource = AGENT if action == "open_task" else SECRET
    decision = POLICIES.decide(DecisionRequest(AGENT, action, resource, context))
    if decision.errors:
        assert not decision.allowed
        assert decision.missing == ()
    if decision.allowed:
        assert decision.errors == ()
        assert decision.policies
        assert all(policy in ("open", "activate") for policy in decision.policies)


def test_the_generated_space_contains_erroring_requests_that_cedar_would_allow() -> None:
    import cedarpy

    from tether.policy import SCHEMA_TEXT
    from tether.policy.request import to_cedar_value

    context = {
        "task": {
            "id": "t",
            "purpose": "deploy",
            "objective_sha256": "0" * 64,
            "sensitivity": 0,
            "secrets": [],
            "destinations": [],
            "tools": [],
            "depth": 0,
            "chain": [],
            "age_seconds": 0,
            "remaining_seconds": 0,
        },
        "approval": False,
        "mode": "inject",
        "destination": "",
        "request": {"method": "GET", "path": "/"},
        "uses": 2**62,
    }
    raw = cedarpy.is_authorized(
        {
            "principal": {"type": "Agent", "id": AGENT.id},
            "action": {"type": "Action", "id": "open_task"},
            "resource": {"type": "Agent", "id": AGENT.id},
            "context": to_cedar_value(context),
        },
        POLICIES.text,
        [AGENT.to_cedar()],
        schema=SCHEMA_TEXT,
    )
    assert raw.allowed
    assert raw.diagnostics.errors
    decision = POLICIES.decide(DecisionRequest(AGENT, "open_task", AGENT, context))
    assert not decision
    assert decision.errors
