"""The docs check lists the blocks it skipped, with their reasons, at the end of the run."""

from __future__ import annotations

from typing import Any

import pytest


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    from tests.docs.test_snippets import REPO, SKIPPED

    if not SKIPPED:
        return
    terminalreporter.write_line(f"docs-check: {len(SKIPPED)} block(s) skipped:")
    for block in SKIPPED:
        terminalreporter.write_line(f"  {block.path.relative_to(REPO)}:{block.line} ({block.reason})")
