"""Who can reach what, exactly, through the policy engine (pure: no I/O).

:func:`compute_reach` decides every agent, secret and action over a finite :class:`Grid` of the
decision context with Cedar's partial evaluation; conditions on fields the grid does not enumerate
come back as residuals. :func:`compute_tool_reach` does the same for MCP tools (``call_tool``),
and :func:`destination_reach` slices secret rules to what egress decides for each destination.
The broker's ``ReachService`` reads the store and calls it.
"""

from __future__ import annotations

from tether.reach.compute import (
    compute_reach,
    compute_tool_reach,
    destination_reach,
    group_agents,
    point_context,
)
from tether.reach.grid import (
    DIMENSIONS,
    MODES,
    REACH_ACTIONS,
    SENSITIVITIES,
    TOOL_UNKNOWN_FIELDS,
    UNKNOWN_FIELDS,
    Grid,
)
from tether.reach.residual import Residual
from tether.reach.rules import (
    AgentGroup,
    DestinationRule,
    DestinationTarget,
    ReachRule,
    SecretTarget,
    ToolRule,
    ToolTarget,
)

__all__ = [
    "DIMENSIONS",
    "MODES",
    "REACH_ACTIONS",
    "SENSITIVITIES",
    "TOOL_UNKNOWN_FIELDS",
    "UNKNOWN_FIELDS",
    "AgentGroup",
    "DestinationRule",
    "DestinationTarget",
    "Grid",
    "ReachRule",
    "Residual",
    "SecretTarget",
    "ToolRule",
    "ToolTarget",
    "compute_reach",
    "compute_tool_reach",
    "destination_reach",
    "group_agents",
    "point_context",
]
