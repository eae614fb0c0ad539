"""The policy core against real Cedar: compile, validate, index, decide, fail closed, derive approval."""

from __future__ import annotations

import json
from typing import Any

import cedarpy
import pytest

from tether.domain.decision import Decision
from tether.domain.secrets import Sensitivity
from tether.errors import InvalidInputError
from tether.policy import (
    ACTIONS,
    SCHEMA_TEXT,
    CompiledPolicySet,
    DecisionRequest,
    Entity,
    PolicyValidationError,
    compile_policy_set,
    explain,
)

AGENT = "spiffe://acme.test/agent/deployer"


def agent(name: str = AGENT, team: str = "platform") -> Entity:
    return Entity("Agent", name, {"team": team, "environment": "prod", "owner": "ops", "labels": {"ci"}})


def secret(path: str = "prod/github/token", sensitivity: Sensitivity = Sensitivity.INTERNAL) -> Entity:
    return Entity(
        "Secret",
        path,
        {
            "path": path,
            "sensitivity": int(sensitivity),
            "purposes": {"deploy", "incident"},
            "destinations": {"github"},
            "owner": "ops",
        },
    )


def context(**changes: Any) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "task": {
            "id": "task-1",
            "purpose": "deploy",
            "objective_sha256": "0" * 64,
            "sensitivity": 1,
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
            "tools": [],
            "depth": 0,
            "chain": [],
            "age_seconds": 5,
            "remaining_seconds": 600,
        },
        "approval": False,
        "mode": "inject",
        "destination": "github",
        "request": {"method": "GET", "path": "/repos"},
        "uses": 0,
    }
    ctx.update(changes)
    return ctx


def activate(resource: Entity | None = None, **changes: Any) -> DecisionRequest:
    return DecisionRequest(agent(), "activate", resource or secret(), context(**changes))


def open_task(**changes: Any) -> DecisionRequest:
    return DecisionRequest(agent(), "open_task", agent(), context(**changes))


RESTRICTED_NEEDS_APPROVAL = """
@id("deploy-secrets")
permit(principal, action in [Action::"issue", Action::"activate"], resource is Secret)
when { resource.purposes.contains(context.task.purpose) && resource.sensitivity < 3 };

@id("restricted-with-approval")
permit(principal, action == Action::"activate", resource is Secret)
when { resource.sensitivity == 3 && context.approval && context.task.purpose == "incident" };
"""


# --- schema and compilation -------------------------------------------------------------------


def test_schema_text_validates_with_cedar_and_names_every_action() -> None:
    cedarpy.Schema.from_str(SCHEMA_TEXT)
    assert ACTIONS == ("open_task", "issue", "activate", "delegate", "call_tool")
    for action in ACTIONS:
        assert f" {action}" in SCHEMA_TEXT


def test_design_first_policy_is_one_line_and_allows_opening_a_task() -> None:
    text = '@id("open") permit(principal, action == Action::"open_task", resource);'
    compiled = compile_policy_set(text)
    assert compiled.policy_ids == ("open",)
    decision = compiled.decide(open_task())
    assert decision
    assert decision.policies == ("open",)
    assert not compiled.decide(activate())


def test_compiled_set_keeps_text_and_its_sha256() -> None:
    import hashlib

    text = '@id("open") permit(principal, action == Action::"open_task", resource);'
    compiled = compile_policy_set(text)
    assert isinstance(compiled, CompiledPolicySet)
    assert compiled.text == text
    assert compiled.sha256 == hashlib.sha256(text.encode()).hexdigest()


def test_typo_in_attribute_is_refused_with_the_validator_message_naming_the_policy() -> None:
    text = """
@id("ok") permit(principal, action == Action::"open_task", resource);
@id("typo") permit(principal, action == Action::"activate", resource is Secret)
  when { resource.sensitivty > 1 };
"""
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set(text)
    assert isinstance(caught.value, InvalidInputError)
    assert len(caught.value.messages) == 1
    message = caught.value.messages[0]
    assert "typo" in message
    assert "sensitivty" in message
    assert "policy1" not in message


def test_unknown_entity_type_and_action_are_refused() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set('@id("a") permit(principal is User, action == Action::"read", resource);')
    assert caught.value.messages
    assert all("a" in message for message in caught.value.messages)


def test_unparseable_text_is_refused() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set('@id("a") permit(principal, action, resource')
    assert "parse" in caught.value.messages[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('permit(principal, action == Action::"open_task", resource);', "no @id"),
        ('@id("") permit(principal, action == Action::"open_task", resource);', "ill-formed"),
        ('@id("has space") permit(principal, action == Action::"open_task", resource);', "ill-formed"),
        (
            '@id("' + "x" * 129 + '") permit(principal, action == Action::"open_task", resource);',
            "ill-formed",
        ),
        (
            '@id("same") permit(principal, action == Action::"open_task", resource);\n'
            '@id("same") forbid(principal, action == Action::"open_task", resource);',
            "more than one",
        ),
    ],
)
def test_missing_ill_formed_or_duplicate_ids_are_refused(text: str, fragment: str) -> None:
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set(text)
    assert any(fragment in message for message in caught.value.messages)


