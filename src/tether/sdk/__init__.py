"""Agent-side SDK: authenticate with a key (or a federated token), call Tether with DPoP, and
work inside tasks (grants, activation, approvals)."""

from tether.sdk.client import (
    Agent,
    ApprovalRequired,
    AsyncAgent,
    TetherAPIError,
    TetherConnectionError,
    TetherDenied,
)
from tether.sdk.tasks import AsyncTask, Grant, GrantRequest, OpeningTask, Task

__all__ = [
    "Agent",
    "ApprovalRequired",
    "AsyncAgent",
    "AsyncTask",
    "Grant",
    "GrantRequest",
    "OpeningTask",
    "Task",
    "TetherAPIError",
    "TetherConnectionError",
    "TetherDenied",
]
