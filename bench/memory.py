"""Target 5: memory does not grow with the archive.

Peak RSS (VmHWM) of a fresh service process streaming a 2 GiB export, against
one streaming a 200 MiB export (target: within 10%).

    python bench/memory.py [--large-mib 2048] [--small-mib 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MIB, curl, machine, make_workload, rss_kib, service, table


def peak_rss(base: Path, total_mib: int) -> tuple[int, int, int]:
    """(RSS before, VmHWM after, bytes sent) of a fresh service streaming one export."""
    stems = max(1, total_mib // 64)
    workload = make_workload(base, [total_mib * MIB // stems] * stems)
    with service(workload.config) as svc:
        before = rss_kib(svc.pid)
        fetch = curl(f"{svc.url}/api/air/export/zip/{workload.run_id}")
        return before, rss_kib(svc.pid, "VmHWM"), fetch.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large-mib", type=int, default=2048)
    parser.add_argument("--small-mib", type=int, default=200)
    arguments = parser.parse_args()
    results = {}
    for total in (arguments.small_mib, arguments.large_mib):
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as temp:
            results[total] = peak_rss(Path(temp), total)
    small, large = results[arguments.small_mib], results[arguments.large_mib]
    rows = [
        [
            f"{mib} MiB export",
            f"{size / MIB:.0f} MiB sent",
            f"{before / 1024:.1f} MiB",
            f"{peak / 1024:.1f} MiB",
        ]
        for mib, (before, peak, size) in results.items()
    ]
    rows.append(["large / small peak", "", "", f"{large[1] / small[1]:.3f} (target <= 1.10)"])
    print(
        table(
            f"Memory while streaming ({machine()})",
            rows,
            ["export", "size", "RSS before", "peak RSS (VmHWM)"],
        )
    )


if __name__ == "__main__":
    main()
