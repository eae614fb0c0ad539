"""A reach answer as a Graphviz graph: agents → secrets → destinations (pure: no I/O).

Input is the JSON answer of ``GET /v1/reach/secrets/{path}`` or ``GET /v1/reach/agents/{name}``
(:func:`tether.broker.reach.report_to_json`), so the CLI renders what the API said. An edge from an
agent to a secret carries the actions and modes allowed (``issue, activate: inject``) and is dashed
when an approval is required or a residual condition applies; an edge from a secret to a destination
means a rule allows the secret towards it (solid) or the destination injects it (``injects``).
An agent's answer also draws the MCP tools it could call (``tool_reach``: agent → tool, ``call_tool``,
dashed when conditional) and the destinations it could send through (``destination_reach``: the
secret → the destination that injects it). Federated issuer mappings (``federated[]``) are drawn
as issuers → the agents they can map to.
Names, paths and policy ids only: never a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["to_dot"]

_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def _quote(text: str) -> str:
    """A DOT double-quoted ID: backslashes, quotes and line ends escaped (names are user data)."""
    return '"' + str(text).translate(_ESCAPES) + '"'


def _node(kind: str, name: str) -> str:
    return _quote(f"{kind}:{name}")


def to_dot(answer: Mapping[str, Any]) -> str:
    """The reach answer ``answer`` as a ``digraph`` (DOT text, one statement per line, stable order)."""
    graph = _Graph()
    graph.add_rules(answer.get("reach", ()))
    graph.add_tools(answer.get("tool_reach", ()))
    for rule in answer.get("destination_reach", ()):
        graph.secrets.add(str(rule["secret"]))
        graph.destinations.add(str(rule["destination"]))
        graph.injects.add((str(rule["secret"]), str(rule["destination"])))
    for destination in answer.get("live", {}).get("destinations", ()):
        graph.secrets.add(str(destination["secret"]))
        graph.destinations.add(str(destination["name"]))
        graph.injects.add((str(destination["secret"]), str(destination["name"])))
    if answer.get("secret"):
        graph.secrets.add(str(answer["secret"]))
    if answer.get("agent"):
        graph.agents.add(str(answer["agent"]))
    for mapping in answer.get("federated", ()):
        mapped = {str(a["agent"]) for a in mapping.get("agents", ()) if str(a["agent"]) in graph.agents}
        if mapped:
            graph.issuers[str(mapping["name"])] = mapped
    title = answer.get("secret") or answer.get("agent") or "reach"
    return graph.render(str(title))


class _Graph:
    def __init__(self) -> None:
        self.issuers: dict[str, set[str]] = {}
        self.agents: set[str] = set()
        self.secrets: set[str] = set()
        self.destinations: set[str] = set()
        self.tools: set[str] = set()
        # (agent, tool) -> whether some rule behind it is conditional (approval or residual)
        self.calls: dict[tuple[str, str], bool] = {}
        # (agent, secret) -> {action: modes}; and whether some rule behind it is conditional
        self.uses: dict[tuple[str, str], dict[str, set[str]]] = {}
        self.conditional: dict[tuple[str, str], bool] = {}
        self.towards: set[tuple[str, str]] = set()
        self.injects: set[tuple[str, str]] = set()

    def add_rules(self, rules: Iterable[Mapping[str, Any]]) -> None:
        for rule in rules:
            secret = str(rule["secret"])
            self.secrets.add(secret)
            plain = rule.get("residual") is None and rule.get("approval") != "required"
            for agent in rule["agents"]:
                self.agents.add(str(agent))
                key = (str(agent), secret)
                actions = self.uses.setdefault(key, {})
                actions.setdefault(str(rule["action"]), set()).update(map(str, rule["modes"]))
                self.conditional[key] = self.conditional.get(key, False) or not plain
            for destination in rule.get("destinations", ()):
                if destination:
                    self.destinations.add(str(destination))
                    self.towards.add((secret, str(destination)))

    def add_tools(self, rules: Iterable[Mapping[str, Any]]) -> None:
        for rule in rules:
            tool = str(rule["tool"])
            self.tools.add(tool)
            plain = rule.get("residual") is None and rule.get("approval") != "required"
            for agent in rule["agents"]:
                self.agents.add(str(agent))
                key = (str(agent), tool)
                self.calls[key] = self.calls.get(key, False) or not plain

    def render(self, title: str) -> str:
        lines = [
            f"digraph {_quote('reach ' + title)} {{",
            "  rankdir=LR;",
            "  node [fontname=Helvetica, fontsize=10];",
            "  edge [fontname=Helvetica, fontsize=9];",
        ]
        for kind, names, shape in (
            ("issuer", self.issuers, "hexagon"),
            ("agent", self.agents, "ellipse"),
            ("secret", self.secrets, "box"),
            ("destination", self.destinations, "component"),
            ("tool", self.tools, "cds"),
        ):
            lines.extend(
                f"  {_node(kind, name)} [label={_quote(name)}, shape={shape}];" for name in sorted(names)
            )
        for issuer, mapped in sorted(self.issuers.items()):
            lines.extend(
                f'  {_node("issuer", issuer)} -> {_node("agent", agent)} [label="maps to"];'
                for agent in sorted(mapped)
            )
        for (agent, secret), actions in sorted(self.uses.items()):
            label = "; ".join(
                f"{action}: {', '.join(sorted(modes))}" for action, modes in sorted(actions.items())
            )
            style = ", style=dashed" if self.conditional[(agent, secret)] else ""
            edge = f"{_node('agent', agent)} -> {_node('secret', secret)}"
            lines.append(f"  {edge} [label={_quote(label)}{style}];")
        for (agent, tool), conditional in sorted(self.calls.items()):
            style = ", style=dashed" if conditional else ""
            lines.append(f'  {_node("agent", agent)} -> {_node("tool", tool)} [label="call_tool"{style}];')
        for secret, destination in sorted(self.towards | self.injects):
            label = "injects" if (secret, destination) in self.injects else "allowed to"
            edge = f"{_node('secret', secret)} -> {_node('destination', destination)}"
            lines.append(f"  {edge} [label={_quote(label)}];")
        lines.append("}")
        return "\n".join(lines) + "\n"
