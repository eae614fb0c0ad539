"""``tether server --log-format json`` as a real process: every line is one JSON object, and the
lines of a request (uvicorn's access line included) carry its request id, which is echoed."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.security.nodes import TETHER, free_port, node_env, tether_init

pytestmark = pytest.mark.slow


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    env = node_env()
    data_dir = tmp_path / "node"
    tether_init(data_dir, env)
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*TETHER, "server", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc, port, log_path


def _health(port: int, headers: dict[str, str]) -> httpx.Response:
    deadline = time.monotonic() + 60
    while True:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/v1/sys/health", headers=headers, timeout=5)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_json_logs_with_the_request_id_on_the_access_line(tmp_path: Path, workers: str) -> None:
    proc, port, log_path = _serve(tmp_path, "--log-format", "json", "--workers", workers)
    try:
        response = _health(port, {"X-Request-Id": "probe-42"})
        generated = httpx.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = log_path.read_text()
    assert response.status_code == 200, log
    assert response.headers["x-request-id"] == "probe-42"
    assert len(generated.headers["x-request-id"]) == 16
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert {line.get("request_id") for line in access} >= {"probe-42", generated.headers["x-request-id"]}
    assert any("Tether" in line["message"] for line in lines if "request_id" not in line)


def test_otel_variables_turn_on_one_span_per_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # node_env() copies the environment
    proc, port, log_path = _serve(tmp_path, "--workers", "1")
    try:
        response = _health(port, {"X-Request-Id": "probe-7"})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = log_path.read_text()
    assert response.status_code == 200, log
    assert '"name": "GET /v1/sys/health"' in log  # the console exporter's output, flushed at exit
    assert '"tether.request_id": "probe-7"' in log
    assert '"http.response.status_code": 200' in log
