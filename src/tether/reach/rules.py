"""What reach answers are made of: the targets it decides (a secret, an MCP tool, an egress
destination), the groups of agents it decides them for, and the rules it finds (a box of the grid
where an action is allowed, by which policies, under which residual), with their JSON forms.

Pure: no I/O. :mod:`tether.reach.compute` fills them in through Cedar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.policy import Entity
from tether.reach.grid import DIMENSIONS
from tether.reach.residual import Residual

__all__ = [
    "AgentGroup",
    "DestinationRule",
    "DestinationTarget",
    "Point",
    "ReachRule",
    "SecretTarget",
    "Target",
    "ToolRule",
    "ToolTarget",
]

#: One grid point: a value per dimension, in :data:`~tether.reach.grid.DIMENSIONS` order.
Point = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class AgentGroup:
    """Agents that decide identically: one entity (a representative) and every member's name."""

    entity: Entity
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SecretTarget:
    """A secret as policies see it; ``dynamic_is_reveal``: its engine hands out the stored value,
    so a ``dynamic`` grant is decided as ``reveal`` (as the broker's ``policy_mode`` does)."""

    entity: Entity
    dynamic_is_reveal: bool = True


@dataclass(frozen=True, slots=True)
class ToolTarget:
    """A registered MCP server's pinned tool as policies see it (``Tool::"server/name"``), decided
    for ``call_tool`` with the context the MCP gateway builds: mode ``call``, destination
    ``mcp:<server>``, request ``tools/call`` on the tool's id; the task's declared secrets,
    destinations and tools, the arguments' shape and the use count are left unknown."""

    entity: Entity

    @property
    def server(self) -> str:
        return str(self.entity.attributes["server"])

    @property
    def name(self) -> str:
        return str(self.entity.attributes["name"])


#: What reach is computed for: a secret (``issue``, ``activate``) or a tool (``call_tool``).
Target = SecretTarget | ToolTarget


@dataclass(frozen=True, slots=True)
class DestinationTarget:
    """A registered egress destination: the secret it injects, and the methods and path prefixes
    it forwards (checked by egress on top of policy)."""

    name: str
    secret: str
    methods: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()


def _approval(values: Mapping[str, tuple[Any, ...]]) -> str:
    approvals = set(values["approval"])
    if approvals == {False, True}:
        return "not needed"
    return "required" if approvals == {True} else "only without"


def _covers(values: Mapping[str, tuple[Any, ...]], point: Point) -> bool:
    return all(value in values[d] for d, value in zip(DIMENSIONS, point, strict=True))


@dataclass(frozen=True, slots=True)
class ReachRule:
    """A box of the grid where ``agents`` may do ``action`` on ``secret``: every combination of the
    listed values is allowed (by ``policies``), or allowed when ``residual`` holds."""

    agents: tuple[str, ...]
    secret: str
    action: str
    values: Mapping[str, tuple[Any, ...]]
    policies: tuple[str, ...]
    residual: Residual | None = None

    def covers(self, point: Point) -> bool:
        return _covers(self.values, point)

    @property
    def approval(self) -> str:
        """``not needed``, ``required`` (allowed only with an approval) or ``only without``."""
        return _approval(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "agents": list(self.agents),
            "secret": self.secret,
            "action": self.action,
            "purposes": list(self.values["purpose"]),
            "sensitivities": list(self.values["sensitivity"]),
            "modes": list(self.values["mode"]),
            "destinations": list(self.values["destination"]),
            "depths": list(self.values["depth"]),
            "approval": self.approval,
            "policies": list(self.policies),
            "residual": None if self.residual is None else self.residual.text,
        }


@dataclass(frozen=True, slots=True)
class DestinationRule:
    """A box where ``agents`` may ``action`` (issue or activate an ``inject`` grant) through
    ``destination``: its injected secret, decided with mode ``inject`` and that destination (the
    slice of the secret's rules egress decides in)."""

    agents: tuple[str, ...]
    destination: DestinationTarget
    action: str
    values: Mapping[str, tuple[Any, ...]]
    policies: tuple[str, ...]
    residual: Residual | None = None

    def covers(self, point: Point) -> bool:
        return _covers(self.values, point)

    @property
    def approval(self) -> str:
        return _approval(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "agents": list(self.agents),
            "destination": self.destination.name,
            "secret": self.destination.secret,
            "action": self.action,
            "purposes": list(self.values["purpose"]),
            "sensitivities": list(self.values["sensitivity"]),
            "depths": list(self.values["depth"]),
            "approval": self.approval,
            "methods": list(self.destination.methods),
            "path_prefixes": list(self.destination.path_prefixes),
            "policies": list(self.policies),
            "residual": None if self.residual is None else self.residual.text,
        }


@dataclass(frozen=True, slots=True)
class ToolRule:
    """A box where ``agents`` may call ``tool`` (``call_tool``): every combination of the listed
    purposes, sensitivities, depths and approvals is allowed, or allowed when ``residual`` holds."""

    agents: tuple[str, ...]
    tool: ToolTarget
    values: Mapping[str, tuple[Any, ...]]
    policies: tuple[str, ...]
    residual: Residual | None = None
    action: str = "call_tool"

    def covers(self, point: Point) -> bool:
        return _covers(self.values, point)

    @property
    def approval(self) -> str:
        return _approval(self.values)

    def to_json(self) -> dict[str, Any]:
        return {
            "agents": list(self.agents),
            "tool": self.tool.entity.id,
            "server": self.tool.server,
            "name": self.tool.name,
            "action": self.action,
            "purposes": list(self.values["purpose"]),
            "sensitivities": list(self.values["sensitivity"]),
            "depths": list(self.values["depth"]),
            "approval": self.approval,
            "policies": list(self.policies),
            "residual": None if self.residual is None else self.residual.text,
        }
