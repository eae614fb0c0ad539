"""Who can reach what, exactly, through the policy engine (pure: no I/O).

:func:`compute_reach` decides every agent, secret and action over a finite :class:`Grid` of the
decision context with Cedar's partial evaluation; conditions on fields the grid does not enumerate
come back as residuals. The broker's ``ReachService`` reads the store and calls it.
"""

from __future__ import annotations

from tether.reach.compute import (
    AgentGroup,
    ReachRule,
    SecretTarget,
    compute_reach,
    group_agents,
    point_context,
)
from tether.reach.grid import DIMENSIONS, MODES, REACH_ACTIONS, SENSITIVITIES, UNKNOWN_FIELDS, Grid
from tether.reach.residual import Residual

__all__ = [
    "DIMENSIONS",
    "MODES",
    "REACH_ACTIONS",
    "SENSITIVITIES",
    "UNKNOWN_FIELDS",
    "AgentGroup",
    "Grid",
    "ReachRule",
    "Residual",
    "SecretTarget",
    "compute_reach",
    "group_agents",
    "point_context",
]
