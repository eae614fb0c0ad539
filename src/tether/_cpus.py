"""How many cores this process may use: what ``tether server`` sizes its workers by.

``os.cpu_count()`` counts the machine's cores. A process may be allowed fewer: its CPU affinity
(``taskset``, a cpuset) and, in a container, its cgroup's CPU limit (``cpu.max``: a Kubernetes CPU
limit, ``docker run --cpus``). More busy workers than the cores a node may use only evict each
other's caches and wait for each other (docs/operations.md, *Sizing the workers*).

Only cgroup v2 limits are read (the unified hierarchy: ``0::<path>`` in ``/proc/self/cgroup``,
mounted at ``/sys/fs/cgroup``, as container runtimes with a cgroup namespace present it); a limit
that cannot be read (cgroup v1, a hierarchy mounted elsewhere, a cgroup outside this process's
namespace) counts as none, and the ``workers`` setting is then the way to size a node. A limit is
rounded up: a worker runs on one core at a time, so 1.5 CPUs take two workers to be used whole
(Go's runtime rounds its default the same way); at saturation the limit throttles them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_limit", "cpu_max_cores"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def cpu_max_cores(text: str) -> float | None:
    """The cores a cgroup v2 ``cpu.max`` allows (``"<quota> <period>"``, in microseconds); None
    for no limit (``"max <period>"``) and for anything else."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def cgroup_cpu_limit(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """The tightest cgroup v2 CPU limit on this process, in cores: its own cgroup's ``cpu.max``
    and its ancestors' up to ``root`` (a parent's limit holds for its children); None when there
    is none, or no cgroup v2 hierarchy to read (see the module docstring)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return None
    parts = [part for part in path.split("/") if part and part != "."]
    if ".." in parts:  # the cgroup is outside this process's namespace: not under the root seen here
        return None
    limits: list[float] = []
    for depth in range(len(parts), -1, -1):
        try:
            text = root.joinpath(*parts[:depth], "cpu.max").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        cores = cpu_max_cores(text)
        if cores is not None:
            limits.append(cores)
    return min(limits) if limits else None


def available_cpus(root: Path = _CGROUP_ROOT, proc_cgroup: Path = _PROC_CGROUP) -> int:
    """The cores this process may use: its CPU affinity (every core where the system has none),
    capped by its cgroup v2 CPU limit rounded up; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on this system (macOS, Windows)
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