def test_policy_without_id_is_described_so_users_can_find_it() -> None:
    text = """
@id("open") permit(principal, action == Action::"open_task", resource);
forbid(principal, action == Action::"activate", resource);
"""
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set(text)
    assert caught.value.messages == [
        'policy #2 (forbid, action activate) has no @id("...") annotation; every policy needs one'
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = """
permit(principal, action == Action::"open_task", resource);
@id("typo") permit(principal, action == Action::"activate", resource is Secret) when { resource.nope };
"""
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set(text)
    assert len(caught.value.messages) == 2


def test_policy_text_over_one_mebibyte_is_refused() -> None:
    text = '@id("open") permit(principal, action == Action::"open_task", resource);\n'
    text += "// " + "x" * (1024 * 1024) + "\n"
    with pytest.raises(InvalidInputError, match="1 MiB"):
        compile_policy_set(text)


def test_text_that_is_not_unicode_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="Unicode"):
        compile_policy_set('@id("a\ud800") permit(principal, action, resource);')


def test_policy_that_applies_to_no_action_is_refused() -> None:
    with pytest.raises(PolicyValidationError) as caught:
        compile_policy_set('@id("nothing") forbid(principal, action in [], resource);')
    assert all("nothing" in message for message in caught.value.messages)


def test_templates_are_refused() -> None:
    with pytest.raises(PolicyValidationError, match="template"):
        compile_policy_set('@id("t") permit(principal == ?principal, action, resource);')


@pytest.mark.parametrize("text", ["", "// nothing yet\n", '@id("no") forbid(principal, action, resource);'])
def test_empty_set_or_set_without_permit_denies_everything(text: str) -> None:
    compiled = compile_policy_set(text)
    for request in (open_task(), activate(), activate(approval=True)):
        decision = compiled.decide(request)
        assert not decision
        assert decision.missing == ()
        assert decision.errors == ()


# --- decisions --------------------------------------------------------------------------------


def test_allow_and_default_deny_name_the_right_policies() -> None:
    compiled = compile_policy_set(RESTRICTED_NEEDS_APPROVAL)
    allowed = compiled.decide(activate())
    assert allowed.allowed
    assert allowed.policies == ("deploy-secrets",)
    denied = compiled.decide(activate(task={**context()["task"], "purpose": "analytics"}))
    assert denied == Decision(allowed=False)
    assert explain(denied) == "denied: no policy permits this request (default deny)"
    assert explain(allowed) == "allowed by deploy-secrets"


def test_forbid_overrides_permit_and_is_named() -> None:
    text = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("no-prod-on-fridays") forbid(principal, action == Action::"open_task", resource)
  when { principal.environment == "prod" };
"""
    decision = compile_policy_set(text).decide(open_task())
    assert not decision
    assert decision.policies == ("no-prod-on-fridays",)
    assert decision.missing == ()
    assert explain(decision) == "denied by no-prod-on-fridays"


def test_request_not_matching_the_schema_is_denied_with_an_error() -> None:
    compiled = compile_policy_set('@id("open") permit(principal, action == Action::"open_task", resource);')
    ctx = context()
    del ctx["approval"]
    decision = compiled.decide(DecisionRequest(agent(), "open_task", agent(), ctx))
    assert not decision
    assert decision.errors
    assert "approval" in decision.errors[0]
    bad_agent = Entity("Agent", "spiffe://acme.test/agent/x", {"team": 7})
    decision = compiled.decide(DecisionRequest(bad_agent, "open_task", bad_agent, context()))
    assert not decision
    assert decision.errors


def test_unserialisable_or_deeply_nested_requests_are_denied_with_an_error() -> None:
    compiled = compile_policy_set('@id("open") permit(principal, action == Action::"open_task", resource);')
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100_000):
        node["x"] = {}
        node = node["x"]
    for ctx in (context(uses=object()), context(extra=deep)):
        decision = compiled.decide(DecisionRequest(agent(), "open_task", agent(), ctx))
        assert not decision
        assert decision.errors


def test_policy_ids_may_use_every_allowed_character() -> None:
    ident = "team.platform:open_task-v2"
    compiled = compile_policy_set(
        f'@id("{ident}") permit(principal, action == Action::"open_task", resource);'
    )
    assert compiled.decide(open_task()).policies == (ident,)


def test_conflicting_duplicate_entities_are_denied_with_an_error() -> None:
    compiled = compile_policy_set('@id("open") permit(principal, action == Action::"open_task", resource);')
    other = agent(team="other")
    decision = compiled.decide(DecisionRequest(agent(), "open_task", agent(), context(), entities=(other,)))
    assert not decision
    assert "twice" in decision.errors[0]


# --- fail closed ------------------------------------------------------------------------------

OVERFLOWING_FORBID = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("use-cap") forbid(principal, action, resource)
  when { context.uses * 9223372036854775807 > 1000 };
"""


