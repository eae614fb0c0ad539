"""Reach on hand-written policy sets: what a rule says, residuals, grouping, fail-closed cases."""

from __future__ import annotations

from typing import Any

import pytest

from tether.errors import InvalidInputError
from tether.policy import Entity, compile_policy_set
from tether.reach import Grid, SecretTarget, compute_reach, group_agents

GRID = Grid(purposes=("deploy", "incident"), destinations=("github", "pagerduty"), max_depth=2)


def _agent(name: str, **attrs: Any) -> tuple[str, Entity]:
    attributes = {"team": "platform", "environment": "prod", "owner": "o", "labels": ["deploy"], **attrs}
    return name, Entity("Agent", f"spiffe://acme.test/agent/{name}", attributes)


def _secret(path: str = "prod/github/token", sensitivity: int = 1) -> SecretTarget:
    attributes = {
        "path": path,
        "sensitivity": sensitivity,
        "purposes": ["deploy"],
        "destinations": ["github"],
        "owner": "",
    }
    return SecretTarget(Entity("Secret", path, attributes))


def _reach(text: str, agents: list[tuple[str, Entity]], **kwargs: Any) -> list[dict[str, Any]]:
    compiled = compile_policy_set(text)
    rules = compute_reach(compiled, group_agents(compiled, agents), [_secret(**kwargs)], GRID)
    return [rule.to_json() for rule in rules]


def test_a_dimension_no_policy_reads_is_any_value() -> None:
    rules = _reach(
        '@id("deploys") permit(principal, action == Action::"issue", resource is Secret) '
        'when { context.task.purpose == "deploy" };',
        [_agent("bot")],
    )
    assert len(rules) == 1
    rule = rules[0]
    assert rule["action"] == "issue"
    assert rule["purposes"] == ["deploy"]
    assert rule["sensitivities"] == [0, 1, 2, 3]
    assert rule["modes"] == ["inject", "reveal", "dynamic"]
    assert rule["destinations"] == ["", "github", "pagerduty"]
    assert rule["depths"] == [0, 1, 2]
    assert rule["approval"] == "not needed"
    assert rule["policies"] == ["deploys"]
    assert rule["residual"] is None


def test_conditions_on_continuous_fields_come_back_as_residuals() -> None:
    text = (
        '@id("young") permit(principal, action == Action::"activate", resource is Secret) '
        "when { context.task.age_seconds < 3600 };\n"
        '@id("cap-uses") forbid(principal, action == Action::"activate", resource is Secret) '
        "when { context.uses > 3 };"
    )
    rules = _reach(text, [_agent("bot")])
    assert len(rules) == 1
    residual = rules[0]["residual"]
    assert "context.task.age_seconds" in residual
    assert "[young]" in residual
    assert "unless" in residual
    assert "[cap-uses]" in residual
    compiled = compile_policy_set(text)
    (rule,) = compute_reach(compiled, group_agents(compiled, [_agent("bot")]), [_secret()], GRID)
    assert rule.residual is not None
    assert rule.residual.allows({"context.task.age_seconds": 10, "context.uses": 0})
    assert not rule.residual.allows({"context.task.age_seconds": 7200, "context.uses": 0})
    assert not rule.residual.allows({"context.task.age_seconds": 10, "context.uses": 4})
    assert not rule.residual.allows({})  # an unbound field: fail closed


def test_approval_only_rules_say_approval_is_required() -> None:
    rules = _reach(
        '@id("with-approval") permit(principal, action, resource is Secret) when { context.approval };',
        [_agent("bot")],
    )
    assert {rule["approval"] for rule in rules} == {"required"}


