"""Reach equals brute force: for random policy sets (a grammar over the schema), random agents and
secrets, the reach answer at every point of the grid equals the broker's own decision there; so does
each destination's reach (the secret it injects, decided with mode ``inject`` towards it).

Brute force builds each context with the broker's builder (:func:`tether.domain.tasks.decision_context`
over a real :class:`~tether.domain.tasks.Task`) and decides with :meth:`CompiledPolicySet.decide`, as
the broker does. The fields reach leaves unknown (age, remaining lifetime, uses, request, ids) get
random concrete values; a rule's residual is evaluated with the same values.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.domain.tasks import Intent, Task, decision_context, new_id
from tether.policy import DecisionRequest, Entity, PolicyValidationError, compile_policy_set
from tether.reach import (
    DIMENSIONS,
    UNKNOWN_FIELDS,
    DestinationTarget,
    Grid,
    SecretTarget,
    compute_reach,
    destination_reach,
    group_agents,
)

PURPOSES = ("deploy", "incident")
DESTINATIONS = ("github", "pd")
# Grid values no policy names (unless an entity attribute does): reach decides one for all of them.
UNNAMED_PURPOSES = ("research",)
UNNAMED_DESTINATIONS = ("slack", "jira")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OVERFLOW = "4611686018427387904"

_ATOMS = st.sampled_from(
    [
        'context.task.purpose == "deploy"',
        'context.task.purpose == "incident"',
        "resource.purposes.contains(context.task.purpose)",
        "principal.labels.contains(context.task.purpose)",
        "context.task.sensitivity <= 1",
        "context.task.sensitivity >= 2",
        "resource.sensitivity <= 2",
        "resource.sensitivity == 3",
        "resource.sensitivity <= context.task.sensitivity",
        'context.mode == "inject"',
        'context.mode == "reveal"',
        'context.mode != "dynamic"',
        'context.destination == "github"',
        'context.destination == ""',
        'context.destination != "github"',
        'context.destination like "s*"',
        "resource.destinations.containsAny(context.task.destinations)",
        "resource.destinations.contains(context.destination)",
        'context.task.destinations.contains("pd")',
        "context.task.depth == 0",
        "context.task.depth > 0",
        "context.approval",
        "context.task.secrets.contains(resource.path)",
        'principal.environment == "prod"',
        'principal.team == "ops"',
        'resource.path like "prod/*"',
        "context.task.age_seconds < 600",
        "context.task.remaining_seconds > 60",
        "context.uses <= 2",
        f"context.uses * {OVERFLOW} > 1",
        'context.request.method == "GET"',
        'context.request.path like "/v1/tasks/*"',
        "context.task.tools.isEmpty()",
        "context.task.chain.isEmpty()",
    ]
)
_ACTIONS = st.sampled_from(
    [
        'action == Action::"issue"',
        'action == Action::"activate"',
        'action in [Action::"issue", Action::"activate"]',
        "action",
    ]
)
_RESOURCES = st.sampled_from(
    ["resource is Secret", 'resource == Secret::"prod/app/key"', 'resource == Secret::"dev/x"']
)
_PRINCIPALS = st.sampled_from(
    ["principal", "principal is Agent", 'principal == Agent::"spiffe://acme.test/agent/a0"']
)


@st.composite
def _condition(draw: st.DrawFn) -> str:
    atoms = draw(st.lists(_ATOMS, min_size=0, max_size=3))
    parts = [f"!({atom})" if draw(st.booleans()) and draw(st.booleans()) else atom for atom in atoms]
    if len(parts) >= 2 and draw(st.booleans()):
        return f"({parts[0]} || {parts[1]})" + "".join(f" && {p}" for p in parts[2:])
    return " && ".join(parts)


@st.composite
def _policy_sets(draw: st.DrawFn) -> str:
    count = draw(st.integers(min_value=1, max_value=4))
    policies = []
    for index in range(count):
        effect = "permit" if index == 0 or draw(st.booleans()) else "forbid"
        condition = draw(_condition())
        when = f" when {{ {condition} }}" if condition else ""
        scope = f"{draw(_PRINCIPALS)}, {draw(_ACTIONS)}, {draw(_RESOURCES)}"
        policies.append(f'@id("p{index}") {effect}({scope}){when};')
    return "\n".join(policies)


_AGENT_ATTRS = st.fixed_dictionaries(
    {
        "team": st.sampled_from(["ops", "dev"]),
        "environment": st.sampled_from(["prod", "dev"]),
        "owner": st.just("o"),
        "labels": st.lists(st.sampled_from(PURPOSES), unique=True).map(sorted),
    }
)
_SECRET = st.builds(
    lambda path, sensitivity, purposes, destinations: Entity(
        "Secret",
        path,
        {
            "path": path,
            "sensitivity": sensitivity,
            "purposes": sorted(purposes),
            "destinations": sorted(destinations),
            "owner": "",
        },
    ),
    st.sampled_from(["prod/app/key", "dev/x"]),
    st.integers(min_value=0, max_value=3),
    st.sets(st.sampled_from(PURPOSES)),
    st.sets(st.sampled_from(DESTINATIONS + UNNAMED_DESTINATIONS[:1])),
)
_UNKNOWNS = st.fixed_dictionaries(
    {
        "age": st.sampled_from([0, 599, 600, 4000]),
        "ttl": st.sampled_from([30, 61, 3600]),
        "uses": st.sampled_from([0, 2, 3]),
        "method": st.sampled_from(["GET", "POST"]),
        "path": st.sampled_from(["/v1/tasks/x/grants", "/repos"]),
        "tools": st.sampled_from([frozenset(), frozenset({"srv/tool"})]),
    }
)


def _task(secret: str, purpose: str, sensitivity: int, destination: str, depth: int, unknowns: Any) -> Task:
    created = NOW - timedelta(seconds=unknowns["age"])
    chain = tuple(new_id("tsk") for _ in range(depth))
    return Task(
        id=new_id("tsk"),
        agent_id="spiffe://acme.test/agent/a0",
        intent=Intent(
            purpose=purpose,
            objective="property test",
            sensitivity=sensitivity,
            secrets=frozenset({secret}),
            destinations=frozenset({destination}) if destination else frozenset(),
            tools=unknowns["tools"],
        ),
        status="active",
        created_at=created,
        expires_at=NOW + timedelta(seconds=unknowns["ttl"]),
        parent_id=chain[-1] if chain else None,
        depth=depth,
        chain=chain,
    )


def _bound(context: dict[str, Any], fields: tuple[tuple[str, ...], ...] = UNKNOWN_FIELDS) -> dict[str, Any]:
    values = {}
    for path in fields:
        value: Any = context
        for key in path:
            value = value[key]
        values["context." + ".".join(path)] = value
    return values


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
@given(
    text=_policy_sets(),
    agents=st.lists(_AGENT_ATTRS, min_size=1, max_size=2),
    secret=_SECRET,
    dynamic_is_reveal=st.booleans(),
    purposes=st.lists(st.sampled_from(PURPOSES + UNNAMED_PURPOSES), min_size=1, unique=True),
    destinations=st.lists(st.sampled_from(DESTINATIONS + UNNAMED_DESTINATIONS), max_size=2, unique=True),
    max_depth=st.integers(min_value=0, max_value=1),
    action=st.sampled_from(["issue", "activate"]),
    unknowns=_UNKNOWNS,
)
def test_reach_equals_brute_force_over_the_grid(
    text: str,
    agents: list[dict[str, Any]],
    secret: Entity,
    dynamic_is_reveal: bool,
    purposes: list[str],
    destinations: list[str],
    max_depth: int,
    action: str,
    unknowns: dict[str, Any],
) -> None:
    try:
        compiled = compile_policy_set(text)
    except PolicyValidationError:
        assume(False)
    named = [
        (f"a{i}", Entity("Agent", f"spiffe://acme.test/agent/a{i}", attrs)) for i, attrs in enumerate(agents)
    ]
    grid = Grid(purposes=tuple(purposes), destinations=tuple(destinations), max_depth=max_depth)
    target = SecretTarget(secret, dynamic_is_reveal=dynamic_is_reveal)
    rules = compute_reach(compiled, group_agents(compiled, named), [target], grid, actions=(action,))
    # Every registered destination injects this secret (and one injects another secret).
    injecting = [DestinationTarget(d, secret.id) for d in grid.destinations if d]
    other = DestinationTarget("elsewhere", "other/secret")
    through = destination_reach(rules, [*injecting, other], grid)
    assert not [r for r in through if r.destination == other]
    axes = [grid.values(d) for d in DIMENSIONS]
    tasks: dict[tuple[Any, ...], Task] = {}  # mode and approval are not the task's: one task per rest
    for (name, agent), point in itertools.product(named, itertools.product(*axes)):
        purpose, sensitivity, mode, destination, depth, approval = point
        key = (purpose, sensitivity, destination, depth)
        if key not in tasks:
            tasks[key] = _task(secret.id, purpose, sensitivity, destination, depth, unknowns)
        task = tasks[key]
        context = decision_context(
            task,
            NOW,
            mode="reveal" if mode == "dynamic" and dynamic_is_reveal else mode,
            destination=destination,
            method=unknowns["method"],
            path=unknowns["path"],
            uses=unknowns["uses"],
            approval=approval,
        )
        request = DecisionRequest(principal=agent, action=action, resource=secret, context=context)
        expected = compiled.decide(request, trusted_context=True).allowed
        covering = [r for r in rules if name in r.agents and r.action == action and r.covers(point)]
        assert len(covering) <= 1, f"rules overlap at {point}"
        if not covering:
            got = False
        elif covering[0].residual is None:
            got = True
        else:
            got = covering[0].residual.allows(_bound(context))
        assert got == expected, f"{name} {action} at {dict(zip(DIMENSIONS, point, strict=True))}\n{text}"
        # Through a destination: the same decision where egress decides (inject, towards it).
        via = [r for r in through if name in r.agents and r.action == action and r.covers(point)]
        assert len(via) <= 1, f"destination rules overlap at {point}"
        if mode != "inject" or not destination:
            assert not via, f"a destination rule outside inject towards it, at {point}"
            continue
        assert [r.destination.name for r in via] in ([], [destination])
        assert bool(via) == bool(covering), f"{name} {action} through {destination} at {point}\n{text}"
        if via:
            assert (via[0].policies, via[0].residual) == (covering[0].policies, covering[0].residual)
