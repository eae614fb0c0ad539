"""The docs check lists the blocks it skipped, with their reasons, at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest

_SKIPPED: dict[str, None] = {}  # insertion-ordered, without duplicates


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    from tests.docs.test_snippets import SKIPPED_PROPERTY

    if report.when != "call" and not report.skipped:
        return
    for name, value in report.user_properties:
        if name == SKIPPED_PROPERTY:
            _SKIPPED.update(dict.fromkeys(value))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _SKIPPED:
        return
    terminalreporter.write_line(f"docs-check: {len(_SKIPPED)} block(s) skipped (marked in the Markdown):")
    for where in _SKIPPED:
        terminalreporter.write_line(f"  {where}")
