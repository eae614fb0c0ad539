"""Counts the security and reliability suite prints at the end of a run: cases tried, attacks
refused, server errors seen. Tests call :func:`record`; ``tests/conftest.py`` prints the table."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COUNTS", "Counts", "record"]


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
