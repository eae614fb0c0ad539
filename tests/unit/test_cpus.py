"""The cores a node may use, which ``tether server`` sizes its default workers by: CPU affinity,
capped by a cgroup v2 CPU limit (read from a cgroup tree laid out as the kernel lays it out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether._cpus import available_cpus, cgroup_cpu_limit, cpu_max_cores


def _cgroup_tree(tmp_path: Path, own: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup v2 root with ``cpu.max`` files where ``limits`` says, and a /proc/self/cgroup
    naming ``own`` as this process's cgroup (beside the v1 lines of a hybrid system)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for path, text in limits.items():
        directory = root / path.strip("/") if path.strip("/") else root
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text + "\n", encoding="utf-8")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text(f"4:memory:/x\n1:cpu:/\n0::{own}\n", encoding="utf-8")
    return root, proc


@pytest.mark.parametrize(
    ("text", "cores"),
    [
        ("max 100000", None),
        ("200000 100000", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("0 100000", None),
        ("-1 100000", None),
        ("100000 0", None),
        ("lots 100000", None),
        ("100000", None),
        ("", None),
        ("1 2 3", None),
    ],
)
def test_cpu_max_is_read_as_cores_and_anything_odd_as_no_limit(text: str, cores: float | None) -> None:
    assert cpu_max_cores(text) == cores


def test_the_tightest_limit_of_the_cgroup_and_its_ancestors_holds(tmp_path: Path) -> None:
    root, proc = _cgroup_tree(
        tmp_path,
        "/kubepods/pod1/ctr",
        {"kubepods": "150000 100000", "kubepods/pod1": "400000 100000", "kubepods/pod1/ctr": "max 100000"},
    )
    assert cgroup_cpu_limit(root, proc) == 1.5  # the grandparent's, though the parent allows more
    (root / "kubepods" / "pod1" / "ctr" / "cpu.max").write_text("50000 100000\n", encoding="utf-8")
    assert cgroup_cpu_limit(root, proc) == 0.5  # its own, now the tightest


def test_no_limit_without_a_cgroup_v2_line_or_a_readable_file(tmp_path: Path) -> None:
    root, proc = _cgroup_tree(tmp_path, "/a", {})
    assert cgroup_cpu_limit(root, proc) is None  # no cpu.max anywhere: unlimited
    proc.write_text("1:cpu:/\n", encoding="utf-8")  # cgroup v1 only
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_a_cgroup_outside_the_namespace_is_not_read(tmp_path: Path) -> None:
    # The kernel writes a cgroup outside this process's cgroup namespace with leading "..": it is
    # not under the root seen here, so neither the look-alike under the root nor anything above
    # the root is read.
    root, proc = _cgroup_tree(tmp_path, "/../../etc", {"etc": "100000 100000"})
    (tmp_path / "cpu.max").write_text("50000 100000\n", encoding="utf-8")
    assert cgroup_cpu_limit(root, proc) is None
    proc.write_text("0::/../..\n", encoding="utf-8")
    assert cgroup_cpu_limit(root, proc) is None
    proc.write_text("0::/./etc\n", encoding="utf-8")  # "." is no step anywhere
    assert cgroup_cpu_limit(root, proc) == 1.0


def test_available_cpus_is_the_affinity_capped_by_the_limit_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    root, proc = _cgroup_tree(tmp_path, "/", {})
    assert available_cpus(root, proc) == 4
    (root / "cpu.max").write_text("150000 100000\n", encoding="utf-8")
    assert available_cpus(root, proc) == 2
    (root / "cpu.max").write_text("120000 100000\n", encoding="utf-8")
    assert available_cpus(root, proc) == 2  # rounded up, not to the nearest
    (root / "cpu.max").write_text("10000 100000\n", encoding="utf-8")
    assert available_cpus(root, proc) == 1  # a tenth of a core still runs one worker
    (root / "cpu.max").write_text("1600000 100000\n", encoding="utf-8")
    assert available_cpus(root, proc) == 4  # a limit above the affinity does not add cores


def test_without_affinity_the_machine_cores_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    root, proc = _cgroup_tree(tmp_path, "/", {})
    assert available_cpus(root, proc) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert available_cpus(root, proc) == 8


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this system")
def test_this_process_gets_at_least_one_and_no_more_than_its_affinity() -> None:
    cores = available_cpus()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
