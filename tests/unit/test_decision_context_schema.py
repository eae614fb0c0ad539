"""Every context Tether builds (``decision_context``) has the schema's exact shape: that is what lets
the broker skip Cedar's request validation (``trusted_context``) without changing any answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.domain.secrets import Sensitivity
from tether.domain.tasks import Intent, Task, TaskStatus, decision_context, new_id
from tether.policy import DecisionRequest, Entity, compile_policy_set

NOW = datetime(2026, 1, 1, tzinfo=UTC)
# Reads every context attribute, so a missing or mistyped one is an evaluation error.
POLICIES = compile_policy_set(
    """
@id("reads-everything")
permit(principal, action, resource) when {
  context.task.id != "" && context.task.purpose != "" && context.task.objective_sha256 != "" &&
  context.task.sensitivity >= 0 && !context.task.secrets.contains("~") &&
  !context.task.destinations.contains("~") && !context.task.tools.contains("~") &&
  context.task.depth >= 0 && !context.task.chain.contains("~") && context.task.age_seconds >= 0 &&
  context.task.remaining_seconds >= 0 && (context.approval || !context.approval) &&
  context.mode == context.mode && context.destination == context.destination &&
  context.request.method == context.request.method && context.request.path == context.request.path &&
  context.uses >= 0
};
"""
)
AGENT = Entity(
    "Agent", "spiffe://acme.test/agent/a", {"team": "", "environment": "", "owner": "", "labels": []}
)
SECRET = Entity(
    "Secret",
    "prod/x",
    {"path": "prod/x", "sensitivity": 1, "purposes": [], "destinations": [], "owner": ""},
)
NAMES = st.frozensets(st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    secrets=st.frozensets(st.from_regex(r"prod/[a-z]{1,6}", fullmatch=True), max_size=4),
    destinations=NAMES,
    tools=NAMES,
    sensitivity=st.sampled_from(list(Sensitivity)),
    depth=st.integers(min_value=0, max_value=3),
    age=st.integers(min_value=0, max_value=500),
    mode=st.sampled_from(["", "inject", "reveal", "dynamic"]),
    uses=st.integers(min_value=0, max_value=10**6),
    approval=st.booleans(),
)
def test_built_contexts_fit_the_schema_and_trusting_them_changes_nothing(
    secrets: frozenset[str],
    destinations: frozenset[str],
    tools: frozenset[str],
    sensitivity: Sensitivity,
    depth: int,
    age: int,
    mode: str,
    uses: int,
    approval: bool,
) -> None:
    chain = tuple(new_id("tsk") for _ in range(depth))
    intent = Intent("deploy", "x", sensitivity, secrets, destinations, tools)
    task = Task(
        id=new_id("tsk"),
        agent_id=AGENT.id,
        intent=intent,
        status=TaskStatus.ACTIVE,
        created_at=NOW,
        expires_at=NOW + timedelta(seconds=600),
        parent_id=chain[-1] if chain else None,
        depth=depth,
        chain=chain,
    )
    context = decision_context(
        task,
        NOW + timedelta(seconds=age),
        mode=mode,
        destination="d",
        method="GET",
        path="/p",
        uses=uses,
        approval=approval,
    )
    request = DecisionRequest(principal=AGENT, action="activate", resource=SECRET, context=context)
    validated = POLICIES.decide(request)
    trusted = POLICIES.decide(request, trusted_context=True)
    assert validated.allowed, validated.errors
    assert trusted == validated


def test_an_untrusted_context_of_the_wrong_shape_is_still_refused() -> None:
    request = DecisionRequest(principal=AGENT, action="activate", resource=SECRET, context={"uses": "many"})
    decision = POLICIES.decide(request)
    assert not decision.allowed
    assert decision.errors