def test_agents_that_agree_on_what_policies_read_are_one_group_unless_a_policy_names_an_agent() -> None:
    agents = [_agent("a"), _agent("b", team="other"), _agent("c", environment="dev")]
    everyone = '@id("all") permit(principal, action == Action::"issue", resource is Secret);'
    assert [tuple(rule["agents"]) for rule in _reach(everyone, agents)] == [("a", "b", "c")]
    by_environment = (
        '@id("prod") permit(principal, action == Action::"issue", resource is Secret) '
        'when { principal.environment == "prod" };\n'
        '@id("teams") permit(principal, action == Action::"delegate", resource) '
        "when { principal.team == resource.team };"  # not an issue/activate policy: not read
    )
    assert [tuple(rule["agents"]) for rule in _reach(by_environment, agents)] == [("a", "b")]
    pinned = (
        everyone
        + '\n@id("not-b") forbid(principal == Agent::"spiffe://acme.test/agent/b", action, resource);'
    )
    rules = _reach(pinned, agents)
    assert sorted(name for rule in rules for name in rule["agents"]) == ["a", "c"]
    # The pinned forbid does not apply to a or c: left with the same policies, which see nothing of
    # them, they decide identically and share the rule.
    assert [tuple(rule["agents"]) for rule in rules] == [("a", "c")]


def test_a_forbid_that_can_fail_turns_an_allow_into_a_residual() -> None:
    text = (
        '@id("all") permit(principal, action == Action::"issue", resource is Secret);\n'
        '@id("overflow") forbid(principal, action == Action::"issue", resource is Secret) '
        "when { context.uses * 4611686018427387904 > 1 };"
    )
    compiled = compile_policy_set(text)
    (rule,) = compute_reach(compiled, group_agents(compiled, [_agent("bot")]), [_secret()], GRID)
    assert rule.residual is not None
    assert rule.residual.allows({"context.uses": 0})
    assert not rule.residual.allows({"context.uses": 2})  # overflow: an error is a deny


def test_no_permit_or_no_policy_reaches_nothing() -> None:
    assert (
        _reach('@id("open") permit(principal, action == Action::"open_task", resource);', [_agent("x")]) == []
    )
    assert _reach("", [_agent("x")]) == []


def test_dynamic_is_decided_as_reveal_when_the_engine_hands_out_the_value() -> None:
    text = (
        '@id("inject-only") permit(principal, action, resource is Secret) when { context.mode != "reveal" };'
    )
    compiled = compile_policy_set(text)
    groups = group_agents(compiled, [_agent("bot")])
    static = compute_reach(compiled, groups, [_secret()], GRID)
    assert {mode for rule in static for mode in rule.values["mode"]} == {"inject"}
    engine = SecretTarget(_secret().entity, dynamic_is_reveal=False)
    dynamic = compute_reach(compiled, groups, [engine], GRID)
    assert {mode for rule in dynamic for mode in rule.values["mode"]} == {"inject", "dynamic"}


def test_a_grid_needs_a_purpose_vocabulary() -> None:
    with pytest.raises(InvalidInputError):
        Grid(purposes=(), destinations=(), max_depth=1)


def test_what_reach_remembers_about_a_policy_set_follows_changed_attributes() -> None:
    # The same policy set answers twice (its evaluator is kept); the agent and the secret keep their
    # ids but change attributes in between: the second answer follows the change.
    text = (
        '@id("prod") permit(principal, action == Action::"issue", resource is Secret) '
        'when { principal.environment == "prod" && resource.sensitivity <= 1 };\n'
        '@id("pinned") permit(principal == Agent::"spiffe://acme.test/agent/a", action == Action::"issue", '
        'resource) when { principal.team == "platform" };'
    )
    assert _reach(text, [_agent("a", team="data", environment="dev")]) == []  # "pinned" cannot hold
    back = _reach(text, [_agent("a", environment="dev"), _agent("b", environment="dev")])
    assert [(r["agents"], r["policies"]) for r in back] == [(["a"], ["pinned"])]  # now it does
    assert _reach(text, [_agent("b")], sensitivity=2) == []
    assert [r["agents"] for r in _reach(text, [_agent("b")], sensitivity=1)] == [["b"]]
