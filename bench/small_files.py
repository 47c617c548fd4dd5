"""Target 7: a ZIP of 10,000 files of 21 KiB against nginx serving the same
ZIP as a static file, beside the ~210 MiB reference export (12 files).

For each export: the service's ZIP and nginx's copy of it alternate, ROUNDS
times (the service warm: its CRC cache and the page cache hold the files).
Targets: the small-file export at >= 0.40 of nginx's throughput with its
first byte within 100 ms; the reference not slower than before.

    python bench/small_files.py [--files 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    Workload,
    curl,
    ensure_nginx,
    machine,
    make_workload,
    median,
    nginx,
    reference_workload,
    service,
    table,
)

SMALL_FILE = 21 * 1024


def measure(
    workload: Workload, static: Path, binary: str, rounds: int
) -> tuple[int, list[float], list[float], list[float]]:
    """(ZIP size, service times, service first bytes, nginx times)."""
    reference = static / "export.zip"
    ours: list[float] = []
    first_bytes: list[float] = []
    theirs: list[float] = []
    with service(workload.config) as svc:
        zip_url = f"{svc.url}/api/air/export/zip/{workload.run_id}"
        curl(zip_url, str(reference))
        with nginx(binary, static) as nginx_url:
            curl(f"{nginx_url}/export.zip")
            for _ in range(rounds):
                fetch = curl(zip_url)
                ours.append(fetch.seconds)
                first_bytes.append(fetch.first_byte)
                theirs.append(curl(f"{nginx_url}/export.zip").seconds)
    return reference.stat().st_size, ours, first_bytes, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    binary = ensure_nginx()
    if binary is None:
        sys.exit("nginx is not available (install nginx-light)")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-small-files-") as temp:
        exports = {
            f"{arguments.files:,} files of 21 KiB": (
                make_workload(Path(temp) / "many", [SMALL_FILE] * arguments.files),
                ">= 0.40",
                "<= 100 ms",
            ),
            "reference (12 files)": (reference_workload(Path(temp) / "few"), ">= 0.75", "< 20 ms"),
        }
        for name, (workload, ratio_target, first_byte_target) in exports.items():
            static = workload.base / "static"
            static.mkdir()
            size, ours, first_bytes, theirs = measure(workload, static, binary, arguments.rounds)
            rows.append(
                [
                    name,
                    f"{size / MIB:.0f} MiB",
                    f"{median(ours) * 1000:.0f} ms ({size / median(ours) / MIB:.0f} MiB/s)",
                    f"{median(theirs) * 1000:.0f} ms ({size / median(theirs) / MIB:.0f} MiB/s)",
                    f"{median(theirs) / median(ours):.2f} (target {ratio_target})",
                    f"{median(first_bytes) * 1000:.1f} ms (target {first_byte_target})",
                ]
            )
    print(
        table(
            f"Small files against nginx ({arguments.rounds} alternating rounds, {machine()})",
            rows,
            ["export", "ZIP size", "service", "nginx static", "service / nginx", "first byte"],
        )
    )


if __name__ == "__main__":
    main()
