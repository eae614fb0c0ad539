"""``tether demo`` (what ``make run`` starts): seeds a narrated example, twice on one dir,
and never prints the random value it writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tether.broker import Broker
from tether.config import Settings

_SCRIPT = Path(sys.executable).with_name("tether")
TETHER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tether.cli.main"]
DEMO_SECRET = "demo/github/token"
EXAMPLE_SECRETS = ("prod/docs/token", "prod/github/token", "prod/stripe/key", "prod/pagerduty/key")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def demo(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run(
        [*TETHER, "demo", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", "--exit-after-seed"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


async def stored_values(data_dir: Path, path: str = DEMO_SECRET) -> list[str]:
    """Every version's value, read in-process through the broker (the demo never shows one)."""
    broker = Broker.from_settings(Settings.load(data_dir))
    try:
        await broker.start()
        current, _ = await broker.secrets.read_value(path)
        return [
            (await broker.secrets.read_value(path, version))[1].decode() for version in range(1, current + 1)
        ]
    finally:
        await broker.close()


async def test_demo_seeds_twice_narrates_and_never_prints_the_value(tmp_path: Path) -> None:
    data_dir = tmp_path / "dev"
    first = demo(data_dir, free_port())
    assert first.returncode == 0, first.stderr
    second = demo(data_dir, free_port())
    assert second.returncode == 0, second.stderr

    token_file = data_dir / "dev-root-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert token.startswith("tto_")

    assert "UNSAFE" in first.stderr
    assert "Initialised a dev data dir" in first.stdout
    assert "Created operator demo-writer" in first.stdout
    assert "Initialised" not in second.stdout
    assert "demo-writer (role secret-writer) exists already" in second.stdout
    for result in (first, second):
        assert "Traceback" not in result.stderr
        for step in range(1, 8):
            assert f"[{step}/7]" in result.stdout
        assert "503" in result.stdout  # the sealed read
        assert f"TETHER_TOKEN={token}" in result.stdout
        assert "export TETHER_ADDR=http://127.0.0.1:" in result.stdout
        assert "tether secret list" in result.stdout
        assert "/v1/sys/health" in result.stdout
        for step in range(1, 14):
            assert f"[governed {step}/13]" in result.stdout, result.stdout
        assert "the agent got '[REDACTED]'" in result.stdout  # injected, echoed, redacted
        assert "approval required" in result.stdout
        assert "refused (task is completed), and so is the call to github" in result.stdout
        assert "verified" in result.stdout
        # tether run, really run: an unmodified child used the token through the sidecar, never held it.
        assert "[run 1/2] Ran `tether run" in result.stdout, result.stdout
        assert "(HTTP 200; the echo came back '[REDACTED]')" in result.stdout
        assert "its environment held no secret" in result.stdout
        assert "The child exited 0, so task tsk_" in result.stdout
        assert "is completed." in result.stdout
        # No PostgreSQL engine on make run's node: one line says how to see a dynamic credential.
        assert "[run 2/2] Dynamic credentials: this node has no PostgreSQL engine" in result.stdout
        assert "TETHER_ENGINES_FILE" in result.stdout
        # Reach: who else could reach prod/github/token, decided through the example policies.
        assert "[reach] Who else could reach prod/github/token?" in result.stdout
        assert "tether reach secret prod/github/token" in result.stdout  # and how to ask it again
        assert "deploy-bot, report-bot" in result.stdout
        assert "inject by use-secret-within-intent" in result.stdout
        assert "injected by destination github" in result.stdout
        # Sprawl: the planted .env is found, named by path and fingerprint.
        assert "governed secret prod/github/token (plain, hmac-sha256:" in result.stdout
        assert f"tether scan {data_dir / 'demo-sprawl'}" in result.stdout
        # Compliance: the report's summary, from this node's own data.
        assert "[compliance] The evidence so far" in result.stdout
        assert "Tether controls have evidence" in result.stdout
        # The web console, and how to sign in.
        assert "/ui  (sign in with the admin token above)" in result.stdout

    planted = data_dir / "demo-sprawl" / ".env"
    assert planted.stat().st_mode & 0o777 == 0o600
    [github] = await stored_values(data_dir, "prod/github/token")
    assert github in planted.read_text()  # the scan found a real copy, not a look-alike
    values = await stored_values(data_dir)
    assert len(values) == 4  # each run writes one version and rotates once
    assert len(set(values)) == 4  # random, never a fixed literal
    example = [(await stored_values(data_dir, path))[-1] for path in EXAMPLE_SECRETS]
    for value in [*values, *example]:
        for result in (first, second):
            assert value not in result.stdout
            assert value not in result.stderr


def test_demo_on_a_taken_port_is_one_line_and_initialises_nothing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = demo(tmp_path / "dev", taken.getsockname()[1])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "already in use" in lines[0]
    assert not (tmp_path / "dev").exists()
