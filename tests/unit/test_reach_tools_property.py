"""Tool reach equals brute force: for random policy sets over ``call_tool`` (a grammar over the
schema), random agents and pinned tools, the reach answer at every point of the grid equals the
decision the MCP gateway makes there.

Brute force builds each context as ``McpGateway._context`` does for ``tools/call``
(:func:`tether.domain.tasks.decision_context` over a real :class:`~tether.domain.tasks.Task`, mode
``call``, destination ``mcp:<server>``, request ``tools/call`` on ``server/name``, the arguments'
shape) and decides with :meth:`CompiledPolicySet.decide`. What reach leaves unknown for a tool
call (the task's declared secrets, destinations and tools, age, remaining lifetime, uses, the
arguments) gets random concrete values; a rule's residual is evaluated with the same values.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tether.domain.tasks import Intent, Task, decision_context, new_id
from tether.mcp.servers import argument_shape, cedar_tool_id
from tether.policy import DecisionRequest, Entity, PolicyValidationError, compile_policy_set
from tether.reach import DIMENSIONS, TOOL_UNKNOWN_FIELDS, Grid, ToolTarget, compute_tool_reach, group_agents

PURPOSES = ("deploy", "incident")
UNNAMED_PURPOSES = ("research",)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

_ATOMS = st.sampled_from(
    [
        'context.task.purpose == "deploy"',
        'context.task.purpose == "incident"',
        "principal.labels.contains(context.task.purpose)",
        "context.task.sensitivity <= 1",
        "context.task.sensitivity >= 2",
        "context.task.depth == 0",
        "context.task.depth > 0",
        "context.approval",
        'context.mode == "call"',
        'context.mode == "inject"',
        'context.destination == "mcp:gh"',
        'context.destination like "mcp:*"',
        'context.request.method == "tools/call"',
        'context.request.path == "gh/create_issue"',
        'context.request.path like "gh/*"',
        'resource.server == "gh"',
        'resource.name == "delete_repo"',
        'resource.name like "create*"',
        'context.task.tools.contains("gh/create_issue")',
        'context.task.tools.contains("gh/*")',
        "context.task.tools.isEmpty()",
        "context.task.secrets.isEmpty()",
        'context.task.secrets.contains("prod/github/token")',
        'context.task.destinations.contains("github")',
        'context has arguments && context.arguments.contains("title:string")',
        "context.uses <= 2",
        "context.task.age_seconds < 600",
        "context.task.remaining_seconds > 60",
        'principal.environment == "prod"',
        'principal.team == "ops"',
    ]
)
_ACTIONS = st.sampled_from(['action == Action::"call_tool"', "action", 'action == Action::"activate"'])
_RESOURCES = st.sampled_from(
    ["resource is Tool", 'resource == Tool::"gh/create_issue"', 'resource == Tool::"fs/read"', "resource"]
)
_PRINCIPALS = st.sampled_from(
    ["principal", "principal is Agent", 'principal == Agent::"spiffe://acme.test/agent/a0"']
)
TOOLS = (("gh", "create_issue"), ("gh", "delete_repo"), ("fs", "read"))


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
_UNKNOWNS = st.fixed_dictionaries(
    {
        "age": st.sampled_from([0, 599, 600, 4000]),
        "ttl": st.sampled_from([30, 61, 3600]),
        "uses": st.sampled_from([0, 2, 3]),
        "tools": st.sampled_from(
            [frozenset(), frozenset({"gh/create_issue"}), frozenset({"gh/*", "fs/read"})]
        ),
        "secrets": st.sampled_from([frozenset(), frozenset({"prod/github/token"})]),
        "destinations": st.sampled_from([frozenset(), frozenset({"github"})]),
        "arguments": st.sampled_from([{}, {"title": "x"}, {"title": 1, "body": "y"}]),
    }
)


def _task(purpose: str, sensitivity: int, depth: int, unknowns: Any) -> Task:
    chain = tuple(new_id("tsk") for _ in range(depth))
    return Task(
        id=new_id("tsk"),
        agent_id="spiffe://acme.test/agent/a0",
        intent=Intent(
            purpose=purpose,
            objective="property test",
            sensitivity=sensitivity,
            secrets=unknowns["secrets"],
            destinations=unknowns["destinations"],
            tools=unknowns["tools"],
        ),
        status="active",
        created_at=NOW - timedelta(seconds=unknowns["age"]),
        expires_at=NOW + timedelta(seconds=unknowns["ttl"]),
        parent_id=chain[-1] if chain else None,
        depth=depth,
        chain=chain,
    )


def _gateway_context(task: Task, server: str, tool: str, unknowns: Any, approval: bool) -> dict[str, Any]:
    """What ``McpGateway._context`` builds for ``tools/call`` (with an approval, as re-decided)."""
    context = decision_context(
        task,
        NOW,
        mode="call",
        destination=f"mcp:{server}",
        method="tools/call",
        path=cedar_tool_id(server, tool),
        uses=unknowns["uses"],
        approval=approval,
    )
    context["arguments"] = argument_shape(unknowns["arguments"])
    return context


def _bound(context: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for path in TOOL_UNKNOWN_FIELDS:
        value: Any = context
        for key in path:
            value = value[key]
        values["context." + ".".join(path)] = value
    return values


def _tool(server: str, name: str) -> Entity:
    return Entity("Tool", cedar_tool_id(server, name), {"server": server, "name": name})


@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
@given(
    text=_policy_sets(),
    agents=st.lists(_AGENT_ATTRS, min_size=1, max_size=2),
    tools=st.lists(st.sampled_from(TOOLS), min_size=1, max_size=2, unique=True),
    purposes=st.lists(st.sampled_from(PURPOSES + UNNAMED_PURPOSES), min_size=1, unique=True),
    destinations=st.lists(st.sampled_from(["github", "slack"]), max_size=2, unique=True),
    max_depth=st.integers(min_value=0, max_value=1),
    unknowns=_UNKNOWNS,
)
def test_tool_reach_equals_brute_force_over_the_grid(
    text: str,
    agents: list[dict[str, Any]],
    tools: list[tuple[str, str]],
    purposes: list[str],
    destinations: list[str],
    max_depth: int,
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
    targets = [ToolTarget(_tool(server, name)) for server, name in tools]
    groups = group_agents(compiled, named, actions=("call_tool",))
    rules = compute_tool_reach(compiled, groups, targets, grid)
    tasks: dict[tuple[Any, ...], Task] = {}
    axes = [grid.purposes, (0, 1, 2, 3), tuple(range(max_depth + 1)), (False, True)]
    for (name, agent), target, (purpose, sensitivity, depth, approval) in itertools.product(
        named, targets, itertools.product(*axes)
    ):
        key = (purpose, sensitivity, depth)
        if key not in tasks:
            tasks[key] = _task(purpose, sensitivity, depth, unknowns)
        context = _gateway_context(tasks[key], target.server, target.name, unknowns, approval)
        request = DecisionRequest(
            principal=agent, action="call_tool", resource=target.entity, context=context
        )
        expected = compiled.decide(request, trusted_context=True).allowed
        point = (purpose, sensitivity, "call", f"mcp:{target.server}", depth, approval)
        covering = [r for r in rules if name in r.agents and r.tool == target and r.covers(point)]
        assert len(covering) <= 1, f"rules overlap at {point}"
        if not covering:
            got = False
        elif covering[0].residual is None:
            got = True
        else:
            got = covering[0].residual.allows(_bound(context))
        where = dict(zip(DIMENSIONS, point, strict=True))
        assert got == expected, f"{name} call_tool {target.entity.id} at {where}\n{text}\n{unknowns}"
