"""``tether secret update PATH``: metadata only, through ``PATCH /v1/secrets/{path}``; what is not
named stays, no value is asked for, and no version is added."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import run_in_process
from tests.integration.test_sdk_tasks import Served, served  # noqa: F401 - the fixture

PATH = "prod/github/token"


def _run(served: Served, *args: str) -> tuple[int, str, str]:  # noqa: F811 - the fixture's name
    token = served.admin["Authorization"].removeprefix("Bearer ")
    result = run_in_process(["secret", *args], {"TETHER_ADDR": served.addr, "TETHER_TOKEN": token})
    return result.returncode, result.stdout, result.stderr


@pytest.mark.usefixtures("served")
def test_update_adds_and_removes_and_keeps_the_rest(served: Served) -> None:  # noqa: F811
    before = served.admin_call("GET", f"/v1/secrets/{PATH}").json()
    code, out, err = _run(
        served,
        "update",
        PATH,
        "--add-destination",
        "gitlab",
        "--remove-purpose",
        "deploy",
        "--add-purpose",
        "release",
        "--sensitivity",
        "confidential",
        "--json",
    )
    assert code == 0, err
    after = json.loads(out)
    assert after["destinations"] == sorted({*before["destinations"], "gitlab"})
    assert after["purposes"] == ["release"]
    assert after["sensitivity"] == "confidential"
    assert after["owner"] == before["owner"]
    assert after["rotation_period_seconds"] == before["rotation_period_seconds"]
    assert after["current_version"] == before["current_version"]
    assert served.values[PATH] not in out + err

    code, out, err = _run(served, "update", PATH, "--owner", "sre", "--rotation-period-seconds", "3600")
    assert code == 0, err
    assert f"Updated {PATH} (version {before['current_version']} is unchanged)" in out
    assert "owner sre" in out
    assert "rotation every 3600 s" in out
    code, out, err = _run(served, "update", PATH, "--no-rotation-period", "--json")
    assert code == 0, err
    assert json.loads(out)["rotation_period_seconds"] is None


def test_update_with_nothing_to_change_or_a_bad_level_is_a_usage_error(served: Served) -> None:  # noqa: F811
    code, _, err = _run(served, "update", PATH)
    assert code == 2
    assert "name something to change" in err
    code, _, err = _run(served, "update", PATH, "--sensitivity", "secret")
    assert code == 2
    assert "--sensitivity must be one of" in err


def test_update_of_a_missing_secret_is_one_line_404(served: Served) -> None:  # noqa: F811
    code, _, err = _run(served, "update", "prod/none", "--owner", "x")
    assert code == 1
    assert "(HTTP 404)" in err
    assert len(err.strip().splitlines()) == 1
