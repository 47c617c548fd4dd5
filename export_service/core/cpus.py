"""How many CPUs this process may really use: its affinity, capped by its
cgroup's CPU quota (a container's CPU limit), which ``os.cpu_count()`` and the
affinity mask both ignore. A pod limited to 2 CPUs on a 64-core node would
otherwise start 64 ZIP threads that only queue for the GIL and the quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_MOUNT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _v2_quota(folder: Path) -> float | None:
    """``cpu.max`` is ``<quota> <period>`` or ``max <period>``."""
    text = _read(folder / "cpu.max")
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    """``cpu.cfs_quota_us`` is -1 when unlimited."""
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None or not quota.isdigit() or not period.isdigit():
        return None
    return int(quota) / int(period) if int(period) else None


def _folders(mount: Path, cgroup_path: str) -> list[Path]:
    """The process's cgroup folder and its ancestors up to the mount (every
    level's limit applies). In a container the path named in /proc/self/cgroup
    may be the host's and absent from the container's mount, whose root then
    is the container's own cgroup."""
    folders = []
    relative = Path(cgroup_path.lstrip("/"))
    for part in (relative, *relative.parents):
        folder = mount / part
        if folder.is_dir():
            folders.append(folder)
    return folders or [mount]


def cgroup_cpu_quota(
    proc_self_cgroup: Path = PROC_SELF_CGROUP, mount: Path = CGROUP_MOUNT
) -> float | None:
    """The smallest CPU quota (in CPUs) over this process's cgroups, v2 or v1;
    None when there is none."""
    text = _read(proc_self_cgroup)
    if text is None:
        return None
    quotas: list[float] = []
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
        if controllers == "" and path:  # v2: "0::/path"
            quotas += filter(None, (_v2_quota(f) for f in _folders(mount, path)))
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            for name in (controllers, "cpu", "cpu,cpuacct"):
                if (mount / name).is_dir():
                    folders = _folders(mount / name, path)
                    quotas += filter(None, (_v1_quota(f) for f in folders))
                    break
    return min(quotas) if quotas else None


def usable_cpus(proc_self_cgroup: Path = PROC_SELF_CGROUP, mount: Path = CGROUP_MOUNT) -> int:
    """CPUs this process may run on, capped by its cgroup quota (rounded up), at least 1."""
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(proc_self_cgroup, mount)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)
