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


async def stored_values(data_dir: Path) -> list[str]:
    """Every version's value, read in-process through the broker (the demo never shows one)."""
    broker = Broker.from_settings(Settings.load(data_dir))
    try:
        await broker.start()
        current, _ = await broker.secrets.read_value(DEMO_SECRET)
        return [
            (await broker.secrets.read_value(DEMO_SECRET, version))[1].decode()
            for version in range(1, current + 1)
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

    values = await stored_values(data_dir)
    assert len(values) == 4  # each run writes one version and rotates once
    assert len(set(values)) == 4  # random, never a fixed literal
    for value in values:
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
