"""Target 7: a ZIP of 10,000 files of 21 KiB against nginx serving the same
ZIP as a static file, beside the ~210 MiB reference export (12 files).

For each export: the service's ZIP and nginx's copy of it alternate, ROUNDS
times (the service warm: its CRC cache and the page cache hold the files).
Targets: the small-file export at >= 0.40 of nginx's throughput with its
first byte within 100 ms; the reference not slower than before.

    python bench/small_files.py [--files 10000] [--rounds 7] [--baseline FOLDER]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    Workload,
    add_baseline_option,
    curl,
    ensure_nginx,
    machine,
    make_workload,
    median,
    nginx,
    reference_workload,
    service,
    table,
    versions_to_measure,
)

SMALL_FILE = 21 * 1024


def measure(
    workload: Workload, static: Path, binary: str, rounds: int, versions: dict[str, Path | None]
) -> tuple[int, dict[str, list[float]], dict[str, list[float]], list[float]]:
    """(ZIP size, service times and first bytes by version, nginx times)."""
    reference = static / "export.zip"
    times: dict[str, list[float]] = {name: [] for name in versions}
    first_bytes: dict[str, list[float]] = {name: [] for name in versions}
    theirs: list[float] = []
    with ExitStack() as stack:
        urls = {
            name: f"{stack.enter_context(service(workload.config, baseline=baseline)).url}"
            f"/api/air/export/zip/{workload.run_id}"
            for name, baseline in versions.items()
        }
        curl(urls["service"], str(reference))
        for url in urls.values():
            curl(url)
        with nginx(binary, static) as nginx_url:
            curl(f"{nginx_url}/export.zip")
            for round_number in range(rounds):
                # Each round in the other order, so neither version always follows nginx.
                order = list(urls.items())
                for name, url in order if round_number % 2 else reversed(order):
                    fetch = curl(url)
                    times[name].append(fetch.seconds)
                    first_bytes[name].append(fetch.first_byte)
                theirs.append(curl(f"{nginx_url}/export.zip").seconds)
    return reference.stat().st_size, times, first_bytes, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    add_baseline_option(parser)
    arguments = parser.parse_args()
    binary = ensure_nginx()
    versions = versions_to_measure(arguments.baseline)
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
        for export, (workload, ratio_target, first_byte_target) in exports.items():
            static = workload.base / "static"
            static.mkdir()
            size, times, first_bytes, theirs = measure(
                workload, static, binary, arguments.rounds, versions
            )
            for name in versions:
                ours = times[name]
                rows.append(
                    [
                        export,
                        name,
                        f"{size / MIB:.0f} MiB",
                        f"{median(ours) * 1000:.0f} ms ({size / median(ours) / MIB:.0f} MiB/s)",
                        f"{median(theirs) * 1000:.0f} ms ({size / median(theirs) / MIB:.0f} MiB/s)",
                        f"{median(theirs) / median(ours):.2f} (target {ratio_target})",
                        f"{median(first_bytes[name]) * 1000:.1f} ms (target {first_byte_target})",
                    ]
                )
    print(
        table(
            f"Small files against nginx ({arguments.rounds} alternating rounds, {machine()})",
            rows,
            [
                "export",
                "version",
                "ZIP size",
                "ZIP download",
                "nginx static",
                "ZIP / nginx",
                "first byte",
            ],
        )
    )


if __name__ == "__main__":
    main()
