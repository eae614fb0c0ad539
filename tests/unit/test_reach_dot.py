"""``--format dot``: a reach answer as a Graphviz digraph (agents → secrets → destinations)."""

from __future__ import annotations

import re
from typing import Any

from tether.reach.dot import to_dot

_ID = r'"(?:[^"\\]|\\.)*"'
_STATEMENT = re.compile(rf"^  (?P<a>{_ID})(?: -> (?P<b>{_ID}))? \[(?P<attrs>.*)\];$")


def parse(dot: str) -> tuple[dict[str, str], set[tuple[str, str, str]]]:
    """A strict reader of what :func:`to_dot` writes: nodes (id → label) and edges (a, b, label).
    Any line it does not recognise fails the test."""
    lines = dot.splitlines()
    assert re.fullmatch(rf"digraph {_ID} \{{", lines[0]), lines[0]
    assert lines[-1] == "}"
    nodes: dict[str, str] = {}
    edges: set[tuple[str, str, str]] = set()
    for line in lines[1:-1]:
        if line in (
            "  rankdir=LR;",
            "  node [fontname=Helvetica, fontsize=10];",
            "  edge [fontname=Helvetica, fontsize=9];",
        ):
            continue
        match = _STATEMENT.fullmatch(line)
        assert match is not None, line
        label = re.search(rf"label=({_ID})", match["attrs"])
        assert label is not None, line
        text = unquote(label.group(1))
        if match["b"] is None:
            nodes[unquote(match["a"])] = text
        else:
            a, b = unquote(match["a"]), unquote(match["b"])
            assert a in nodes, line  # edges only between declared nodes
            assert b in nodes, line
            edges.add((a, b, text + (" (dashed)" if "style=dashed" in match["attrs"] else "")))
    return nodes, edges


def unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), quoted[1:-1])


def rule(agents: list[str], secret: str, action: str, modes: list[str], **kw: Any) -> dict[str, Any]:
    return {
        "agents": agents,
        "secret": secret,
        "action": action,
        "modes": modes,
        "destinations": kw.get("destinations", ["github"]),
        "approval": kw.get("approval", "not needed"),
        "residual": kw.get("residual"),
        "policies": ["p"],
    }


def test_agents_point_at_secrets_and_secrets_at_destinations() -> None:
    answer = {
        "secret": "prod/github/token",
        "reach": [
            rule(["deploy-bot", "report-bot"], "prod/github/token", "issue", ["inject"]),
            rule(["deploy-bot", "report-bot"], "prod/github/token", "activate", ["inject", "reveal"]),
            rule(
                ["ops-bot"],
                "prod/github/token",
                "activate",
                ["inject"],
                approval="required",
                destinations=[""],
            ),
        ],
        "live": {"destinations": [{"name": "github", "secret": "prod/github/token", "base_url": "x"}]},
        "federated": [{"name": "k8s", "agents": [{"agent": "deploy-bot"}, {"agent": "not-reaching"}]}],
    }
    nodes, edges = parse(to_dot(answer))
    assert nodes == {
        "issuer:k8s": "k8s",
        "agent:deploy-bot": "deploy-bot",
        "agent:report-bot": "report-bot",
        "agent:ops-bot": "ops-bot",
        "secret:prod/github/token": "prod/github/token",
        "destination:github": "github",
    }
    assert edges == {
        ("issuer:k8s", "agent:deploy-bot", "maps to"),
        ("agent:deploy-bot", "secret:prod/github/token", "activate: inject, reveal; issue: inject"),
        ("agent:report-bot", "secret:prod/github/token", "activate: inject, reveal; issue: inject"),
        ("agent:ops-bot", "secret:prod/github/token", "activate: inject (dashed)"),
        ("secret:prod/github/token", "destination:github", "injects"),
    }


def test_hostile_names_stay_inside_their_quotes() -> None:
    evil = 'x" -> "agent:root"; "\\'
    answer = {"agent": evil, "reach": [rule([evil], 'a"b\nc', "issue", ["reveal"], destinations=["d\\"])]}
    nodes, edges = parse(to_dot(answer))
    assert set(nodes) == {f"agent:{evil}", 'secret:a"b\nc', "destination:d\\"}
    assert edges == {
        (f"agent:{evil}", 'secret:a"b\nc', "issue: reveal"),
        ('secret:a"b\nc', "destination:d\\", "allowed to"),
    }


def test_an_empty_answer_is_still_a_graph_with_its_subject() -> None:
    nodes, edges = parse(to_dot({"secret": "prod/x", "reach": [], "live": {"destinations": []}}))
    assert nodes == {"secret:prod/x": "prod/x"}
    assert edges == set()


def test_an_agent_answer_draws_its_tools_and_the_destinations_it_sends_through() -> None:
    tool = {
        "agents": ["deploy-bot"],
        "tool": "issues/search_issues",
        "approval": "not needed",
        "residual": None,
    }
    gated = {**tool, "tool": 'issues/close"issue', "approval": "required"}
    through = {"agents": ["deploy-bot"], "destination": "github", "secret": "prod/github/token"}
    answer = {
        "agent": "deploy-bot",
        "reach": [rule(["deploy-bot"], "prod/github/token", "activate", ["inject"])],
        "destination_reach": [through, {**through, "destination": "mirror"}],
        "tool_reach": [tool, gated],
        "live": {"destinations": []},
    }
    nodes, edges = parse(to_dot(answer))
    assert nodes == {
        "agent:deploy-bot": "deploy-bot",
        "secret:prod/github/token": "prod/github/token",
        "destination:github": "github",
        "destination:mirror": "mirror",
        "tool:issues/search_issues": "issues/search_issues",
        'tool:issues/close"issue': 'issues/close"issue',
    }
    assert edges == {
        ("agent:deploy-bot", "secret:prod/github/token", "activate: inject"),
        ("agent:deploy-bot", "tool:issues/search_issues", "call_tool"),
        ("agent:deploy-bot", 'tool:issues/close"issue', "call_tool (dashed)"),
        ("secret:prod/github/token", "destination:github", "injects"),
        ("secret:prod/github/token", "destination:mirror", "injects"),
    }
