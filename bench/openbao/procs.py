"""Process plumbing shared by both servers: free ports, CPU and RSS from /proc, stopping by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based) → indexes 11, 12.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of a process (all its threads' children), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
            found += [int(c) for c in f.read().split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and every live descendant (a server's worker processes),
    plus what its exited children left in its cutime/cstime. A descendant that exits between two
    samples is still counted once it is reaped; one that vanishes unreaped is not (rare: workers
    live as long as the server)."""
    total = 0.0
    pending, seen = [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            fields = _stat_fields(current)
        except OSError:
            continue
        # utime 14, stime 15, cutime 16, cstime 17 (1-based, after the command name) → 11..14.
        total += int(fields[11]) + int(fields[12])
        if current == pid:
            total += int(fields[13]) + int(fields[14])
        pending += children(current)
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, from /proc/<pid>/statm."""
    with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_seconds: float = 30.0) -> None:
    """Block until something accepts on 127.0.0.1:port, or fail if ``proc`` died first."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout_seconds} s")


def stop(proc: subprocess.Popen[bytes], timeout_seconds: float = 10.0) -> None:
    """Stop one server by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_seconds)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout_seconds)
