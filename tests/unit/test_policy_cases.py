"""`tether policy test` cases: pass, fail with the decision, and refusal of malformed cases."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tether.errors import InvalidInputError
from tether.policy import CaseReport, compile_policy_set, run_cases

POLICIES = """
@id("open") permit(principal, action == Action::"open_task", resource)
  when { principal.environment == "prod" };
@id("restricted-with-approval")
permit(principal, action == Action::"activate", resource is Secret)
when { resource.sensitivity == 3 && context.approval };
"""

CONTEXT: dict[str, Any] = {
    "task": {
        "id": "t1",
        "purpose": "incident",
        "objective_sha256": "0" * 64,
        "sensitivity": 3,
        "secrets": ["prod/pagerduty/key"],
        "destinations": ["pagerduty"],
        "tools": [],
        "depth": 0,
        "chain": [],
        "age_seconds": 1,
        "remaining_seconds": 300,
    },
    "approval": False,
    "mode": "inject",
    "destination": "pagerduty",
    "request": {"method": "POST", "path": "/incidents"},
    "uses": 0,
}
AGENT = {
    "type": "Agent",
    "id": "spiffe://acme.test/agent/oncall",
    "attributes": {"team": "sre", "environment": "prod", "owner": "sre", "labels": []},
}
PAGER = {
    "type": "Secret",
    "id": "prod/pagerduty/key",
    "attributes": {
        "path": "prod/pagerduty/key",
        "sensitivity": 3,
        "purposes": ["incident"],
        "destinations": ["pagerduty"],
        "owner": "sre",
    },
}


def case(name: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "principal": copy.deepcopy(AGENT),
        "action": "open_task",
        "resource": copy.deepcopy(AGENT),
        "context": copy.deepcopy(CONTEXT),
        "expect": "allow",
    }
    base.update(changes)
    return base


def test_passing_cases_are_counted() -> None:
    report = run_cases(
        compile_policy_set(POLICIES),
        [
            case("prod agent opens a task"),
            case(
                "pager needs approval",
                action="activate",
                resource=PAGER,
                expect="deny",
                expect_missing=["approval"],
            ),
            case(
                "pager with approval",
                action="activate",
                resource=PAGER,
                context={**CONTEXT, "approval": True},
            ),
        ],
    )
    assert report == CaseReport(passed=3, failed=[])
    assert report.ok


def test_failing_cases_carry_what_was_expected_and_the_decision() -> None:
    report = run_cases(
        compile_policy_set(POLICIES),
        [
            case("wrongly expects deny", expect="deny"),
            case(
                "wrongly expects nothing missing",
                action="activate",
                resource=PAGER,
                expect="deny",
                expect_missing=[],
            ),
            case("right", action="activate", resource=PAGER, expect="deny"),
        ],
    )
    assert report.passed == 1
    assert not report
    (first_name, first_expected, first), (second_name, second_expected, second) = report.failed
    assert (first_name, first_expected) == ("wrongly expects deny", "deny")
    assert first.allowed
    assert first.policies == ("open",)
    assert second_name == "wrongly expects nothing missing"
    assert second_expected == "deny (missing: nothing)"
    assert second.missing == ("approval",)


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        (case("no expect", expect="maybe"), "'no expect'"),
        (case("no principal", principal=None), "'no principal'"),
        (case("bad principal", principal={"type": "Agent"}), "'bad principal'"),
        (case("bad action", action="read"), "'bad action'"),
        (case("bad type", resource={**PAGER, "type": "User"}), "'bad type'"),
        (case("unknown field", extra=1), "'unknown field'"),
        (case("bad missing", expect_missing="approval"), "'bad missing'"),
        ({"principal": AGENT}, "case #1"),
        ("not a mapping", "case #1"),
    ],
)
def test_malformed_cases_are_refused_naming_the_case(bad: Any, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        run_cases(compile_policy_set(POLICIES), [bad])
    assert fragment in str(caught.value)


def test_repeated_case_names_and_non_list_are_refused() -> None:
    compiled = compile_policy_set(POLICIES)
    with pytest.raises(InvalidInputError, match="repeat"):
        run_cases(compiled, [case("same"), case("same")])
    with pytest.raises(InvalidInputError, match="list"):
        run_cases(compiled, "cases.yaml")  # type: ignore[arg-type]


def test_a_case_whose_context_does_not_fit_the_schema_is_a_deny_with_an_error() -> None:
    report = run_cases(compile_policy_set(POLICIES), [case("empty context", context={})])
    assert report.passed == 0
    _, _, decision = report.failed[0]
    assert decision.errors
