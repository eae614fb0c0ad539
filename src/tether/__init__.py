"""Tether: a secret-governance broker for AI agents."""

__version__ = "0.1.0"

__all__ = ["__version__"]
