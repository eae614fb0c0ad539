"""Counts the security and reliability suite prints at the end of a run: cases tried, attacks
refused, server errors seen. Tests call :func:`record`; ``tests/conftest.py`` prints the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["COUNTS", "Counts", "as_plain", "merge", "record"]


@dataclass
class Counts:
    tried: int = 0
    refused: int = 0
    server_errors: int = 0
    note: str = ""


COUNTS: dict[str, Counts] = {}


def record(
    category: str, *, tried: int = 0, refused: int = 0, server_errors: int = 0, note: str = ""
) -> None:
    """Add to ``category``'s counts (a short name such as ``"api fuzzing"``)."""
    counts = COUNTS.setdefault(category, Counts())
    counts.tried += tried
    counts.refused += refused
    counts.server_errors += server_errors
    if note:
        counts.note = note


def as_plain(counts: dict[str, Counts]) -> dict[str, list[Any]]:
    """``counts`` as plain values, for a parallel run's worker to send to the controller."""
    return {name: [c.tried, c.refused, c.server_errors, c.note] for name, c in counts.items()}


def merge(plain: dict[str, list[Any]]) -> None:
    """Add a worker's :func:`as_plain` counts to this process's."""
    for category, (tried, refused, server_errors, note) in plain.items():
        record(category, tried=tried, refused=refused, server_errors=server_errors, note=note)
