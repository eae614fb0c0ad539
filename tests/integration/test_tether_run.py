"""``tether run`` with real children against a real server: ``curl`` and a Python httpx script reach
a loopback upstream through the sidecar with the secret injected by Tether, never holding it; the
task ends as the child did; everything refusable is refused before the child starts."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.governed import deploy_policies
from tests.integration.test_cli import TETHER, Node, assert_error, clean_env, running_node
from tests.security.canaries import new_canary
from tether.crypto.jose import generate_private_jwk

SECRET = "run/echo/token"
CANARY = new_canary("tether-run")
RUN_TIMEOUT = 60


class Upstream:
    """A loopback HTTP server that records what reached it and answers without echoing secrets."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                seen.append({"method": self.command, "path": self.path, "auth": auth, "body": body})
                payload = json.dumps(
                    {"path": self.path, "authorized": auth == f"Bearer {CANARY}", "got": len(body)}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _answer  # noqa: N815
            do_POST = _answer  # noqa: N815

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    try:
        yield server
    finally:
        server.close()


async def _deploy_policies(addr: str, admin: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=addr) as client:
        await deploy_policies(client, admin)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Node]:
    with running_node(tmp_path_factory.mktemp("tether-run"), forbidden=[CANARY]) as started:
        admin = {"Authorization": f"Bearer {started.token}"}
        asyncio.run(_deploy_policies(started.addr, admin))
        with httpx.Client(base_url=started.addr, headers=admin) as http:
            meta = {"sensitivity": "internal", "purposes": ["deploy"], "destinations": ["echo"]}
            response = http.put(f"/v1/secrets/{SECRET}", json={"value": CANARY, **meta})
            assert response.status_code in (200, 201), response.text
            response = http.post(
                "/v1/destinations",
                json={
                    "name": "echo",
                    "base_url": f"http://127.0.0.1:{upstream.port}/api",
                    "secret": SECRET,
                    "inject": {"type": "header", "name": "Authorization", "template": "Bearer {secret}"},
                    "methods": ["GET", "POST"],
                },
            )
            assert response.status_code == 201, response.text
        yield started


