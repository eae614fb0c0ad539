"""``tether compliance report`` against a real server over HTTP: Markdown by default, JSON and a
self-contained HTML file on request; bad windows and missing roles are one-line errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_cli import (
    SECRET_VALUES,
    Node,
    assert_error,
    new_value,
    operator,
    run,
    running_node,
)
from tether.evidence.compliance import load_mapping


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, str]]:
    base = tmp_path_factory.mktemp("cli-compliance")
    with running_node(base, forbidden=SECRET_VALUES) as running:
        value = new_value()
        put = run(["secret", "put", "prod/db/password", "--stdin"], running.env(), stdin=value)
        assert put.returncode == 0, put.stderr
        yield running, value


def test_the_report_is_markdown_by_default_and_names_the_mapping_version(node: tuple[Node, str]) -> None:
    running, value = node
    result = run(["compliance", "report", "--since", "7d"], running.env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# Tether compliance report")
    assert f"Mapping version {load_mapping().version}" in result.stdout
    assert "No evidence in this window: no secret was used." in result.stdout
    assert "1 secrets governed (1 confidential)" in result.stdout
    assert value not in result.stdout + result.stderr


def test_json_and_html_for_an_auditor(node: tuple[Node, str], tmp_path: Path) -> None:
    running, value = node
    auditor = operator(running, "ada", "auditor")
    as_json = run(["compliance", "report", "--json"], running.env(auditor))
    assert as_json.returncode == 0, as_json.stderr
    body = json.loads(as_json.stdout)
    assert body["window"]["since"] == "30d"
    assert body["metrics"]["secret_inventory"]["values"]["secrets"] == 1
    page = tmp_path / "report.html"
    as_html = run(["compliance", "report", "--format", "html", "-o", str(page)], running.env(auditor))
    assert as_html.returncode == 0, as_html.stderr
    assert as_html.stdout == ""
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>")
    assert "<script" not in text
    assert value not in text


def test_a_bad_window_and_a_missing_role_are_one_line_errors(node: tuple[Node, str]) -> None:
    running, _ = node
    assert_error(run(["compliance", "report", "--since", "forever"], running.env()), 1, "since")
    scanner = operator(running, "ci-scan", "scanner")
    assert_error(run(["compliance", "report"], running.env(scanner)), 1, "audit.read")
