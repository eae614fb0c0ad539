"""``tether demo`` while it serves (what ``make run`` leaves running), and run again.

The github stand-in answers the README's egress step for as long as the demo serves; the
approval hint it prints shows the demo's approval; a re-run keeps what the user changed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tether.sdk import Agent

TETHER = [sys.executable, "-m", "tether.cli.main"]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policies" / "tether.cedar"
SEED_TIMEOUT = 90.0


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def serving_demo(data_dir: Path, log: Path) -> Iterator[tuple[str, str]]:
    """``tether demo`` serving until the block ends; yields (address, its whole output so far)."""
    port = free_port()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*TETHER, "demo", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=clean_env(COLUMNS="400"),
        )
    try:
        deadline = time.monotonic() + SEED_TIMEOUT
        while "Press Ctrl-C to stop." not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not finish seeding:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def tether(args: list[str], addr: str, token: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*TETHER, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(TETHER_ADDR=addr, TETHER_TOKEN=token, COLUMNS="400"),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def hinted(output: str, command: str) -> list[str]:
    """The arguments of the next-step hint that starts with ``tether <command>``."""
    for line in output.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) > 1 and words[0].endswith("tether") and " ".join(words[1:]).startswith(command):
            return words[1:]
    raise AssertionError(f"no hint `tether {command} ...` in:\n{output}")


def test_stand_in_serves_while_the_demo_serves_and_the_approval_hint_shows_the_approval(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "dev"
    with serving_demo(data_dir, tmp_path / "demo.log") as (addr, output):
        token = (data_dir / "dev-root-token").read_text().strip()
        # The README's egress step, with the demo's agent: the stand-in still answers.
        key = json.loads((data_dir / "demo-agents" / "deploy-bot.jwk").read_text())
        intent = {
            "purpose": "deploy",
            "objective": "ship release 1.4",
            "ttl_seconds": 600,
            "secrets": ["prod/github/token"],
            "destinations": ["github"],
        }
        with Agent(addr, "spiffe://acme.test/agent/deploy-bot", key) as agent, agent.task(**intent) as task:
            task.grant(destination="github", mode="inject")
            answer = task.http.get("github", "/repos/acme/app")
        assert answer.status_code == 200, answer.text
        assert answer.json()["repo"] == "acme/app"

        # The printed approval hint lists the demo's approval (approved, then voided).
        approval_id = hinted(output, "approval show")[-1]
        assert approval_id.startswith("apr_")
        listed = tether([*hinted(output, "approval list"), "--json"], addr, token)
        assert approval_id in [a["id"] for a in json.loads(listed.stdout)["items"]]
        shown = tether(["approval", "show", approval_id, "--json"], addr, token)
        assert json.loads(shown.stdout)["status"] in {"approved", "voided"}


def test_a_rerun_keeps_what_the_user_changed(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    changed_policies = EXAMPLE.read_text(encoding="utf-8") + "\n// changed by the user\n"
    elsewhere = "https://github.example.test/"
    with serving_demo(data_dir, tmp_path / "first.log") as (addr, _):
        token = (data_dir / "dev-root-token").read_text().strip()
        with httpx.Client(base_url=addr, headers={"Authorization": f"Bearer {token}"}) as api:
            deployed = api.put("/v1/policies", json={"policies": changed_policies}).json()
            github = api.get("/v1/destinations/github").json()
            assert api.delete("/v1/destinations/github").status_code == 204
            github = {
                k: github[k]
                for k in ("name", "secret", "inject", "methods", "path_prefixes", "timeout_seconds")
            }
            assert api.post("/v1/destinations", json={**github, "base_url": elsewhere}).status_code == 201

    with (
        serving_demo(data_dir, tmp_path / "second.log") as (addr, output),
        httpx.Client(base_url=addr, headers={"Authorization": f"Bearer {token}"}) as api,
    ):
        active = api.get("/v1/policies").json()
        assert active["version"] == deployed["version"]
        assert active["policies"] == changed_policies
        assert api.get("/v1/destinations/github").json()["base_url"] == elsewhere
    assert "Kept as they are" in output
    assert f"policy set v{deployed['version']}" in output
    assert f"it points at {elsewhere}" in output
    assert "Traceback" not in output