@pytest.fixture(scope="module")
def agent(node: Node, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    private = generate_private_jwk()
    public = {k: v for k, v in private.items() if k in {"kty", "crv", "x"}}
    key = tmp_path_factory.mktemp("run-agent") / "agent.jwk"
    key.write_text(json.dumps(private), encoding="utf-8")
    key.chmod(0o600)
    attributes = {"team": "platform", "environment": "prod", "owner": "alice", "labels": ["deploy"]}
    response = httpx.post(
        f"{node.addr}/v1/agents",
        json={"name": "runner", "public_key": public, "attributes": attributes},
        headers={"Authorization": f"Bearer {node.token}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["id"], key


def tether_run(
    node: Node, agent: tuple[str, Path], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    agent_id, key = agent
    result = subprocess.run(
        [*TETHER, "run", "--agent", agent_id, "--agent-key", str(key), *args],
        capture_output=True,
        text=True,
        # The operator token in the caller's environment must not reach the child.
        env=node.env(**(env or {})),
        stdin=subprocess.DEVNULL,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert CANARY not in result.stdout
    assert CANARY not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def last_task(node: Node) -> dict[str, Any]:
    response = httpx.get(
        f"{node.addr}/v1/tasks",
        params={"agent": "runner", "limit": 1000},
        headers={"Authorization": f"Bearer {node.token}"},
    )
    assert response.status_code == 200, response.text
    return dict(max(response.json()["items"], key=lambda task: task["created_at"]))


INTENT = ("--purpose", "deploy", "--objective", "check the echo API", "--secret", SECRET)


def test_curl_reaches_the_upstream_with_the_secret_injected_and_never_holds_it(
    node: Node, agent: tuple[str, Path], upstream: Upstream, tmp_path: Path
) -> None:
    dump = tmp_path / "environ"
    script = (
        'curl -sS --fail-with-body "$TETHER_ECHO_URL/v1/ping?x=1&y=a%20b" '
        '&& curl -sS -X POST -d hello "$ECHO_API/v1/items" '
        f'&& cat /proc/self/environ > "{dump}" && env >> "{dump}"'
    )
    before = len(upstream.seen)
    result = tether_run(
        node, agent, *INTENT, "--destination", "echo", "--env", "ECHO_API=echo", "--ttl", "5m",
        "--", "sh", "-c", script,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.replace("}{", "}\n{").splitlines()]
    assert answers[0] == {"path": "/api/v1/ping?x=1&y=a+b", "authorized": True, "got": 0}
    assert answers[1] == {"path": "/api/v1/items", "authorized": True, "got": 5}
    reached = upstream.seen[before:]
    assert [r["auth"] for r in reached] == [f"Bearer {CANARY}"] * 2
    environ = dump.read_bytes()
    assert CANARY.encode() not in environ
    assert b"TETHER_ECHO_URL=http://127.0.0.1:" in environ
    assert b"TETHER_TOKEN" not in environ  # the operator token of the caller's environment
    assert b"TETHER_AGENT_KEY" not in environ
    task = last_task(node)
    assert task["status"] == "completed"


CHILD = """
import os, sys, httpx, json
base = os.environ["TETHER_ECHO_URL"]
r = httpx.post(base + "/v1/run", json={"n": 1})
print(json.dumps(r.json()))
key = base.split("/")[3]
wrong = base.replace(key, "x" * len(key))
print(httpx.get(wrong + "/v1/run").status_code)
print(httpx.get(base.rsplit("/", 1)[0] + "/other/v1/run").status_code)
print(httpx.get(base + "/v1/%2e%2e/admin").status_code)
sys.exit(3)
"""


def test_a_python_httpx_child_works_and_its_exit_code_fails_the_task(
    node: Node, agent: tuple[str, Path], upstream: Upstream, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    before = len(upstream.seen)
    result = tether_run(node, agent, *INTENT, "--destination", "echo", "--", sys.executable, str(script))
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert json.loads(lines[0]) == {"path": "/api/v1/run", "authorized": True, "got": 7}
    assert lines[1:] == ["404", "404", "400"]  # a wrong run key, an undeclared destination, a dot segment
    assert len(upstream.seen) == before + 1  # none of the refused requests was forwarded
    assert last_task(node)["status"] == "failed"


def test_a_signal_to_tether_run_is_forwarded_and_revokes_the_task(
    node: Node, agent: tuple[str, Path], tmp_path: Path
) -> None:
    agent_id, key = agent
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [
            *TETHER, "run", "--agent", agent_id, "--agent-key", str(key), *INTENT, "--destination", "echo",
            "--", "sh", "-c", f'touch "{started}"; exec sleep 30',
        ],
        env=node.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not started.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # the child has exec'd sleep
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert last_task(node)["status"] == "revoked"


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        pytest.param((*INTENT, "--destination", "echo"), 2, "no command to run", id="no-command"),
        pytest.param(
            (*INTENT, "--destination", "nowhere"), 1, "destination 'nowhere'", id="unknown-destination"
        ),
        pytest.param(
            (*INTENT, "--postgres", "run/no/such"), 1, "no secret 'run/no/such'", id="unknown-secret"
        ),
        pytest.param(
            ("--purpose", "incident", "--objective", "o", "--destination", "echo"),
            1,
            "the task was not opened",
            id="denied-task",
        ),
        pytest.param(
            ("--purpose", "deploy", "--objective", "o", "--destination", "echo"),
            1,
            "destination 'echo'",
            id="denied-grant",
        ),
        pytest.param((*INTENT, "--destination", "Bad Name"), 2, "destination name", id="bad-name"),
        pytest.param((*INTENT, "--destination", "echo", "--ttl", "ten"), 2, "--ttl", id="bad-ttl"),
        pytest.param(
            (*INTENT, "--destination", "echo", "--env", "X=other"), 2, "--env X=other", id="bad-env"
        ),
        pytest.param(
            (*INTENT, "--destination", "echo", "--url-env", "{HOST}_URL"), 2, "{NAME}", id="bad-template"
        ),
        pytest.param((*INTENT,), 2, "nothing to give", id="nothing-to-give"),
    ],
)
def test_bad_input_exits_with_one_line_before_the_child_starts(
    node: Node, agent: tuple[str, Path], tmp_path: Path, args: tuple[str, ...], code: int, fragment: str
) -> None:
    marker = tmp_path / "ran"
    command = () if code == 2 and fragment == "no command to run" else ("--", "touch", str(marker))
    result = tether_run(node, agent, *args, *command)
    assert_error(result, code, fragment)
    assert not marker.exists()


def test_a_missing_command_is_refused_with_one_line(node: Node, agent: tuple[str, Path]) -> None:
    result = tether_run(node, agent, *INTENT, "--destination", "echo", "--", "/nonexistent/tool")
    assert_error(result, 1, "cannot run '/nonexistent/tool'")
    assert last_task(node)["status"] == "failed"


def test_tether_run_without_a_server_says_so_before_the_child_starts(
    agent: tuple[str, Path], tmp_path: Path
) -> None:
    agent_id, key = agent
    marker = tmp_path / "ran"
    result = subprocess.run(
        [*TETHER, "run", "--agent", agent_id, "--agent-key", str(key), *INTENT, "--destination", "echo",
         "--", "touch", str(marker)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False, stdin=subprocess.DEVNULL,
        env=clean_env(TETHER_ADDR="http://127.0.0.1:9"),
    )  # fmt: skip
    assert_error(result, 1, "cannot connect to Tether")
    assert not marker.exists()


def test_a_child_does_not_outlive_a_killed_tether_run(
    node: Node, agent: tuple[str, Path], tmp_path: Path
) -> None:
    agent_id, key = agent
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen(
        [
            *TETHER, "run", "--agent", agent_id, "--agent-key", str(key), *INTENT, "--destination", "echo",
            "--", "sh", "-c", f'echo $$ > "{pid_file}"; exec sleep 60',
        ],
        env=node.env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
        child = int(pid_file.read_text())
        time.sleep(0.2)  # exec'd sleep
        proc.kill()  # SIGKILL: tether run cannot forward anything
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and "zombie" not in _state(child):
            assert time.monotonic() < deadline, "the child outlived tether run"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert last_task(node)["status"] == "active"  # documented: the task stays open until it expires
    with httpx.Client() as http:
        http.post(
            f"{node.addr}/v1/tasks/{last_task(node)['id']}/revoke",
            headers={"Authorization": f"Bearer {node.token}"},
            json={"reason": "test cleanup"},
        )


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"
