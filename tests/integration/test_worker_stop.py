"""A worker of ``tether server --workers N`` told to stop before uvicorn has taken the signals over
(while its app is built, or while its event loop starts) exits quietly: a log line, never a
traceback on the node's log (seen in CI: a JSON log with a traceback in it, from a worker stopped
while uvloop was starting)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.nodes import node_env, tether_init

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the worker processes are Linux's")

# Run in the worker's own process: SIGTERM is sent to it at a chosen point, as the supervisor's
# stop() would send it. "loop": from inside the event loop's start (uvloop makes its signal socket
# pair there), the point where the signal left the loop half started; "app": while the app is built.
_WORKER = """
import os, signal, socket, sys
where = sys.argv[1]
armed = False
original = socket.socketpair

def socketpair(*args, **kwargs):
    global armed
    if armed:
        armed = False
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: inside the loop's start
    return original(*args, **kwargs)

socket.socketpair = socketpair
import asyncio

run = asyncio.Runner.run

def armed_run(self, coro, **kwargs):
    global armed
    armed = where == "loop"
    return run(self, coro, **kwargs)

asyncio.Runner.run = armed_run
from tether.api import workers

if where == "app":
    build = workers.create_app_from_env

    def stopped_while_building(**kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return build(**kwargs)

    workers.create_app_from_env = stopped_while_building
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
_, ready = os.pipe()
workers._worker_main(listener.fileno(), ready, os.getppid(), 0)
print("worker returned", flush=True)
"""


@pytest.mark.parametrize("where", ["loop", "app"])
def test_a_worker_stopped_before_uvicorn_serves_exits_without_a_traceback(tmp_path: Path, where: str) -> None:
    env = node_env(TETHER_LOG_FORMAT="json")
    data_dir = tmp_path / "node"
    tether_init(data_dir, env)
    env["TETHER_DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, where],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "worker returned"
    for line in done.stderr.splitlines():  # the node's log: JSON lines only
        json.loads(line)