def test_runtime_error_in_a_policy_denies_with_the_error_named() -> None:
    compiled = compile_policy_set(OVERFLOWING_FORBID)
    assert compiled.decide(open_task(uses=0)).allowed  # no overflow: the forbid does not apply
    decision = compiled.decide(open_task(uses=2))
    assert not decision
    assert decision.errors
    assert "use-cap" in decision.errors[0]
    assert "overflow" in decision.errors[0]
    assert decision.policies == ("use-cap",)
    assert explain(decision).startswith("denied: policy evaluation failed")


def test_without_fail_closed_cedar_alone_would_have_allowed_the_erroring_request() -> None:
    request = open_task(uses=2)
    raw = cedarpy.is_authorized(
        {
            "principal": {"type": "Agent", "id": AGENT},
            "action": {"type": "Action", "id": "open_task"},
            "resource": {"type": "Agent", "id": AGENT},
            "context": request.context and json.loads(json.dumps(dict(request.context))),
        },
        OVERFLOWING_FORBID,
        [agent().to_cedar()],
        schema=SCHEMA_TEXT,
    )
    assert raw.allowed  # Cedar skipped the erroring forbid and allowed
    assert raw.diagnostics.errors
    assert not compile_policy_set(OVERFLOWING_FORBID).decide(request)


def test_erroring_request_is_not_turned_into_an_approval_request() -> None:
    text = OVERFLOWING_FORBID + '@id("x") permit(principal, action, resource) when { context.approval };'
    decision = compile_policy_set(text).decide(open_task(uses=2))
    assert not decision
    assert decision.missing == ()
    assert decision.errors


# --- derived approval -------------------------------------------------------------------------


def test_restricted_secret_without_approval_is_denied_with_approval_missing() -> None:
    compiled = compile_policy_set(RESTRICTED_NEEDS_APPROVAL)
    task = {**context()["task"], "purpose": "incident"}
    pager = secret("prod/pagerduty/key", Sensitivity.RESTRICTED)
    decision = compiled.decide(activate(pager, task=task))
    assert not decision
    assert decision.missing == ("approval",)
    assert decision.policies == ("restricted-with-approval",)
    assert decision.errors == ()
    assert "approval required" in explain(decision)
    approved = compiled.decide(activate(pager, task=task, approval=True))
    assert approved
    assert approved.policies == ("restricted-with-approval",)


def test_approval_is_not_missing_when_it_would_not_help() -> None:
    compiled = compile_policy_set(RESTRICTED_NEEDS_APPROVAL)
    pager = secret("prod/pagerduty/key", Sensitivity.RESTRICTED)
    decision = compiled.decide(activate(pager))  # purpose deploy: even an approval would not allow
    assert not decision
    assert decision.missing == ()


def test_approval_does_not_override_a_forbid() -> None:
    text = RESTRICTED_NEEDS_APPROVAL + '@id("freeze") forbid(principal, action, resource is Secret);'
    pager = secret("prod/pagerduty/key", Sensitivity.RESTRICTED)
    task = {**context()["task"], "purpose": "incident"}
    decision = compile_policy_set(text).decide(activate(pager, task=task))
    assert decision.missing == ()
    assert decision.policies == ("freeze",)


# --- the index --------------------------------------------------------------------------------


def test_activate_only_policy_is_never_evaluated_for_open_task() -> None:
    text = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("activate-all") permit(principal, action == Action::"activate", resource);
@id("activate-cap") forbid(principal, action == Action::"activate", resource)
  when { context.uses * 9223372036854775807 > 1000 };
"""
    compiled = compile_policy_set(text)
    assert compiled.applicable("open_task", "Agent", AGENT) == ("open",)
    decision = compiled.decide(open_task(uses=5))  # the activate policy would error on this context
    assert decision.allowed
    assert decision.errors == ()
    assert compiled.decide(activate(uses=5)).errors  # ...and does, where it applies


def test_index_follows_resource_type_and_pinned_resources() -> None:
    text = """
