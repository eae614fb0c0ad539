"""``CompiledPolicySet.decide_many`` (policy replay's engine) answers exactly what ``decide`` answers,
request by request: for random policy sets (the reach grammar, plus permits and forbids on the
approval), random agents, secrets and contexts — repeated, alike in what the policies read, with
odd types where a stored context could have them — in one call and again from the memo."""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.unit.test_reach_property import _AGENT_ATTRS, _SECRET, NOW, _policy_sets, _task
from tether.domain.decision import Decision
from tether.domain.tasks import decision_context
from tether.policy import DecisionRequest, Entity, PolicyValidationError, compile_policy_set

_APPROVAL_POLICIES = st.lists(
    st.sampled_from(
        [
            '@id("a1") permit(principal, action, resource is Secret) when { context.approval };',
            '@id("a2") permit(principal, action == Action::"activate", resource) '
            'when { context.approval && context.mode == "inject" };',
            '@id("a3") forbid(principal, action, resource is Secret) unless { context.approval };',
            '@id("a4") forbid(principal, action, resource is Secret) when { resource.sensitivity == 3 };',
            '@id("a5") forbid(principal, action == Action::"issue", resource) '
            'when { context.task.purpose == "incident" && !context.approval };',
            '@id("a6") permit(principal, action, resource) when { context has approval };',
        ]
    ),
    unique=True,
    max_size=3,
)
_ODD: Any = st.sampled_from([None, ("approval", 1), ("approval", "false"), ("uses", True), ("mode", 3)])


@st.composite
def _requests(draw: st.DrawFn, agents: list[Entity], secrets: list[Entity]) -> list[DecisionRequest]:
    asked = []
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        agent, secret = draw(st.sampled_from(agents)), draw(st.sampled_from(secrets))
        purpose = draw(st.sampled_from(["deploy", "incident"]))
        destination = draw(st.sampled_from(["", "github", "pd"]))
        task = _task(
            secret.id,
            purpose,
            draw(st.integers(0, 3)),
            destination,
            draw(st.integers(0, 1)),
            {"age": draw(st.sampled_from([0, 700])), "ttl": 3600, "tools": frozenset()},
        )
        context = decision_context(
            task,
            NOW,
            mode=draw(st.sampled_from(["inject", "reveal"])),
            destination=destination,
            method="GET",
            path="/x",
            uses=draw(st.integers(0, 3)),
            approval=draw(st.booleans()),
        )
        odd = draw(_ODD)
        if odd is not None:
            context[odd[0]] = odd[1]
        action = draw(st.sampled_from(["issue", "activate"]))
        asked.append(DecisionRequest(principal=agent, action=action, resource=secret, context=context))
    # Repeats (the same objects, and equal copies): decided once, answered each time.
    return asked + asked[: draw(st.integers(0, len(asked)))] + [dataclasses.replace(r) for r in asked[:2]]


def _sorted(decisions: list[Decision]) -> list[Decision]:
    return [dataclasses.replace(d, policies=tuple(sorted(d.policies))) for d in decisions]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=_policy_sets(),
    extra=_APPROVAL_POLICIES,
    attrs=st.lists(_AGENT_ATTRS, min_size=1, max_size=2),
    secrets=st.lists(_SECRET, min_size=1, max_size=2, unique_by=lambda e: e.id),
    data=st.data(),
)
def test_decide_many_answers_what_decide_answers(
    text: str, extra: list[str], attrs: list[dict[str, Any]], secrets: list[Entity], data: st.DataObject
) -> None:
    try:
        compiled = compile_policy_set("\n".join([text, *extra]))
    except PolicyValidationError:
        assume(False)
    agents = [Entity("Agent", f"spiffe://acme.test/agent/a{i}", a) for i, a in enumerate(attrs)]
    requests = data.draw(_requests(agents, secrets))
    one_by_one = _sorted([compiled.decide(r, trusted_context=True) for r in requests])
    memo: dict[Any, Any] = {}
    assert _sorted(compiled.decide_many(requests, memo)) == one_by_one
    assert _sorted(compiled.decide_many(requests, memo)) == one_by_one  # from the memo
