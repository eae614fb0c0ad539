"""The example policy set (``examples/policies``) passes its own test cases with ``tether policy test``,
run offline in a subprocess exactly as a user's CI would run it; a wrong expectation fails (exit 1),
naming the case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "policies"
POLICIES = EXAMPLES / "tether.cedar"
CASES = EXAMPLES / "cases.yaml"

_SCRIPT = Path(sys.executable).with_name("tether")
TETHER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tether.cli.main"]
TIMEOUT = 60


def _tether(*args: str) -> subprocess.CompletedProcess[str]:
    # Offline: no server address or token, so nothing can reach a server by accident.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["TETHER_ADDR"] = "http://127.0.0.1:9"
    return subprocess.run(
        [*TETHER, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        check=False,
        cwd=ROOT,
    )


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = yaml.safe_load(CASES.read_text(encoding="utf-8"))["cases"]
    return cases


def test_example_policies_validate_offline() -> None:
    result = _tether("policy", "validate", str(POLICIES), "--offline")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "is valid" in result.stdout
    assert "no-dev-agents-on-prod" in result.stdout


def test_example_cases_pass() -> None:
    total = len(_cases())
    assert total >= 12
    result = _tether("policy", "test", str(CASES), "--policies", str(POLICIES))
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert f"{total} of {total} cases passed" in result.stdout
    assert "FAIL" not in result.stdout


def test_example_cases_cover_the_rules() -> None:
    cases = _cases()
    expects = {case["expect"] for case in cases}
    assert expects == {"allow", "deny"}
    assert any(case.get("expect_missing") == ["approval"] for case in cases)
    assert {case["action"] for case in cases} == {"open_task", "issue", "activate", "delegate", "call_tool"}


@pytest.mark.parametrize(
    "flip", ["dev agent on a prod secret is forbidden", "restricted secret with approval"]
)
def test_a_wrong_expectation_fails_naming_the_case(tmp_path: Path, flip: str) -> None:
    data = yaml.safe_load(CASES.read_text(encoding="utf-8"))
    cases = data["cases"]
    [case] = [case for case in cases if case["name"] == flip]
    case["expect"] = "allow" if case["expect"] == "deny" else "deny"
    case.pop("expect_missing", None)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"cases": cases}), encoding="utf-8")

    result = _tether("policy", "test", str(wrong), "--policies", str(POLICIES))

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"FAIL {flip}: expected {case['expect']}" in result.stdout
    failing = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1, result.stdout
    total = len(cases)
    assert f"{total - 1} of {total} cases passed" in result.stdout
