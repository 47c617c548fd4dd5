"""The CPU count follows the container's CPU quota, read from fake cgroup files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from export_service.core.cpus import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def _file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "proc_self_cgroup", tmp_path / "sys_fs_cgroup"


def test_v2_cpu_max_in_a_container(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "0::/\n")
    _file(mount / "cpu.max", "150000 100000\n")
    assert cgroup_cpu_quota(proc, mount) == 1.5
    assert usable_cpus(proc, mount) == min(AFFINITY, 2)


def test_v2_the_smallest_limit_on_the_way_to_the_root_wins(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "0::/kubepods/pod1/c1\n")
    _file(mount / "kubepods" / "pod1" / "c1" / "cpu.max", "max 100000\n")
    _file(mount / "kubepods" / "pod1" / "cpu.max", "50000 100000\n")
    _file(mount / "kubepods" / "cpu.max", "800000 100000\n")
    assert cgroup_cpu_quota(proc, mount) == 0.5
    assert usable_cpus(proc, mount) == 1


def test_v2_unlimited_is_the_affinity(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "0::/\n")
    _file(mount / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(proc, mount) is None
    assert usable_cpus(proc, mount) == AFFINITY


def test_v1_cfs_quota(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    # The host's path is absent inside the container: its mount root is its cgroup.
    _file(mount / "cpu,cpuacct" / "cpu.cfs_quota_us", "100000\n")
    _file(mount / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc, mount) == 1.0
    assert usable_cpus(proc, mount) == 1


def test_v1_unlimited_quota_is_minus_one(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    _file(proc, "1:cpu:/\n")
    _file(mount / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _file(mount / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(proc, mount) is None
    assert usable_cpus(proc, mount) == AFFINITY


@pytest.mark.parametrize("cpu_max", ["", "garbage", "100000 0", "-5 100000"])
def test_unreadable_or_odd_files_mean_no_quota(fake: tuple[Path, Path], cpu_max: str) -> None:
    proc, mount = fake
    _file(proc, "0::/\n")
    _file(mount / "cpu.max", cpu_max)
    assert cgroup_cpu_quota(proc, mount) is None


def test_no_cgroup_files_at_all(fake: tuple[Path, Path]) -> None:
    proc, mount = fake
    assert cgroup_cpu_quota(proc, mount) is None
    assert usable_cpus(proc, mount) == AFFINITY
