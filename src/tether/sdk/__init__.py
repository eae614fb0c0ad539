"""Agent-side SDK: authenticate with a key (or a federated token) and call Tether with DPoP."""

from tether.sdk.client import Agent, AsyncAgent, TetherAPIError

__all__ = ["Agent", "AsyncAgent", "TetherAPIError"]
