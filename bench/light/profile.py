"""Where the server's CPU goes under 16-concurrent activation: py-spy, on-CPU samples only.

py-spy samples the server and its worker processes (``--subprocesses``) without ``--idle``: a
thread is sampled only while the OS shows it running, so time waiting in ``select`` or on a lock
is not counted (the wall-time view hides thread hand-offs as idle waits). ``--nonblocking``
keeps the sampler from pausing the server. The run is apart from the measured ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

RATE_HZ = 200


def _frame(raw: str) -> str:
    """``func (path/to/file.py:123)`` → ``func (package/file.py)``: shorter, merged across lines."""
    name, _, where = raw.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "tether" in parts:
        parts = parts[parts.index("tether") :]
    else:
        parts = parts[-2:]
    return f"{name} ({'/'.join(parts)})" if where else name


def summarise(raw: str, top: int = 20) -> dict[str, Any]:
    """Top self frames (where samples land) and inclusive frames (on the stack), over every
    process and thread sampled; ``processes`` and ``threads`` are sample shares by stack root."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    roots: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        heads = [f for f in frames if f.startswith(("process ", "thread "))]
        frames = [_frame(f) for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        roots[" / ".join(h.split(":", 1)[0][:40] for h in heads) or "main"] += count
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl[name] += count

    def share(counter: Counter[str], keep: Callable[[str], bool] = lambda _: True) -> list[dict[str, Any]]:
        rows = [(n, c) for n, c in counter.most_common() if keep(n)][:top]
        return [{"function": n, "percent": round(100 * c / max(1, total), 1)} for n, c in rows]

    return {
        "samples": total,
        "roots": share(roots),
        "self": share(self_counts),
        "inclusive": share(incl, lambda n: "<module>" not in n and not n.startswith(("run (", "_run ("))),
        "inclusive_tether": share(incl, lambda n: "(tether/" in n and "cli/" not in n),
    }


def profile_activation(
    server_pid: int, load: Callable[[], dict[str, Any]], opts: Any, *, name: str = "activate"
) -> dict[str, Any]:
    """Sample ``server_pid`` (and its workers) while ``load()`` runs one run (activation unless
    ``name`` says otherwise)."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {
            "skipped": "py-spy is not installed (pip install --require-hashes -r requirements/bench.lock)"
        }
    out = Path(tempfile.mkdtemp(prefix="tether-bench-prof-")) / f"{name}.txt"
    seconds = int(opts.seconds) + 30  # outlives pool signing and the run; stopped when the load ends
    sampler = subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(server_pid),
            "--subprocesses",
            "--rate",
            str(RATE_HZ),
            "--format",
            "raw",
            "--nonblocking",
            # BENCH_PROFILE_GIL=1: only the thread holding the GIL (where Python runs), which keeps
            # threads waiting on a queue or a lock out of the picture whatever py-spy thinks of them.
            *(["--gil"] if os.environ.get("BENCH_PROFILE_GIL") else []),
            "--duration",
            str(seconds),
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    try:
        run = load()
    finally:
        sampler.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            _, err = sampler.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            sampler.kill()
            _, err = sampler.communicate()
    if not out.exists():
        return {"error": f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}"}
    summary = summarise(out.read_text(encoding="utf-8", errors="replace"))
    print(
        f"  profile: {summary['samples']} on-CPU samples at {RATE_HZ} Hz; "
        f"top self {', '.join(r['function'] for r in summary['self'][:3])}",
        flush=True,
    )
    return {
        "how": f"py-spy record --subprocesses --rate {RATE_HZ} --nonblocking (no --idle: on-CPU samples)",
        "raw_stacks": str(out),
        "ops_per_second_while_sampled": run.get("ops_per_second"),
        "server_cpu_us_per_op_while_sampled": run.get("server_cpu_us_per_op"),
        **summary,
    }