@id("any") forbid(principal, action, resource) when { context.mode == "never" };
@id("secrets") permit(principal, action == Action::"activate", resource is Secret);
@id("dest") permit(principal, action == Action::"activate", resource is Destination);
@id("one") forbid(principal, action == Action::"activate", resource == Secret::"prod/db/root");
@id("tools") permit(principal, action, resource is Tool);
@id("group") permit(principal, action in [Action::"issue", Action::"delegate"], resource);
"""
    compiled = compile_policy_set(text)
    assert compiled.applicable("activate", "Secret", "prod/github/token") == ("any", "secrets")
    assert compiled.applicable("activate", "Secret", "prod/db/root") == ("any", "secrets", "one")
    assert compiled.applicable("activate", "Destination", "github") == ("any", "dest")
    assert compiled.applicable("call_tool", "Tool", "search") == ("any", "tools")
    assert compiled.applicable("issue", "Secret", "x") == ("any", "group")
    assert compiled.applicable("delegate", "Agent", AGENT) == ("any", "group")
    assert compiled.applicable("open_task", "Agent", AGENT) == ("any",)
    assert compiled.decide(activate()).policies == ("secrets",)
    root = compiled.decide(activate(secret("prod/db/root")))
    assert not root
    assert root.policies == ("one",)


def test_index_follows_pinned_principals() -> None:
    other = "spiffe://acme.test/agent/other"
    text = f"""
@id("open") permit(principal, action == Action::"open_task", resource);
@id("ban-other") forbid(principal == Agent::"{other}", action, resource);
@id("other-root") permit(principal == Agent::"{other}", action == Action::"activate",
  resource == Secret::"prod/db/root");
@id("me-root") permit(principal == Agent::"{AGENT}", action == Action::"activate",
  resource == Secret::"prod/db/root");
"""
    compiled = compile_policy_set(text)
    assert compiled.applicable("open_task", "Agent", AGENT, AGENT) == ("open",)
    assert compiled.applicable("open_task", "Agent", other, other) == ("open", "ban-other")
    assert compiled.applicable("activate", "Secret", "prod/db/root", AGENT) == ("me-root",)
    assert compiled.applicable("activate", "Secret", "prod/db/root", other) == ("ban-other", "other-root")
    assert compiled.decide(open_task())
    banned = compiled.decide(DecisionRequest(agent(other), "open_task", agent(other), context()))
    assert banned.policies == ("ban-other",)
    root = compiled.decide(activate(secret("prod/db/root")))
    assert root.policies == ("me-root",)


def test_resource_hierarchy_scopes_are_kept_for_every_type() -> None:
    text = """
@id("open") permit(principal, action == Action::"open_task", resource);
@id("in-agent") forbid(principal, action, resource in Agent::"spiffe://acme.test/agent/deployer");
"""
    decision = compile_policy_set(text).decide(open_task())
    assert not decision
    assert decision.policies == ("in-agent",)


# --- values -----------------------------------------------------------------------------------


def test_request_validation_refuses_wrong_shapes() -> None:
    with pytest.raises(InvalidInputError):
        DecisionRequest(agent(), "read", agent(), context())
    with pytest.raises(InvalidInputError):
        DecisionRequest(secret(), "activate", secret(), context())
    with pytest.raises(InvalidInputError):
        DecisionRequest(agent(), "open_task", secret(), context())
    with pytest.raises(InvalidInputError):
        Entity("User", "alice", {})
    with pytest.raises(InvalidInputError):
        Entity("Agent", "", {})
    with pytest.raises(InvalidInputError):
        Entity("Agent", "a\nb", {})


def test_decision_is_truthy_only_when_allowed_and_serialises() -> None:
    decision = Decision.deny(policies=("p",), missing=("approval",))
    assert not decision
    assert decision.to_json() == {"allowed": False, "policies": ["p"], "errors": [], "missing": ["approval"]}
    assert Decision(allowed=True, policies=("p",))
    with pytest.raises(InvalidInputError):
        Decision(allowed=True, errors=("boom",))
    with pytest.raises(InvalidInputError):
        Decision(allowed=True, missing=("approval",))


def test_explain_mentions_every_error_count() -> None:
    text = explain(Decision.deny(errors=("first", "second", "third")))
    assert "first" in text
    assert "2 more errors" in text


@pytest.mark.parametrize(
    "body",
    ["(" * 1000 + "true" + ")" * 1000, "!" * 1000 + "true", "[" * 2000 + "]" * 2000 + " == []"],
)
def test_deep_nesting_is_refused_before_the_parser_can_crash_the_process(body: str) -> None:
    # cedarpy's parser overflows the native stack (the process dies) at a few hundred levels.
    with pytest.raises(PolicyValidationError, match="nest deeper"):
        compile_policy_set(f'@id("deep") permit(principal, action, resource) when {{ {body} }};')


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = '@id("s") permit(principal, action, resource) when { context.destination == "' + "(" * 500 + '" };'
    assert compile_policy_set(text).policy_ids == ("s",)
