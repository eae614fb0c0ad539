"""Tether: a secret-governance broker for AI agents."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]


def _version() -> str:
    """The installed distribution's version: the one string every ``--version``, health answer and
    ``User-Agent`` shows. A source checkout that was never installed says so instead of guessing."""
    try:
        return version("tether")
    except PackageNotFoundError:
        return "0+unknown"


__version__: str = _version()
