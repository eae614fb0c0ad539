"""Rendering: rich output for people, JSON for machines, one-line errors on stderr."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CommandError",
    "WarningHandler",
    "err",
    "format_time",
    "out",
    "print_error",
    "print_json",
    "print_table",
    "print_warning",
    "yes_no",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2

# soft_wrap: never break a line (an error, a token, an export line) at the terminal width.
# Piped output gets room for tables rather than rich's 80-column fallback.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
out = Console(soft_wrap=True, highlight=False, width=_PIPE_WIDTH)
err = Console(stderr=True, soft_wrap=True, highlight=False)


class CommandError(Exception):
    """A failure to report as one ``error:`` line; ``exit_code`` 1 (runtime) or 2 (usage)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _one_line(text: str) -> str:
    return " ".join(text.split())


def print_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(_one_line(message))}")


def print_warning(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] [yellow]{escape(_one_line(message))}[/]")


def print_json(data: Any) -> None:
    """JSON on stdout, unstyled, so that it can be piped to ``jq``."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def format_time(value: str | None) -> str:
    """An API timestamp as ``YYYY-MM-DD HH:MM:SS`` UTC; empty for None."""
    if not value:
        return ""
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return value


def yes_no(value: object) -> str:
    return "yes" if value else "no"


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    out.print(table)


class WarningHandler(logging.Handler):
    """Log records as ``warning: ...`` / ``error: ...`` lines on stderr, for the short-lived commands.
    A message repeated within one command is shown once."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self._seen: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed log call must not crash the command
            message = str(record.msg)
        if message in self._seen:
            return
        self._seen.add(message)
        if record.levelno >= logging.ERROR:
            print_error(message)
        else:
            print_warning(message)
