"""``tether server --workers N`` and the app factory, as real processes on loopback.

Which worker answered is read from the access log (workers log their pid); the workers are
the supervisor's children in ``/proc``. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.security.nodes import TETHER, free_port, node_env, tether_init

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

START_SECONDS = 60.0  # two workers import and start on a busy 2-core machine
BACKGROUND_LINE = re.compile(
    r"background loops \(audit checkpoints, task sweeper\) run in this process \(pid (\d+)\)"
)
ACCESS_LINE = re.compile(r"uvicorn\.access \[worker (\d+)\]: .* \"GET /v1/sys/health HTTP/1\.1\" (\d+)")


def wait_for(check: Callable[[], bool], seconds: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"{what} not within {seconds} s:\n{log()}")


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not reaped by its new parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def flock_holders(path: Path) -> set[int]:
    """The pids holding a lock on ``path``, from ``/proc/locks``
    ("1: FLOCK ADVISORY WRITE pid maj:min:inode ...")."""
    inode = path.stat().st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" not in fields and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[1] == str(inode):
            holders.add(int(fields[4]))
    return holders


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    token: str
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def serving_workers(self) -> int:
        return len(re.findall(r"worker \d+ serving", self.log()))

    def background_pids(self) -> list[int]:
        return [int(pid) for pid in BACKGROUND_LINE.findall(self.log())]

    def health_pids(self) -> dict[int, set[str]]:
        """Which worker pids answered /v1/sys/health, with the status codes."""
        seen: dict[int, set[str]] = {}
        for pid, status in ACCESS_LINE.findall(self.log()):
            seen.setdefault(int(pid), set()).add(status)
        return seen

    def burst(self, count: int = 24) -> list[dict[str, object]]:
        """``count`` health checks at once, each on its own connection."""

        def one(_: int) -> dict[str, object]:
            with httpx.Client(base_url=self.url, timeout=10.0) as client:
                response = client.get("/v1/sys/health")
                assert response.status_code == 200, response.text
                body: dict[str, object] = response.json()
                return body

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, range(count)))


def start_server(tmp_path: Path, *args: str) -> Node:
    env = node_env(TETHER_SWEEP_INTERVAL_SECONDS="1")
    data_dir = tmp_path / "node"
    token = tether_init(data_dir, env)
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
    return Node(proc=proc, port=port, log_path=log_path, token=token, data_dir=data_dir)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Node]:
    node = start_server(tmp_path, "--workers", "2")
    try:
        wait_for(lambda: node.serving_workers() == 2, START_SECONDS, "two workers serving", node.log)
        assert node.proc.poll() is None, node.log()
        yield node
    finally:
        if node.proc.poll() is None:
            pids = children(node.proc.pid)
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
            wait_for(lambda: not any(alive(p) for p in pids), 10, "workers gone", node.log)


def test_two_workers_serve_one_socket_and_run_background_loops_once(two_workers: Node) -> None:
    node = two_workers
    workers = children(node.proc.pid)
    assert len(workers) == 2

    for _ in range(20):
        node.burst()
        if set(node.health_pids()) == workers:
            break
    assert set(node.health_pids()) == workers, node.log()  # both answered on the one port

    time.sleep(1.5)  # well past the background loops' retry interval
    background = node.background_pids()
    assert len(background) == 1, node.log()
    assert background[0] in workers
    assert flock_holders(node.data_dir / "tether-background.lock") == {background[0]}
    assert "with 2 workers" in node.log()


FROZEN_WORKER = re.compile(
    r"worker \d+ serving \((\d+) objects held since its start kept out of garbage collection\)"
)
FROZEN_SINGLE = re.compile(r"serving; (\d+) objects held since the start kept out of garbage collection")
#: Far below what a serving process holds (165,000-220,000 objects), far above nothing.
FROZEN_FLOOR = 20_000


def test_each_worker_keeps_its_start_out_of_full_garbage_collections(two_workers: Node) -> None:
    """Without it, each full collection walks every object the process holds (a pause of 100-150
    ms under load, every few seconds, in each worker)."""
    frozen = [int(n) for n in FROZEN_WORKER.findall(two_workers.log())]
    assert len(frozen) == 2, two_workers.log()
    assert all(n > FROZEN_FLOOR for n in frozen), frozen


def test_one_process_keeps_its_start_out_of_full_garbage_collections(tmp_path: Path) -> None:
    node = start_server(tmp_path, "--workers", "1")
    try:
        wait_for(lambda: bool(FROZEN_SINGLE.search(node.log())), START_SECONDS, "serving", node.log)
        frozen = int(FROZEN_SINGLE.findall(node.log())[0])
        assert frozen > FROZEN_FLOOR, node.log()
        assert httpx.get(f"{node.url}/v1/sys/health", timeout=10.0).status_code == 200
    finally:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(timeout=10)


def listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (IPv4), from ``/proc/net/tcp``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def test_each_worker_accepts_on_its_own_socket_so_a_burst_reaches_every_worker(two_workers: Node) -> None:
    node = two_workers
    workers = children(node.proc.pid)
    listening = listening_inodes(node.port)
    assert len(listening) == 2, listening  # one per worker, both on the node's one address
    held = [socket_inodes(pid) & listening for pid in workers]
    assert all(len(one) == 1 for one in held), held
    assert held[0] != held[1]

    # 16 connections opened at once, as a load generator does: with one shared socket the
    # first worker to wake could accept them all. Each kernel choice is an even coin here.
    conns = [socket.create_connection(("127.0.0.1", node.port), timeout=10.0) for _ in range(16)]
    try:
        for conn in conns:
            conn.sendall(b"GET /v1/sys/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for conn in conns:
            assert conn.recv(4096).startswith(b"HTTP/1.1 200"), node.log()
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: set(node.health_pids()) == workers, 10, "both workers answering", node.log)


def test_a_seal_through_one_worker_seals_every_worker(two_workers: Node) -> None:
    node = two_workers
    admin = {"Authorization": f"Bearer {node.token}"}
    response = httpx.post(f"{node.url}/v1/sys/seal", headers=admin, timeout=10.0)
    assert response.status_code == 200, response.text

    seen_sealed: set[int] = set()
    workers = children(node.proc.pid)
    for _ in range(20):
        before = len(ACCESS_LINE.findall(node.log()))
        answers = node.burst()
        assert all(answer["sealed"] is True for answer in answers), answers
        seen_sealed |= {int(pid) for pid, _ in ACCESS_LINE.findall(node.log())[before:]}
        if seen_sealed == workers:
            break
    assert seen_sealed == workers, node.log()


def test_an_unseal_through_one_worker_unseals_every_worker(two_workers: Node) -> None:
    node = two_workers
    admin = {"Authorization": f"Bearer {node.token}"}
    assert httpx.post(f"{node.url}/v1/sys/seal", headers=admin, timeout=10.0).status_code == 200
    # The seal reaches the other worker by a relayed signal: wait until every worker has it, or the
    # unseal may land on a worker that is sealed meanwhile (answered 503 "unseal again", rightly).
    workers = children(node.proc.pid)
    seen_sealed: set[int] = set()
    for _ in range(40):
        before = len(ACCESS_LINE.findall(node.log()))
        answers = node.burst()
        if all(answer["sealed"] is True for answer in answers):
            seen_sealed |= {int(pid) for pid, _ in ACCESS_LINE.findall(node.log())[before:]}
        if seen_sealed == workers:
            break
        time.sleep(0.05)
    assert seen_sealed == workers, node.log()
    unsealed = httpx.post(f"{node.url}/v1/sys/unseal", headers=admin, timeout=10.0)
    assert unsealed.status_code == 200, unsealed.text

    seen_unsealed: set[int] = set()
    for _ in range(40):
        before = len(ACCESS_LINE.findall(node.log()))
        answers = node.burst()
        pids = [int(pid) for pid, _ in ACCESS_LINE.findall(node.log())[before:]]
        # The relay is a signal: a worker may answer "sealed" for a moment, never after.
        if all(answer["sealed"] is False for answer in answers):
            seen_unsealed |= set(pids)
        if seen_unsealed == workers:
            break
        time.sleep(0.05)
    assert seen_unsealed == workers, node.log()
    assert "unsealed: the node was unsealed (through one of its workers)" in node.log()


def test_killing_the_supervisor_kills_every_worker(two_workers: Node) -> None:
    node = two_workers
    workers = children(node.proc.pid)
    assert len(workers) == 2

    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=10)

    wait_for(lambda: not any(alive(pid) for pid in workers), 10, "every worker gone", node.log)
    wait_for(lambda: not port_open(node.port), 10, "the socket closed", node.log)


def test_sigterm_stops_every_worker_cleanly(two_workers: Node) -> None:
    node = two_workers
    workers = children(node.proc.pid)

    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(timeout=45) == 0, node.log()

    assert not any(alive(pid) for pid in workers)
    assert node.log().count("Application shutdown complete") == 2, node.log()
    assert not port_open(node.port)


def test_a_dead_worker_is_replaced_and_background_loops_move(two_workers: Node) -> None:
    node = two_workers
    workers = children(node.proc.pid)
    wait_for(lambda: len(node.background_pids()) == 1, 10, "background loops elected", node.log)
    holder = node.background_pids()[0]
    # A worker that dies during its first seconds stops the node (a startup fault); later, it is replaced.
    time.sleep(10.5)

    subprocess.run(["kill", "-KILL", str(holder)], check=True)

    wait_for(lambda: len(node.background_pids()) == 2, 30, "background loops taken over", node.log)
    assert node.background_pids()[1] != holder
    wait_for(lambda: node.serving_workers() == 3, START_SECONDS, "a replacement worker serving", node.log)
    assert node.proc.poll() is None
    now = children(node.proc.pid)
    assert len(now) == 2
    assert holder not in now
    assert len(now & workers) == 1
    # The replacement took over the dead worker's own socket: each listener has a live worker.
    listening = listening_inodes(node.port)
    assert len(listening) == 2
    assert sorted(len(socket_inodes(pid) & listening) for pid in now) == [1, 1]


def test_the_factory_app_runs_under_uvicorn_factory(tmp_path: Path) -> None:
    env = node_env()
    data_dir = tmp_path / "node"
    tether_init(data_dir, env)
    port = free_port()
    env["TETHER_DATA_DIR"] = str(data_dir)
    env["TETHER_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "uvicorn.log"
    uvicorn = [sys.executable, "-m", "uvicorn", "tether.api.app:create_app_from_env", "--factory"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [*uvicorn, "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    try:
        wait_for(
            lambda: log_text().count("Application startup complete") == 2,
            START_SECONDS,
            "two uvicorn workers started",
            log_text,
        )
        response = httpx.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=10.0)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
        time.sleep(1.5)
        # Once per node, not per worker: one worker holds the node's background lock.
        holders = flock_holders(data_dir / "tether-background.lock")
        assert len(holders) == 1, holders
        assert holders <= children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=45)
    assert log_text().count("Application shutdown complete") == 2, log_text()


def test_the_factory_refuses_to_start_without_a_public_url(tmp_path: Path) -> None:
    env = node_env()
    env.pop("TETHER_PUBLIC_URL")  # neither in the environment nor in tether.toml
    data_dir = tmp_path / "node"
    tether_init(data_dir, env)
    env["TETHER_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "tether.api.app:create_app_from_env", "--factory", "--port", "0"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "TETHER_PUBLIC_URL" in result.stderr
