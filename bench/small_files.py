"""Target 7: a ZIP of 10,000 files of 21 KiB against nginx serving the same
ZIP as a static file, beside the ~210 MiB reference export (12 files).

For each export: the service's ZIP and nginx's copy of it alternate, ROUNDS
times (the service warm: its CRC cache and the page cache hold the files).
Targets: the small-file export at >= 0.40 of nginx's throughput with its
first byte within 100 ms; the reference not slower than before.

The small files are also sent, in the same rounds, by bench/read_floor.py:
the same aiohttp loop listing and reading the files with no ZIP at all (its
body is the files alone, 1% smaller than the ZIP). Its ratio is the most a
service built this way could reach; what the ZIP may cost is the gap
between its time and the target's.

    python bench/small_files.py [--files 10000] [--rounds 7] [--baseline FOLDER]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    Workload,
    add_baseline_option,
    curl,
    ensure_nginx,
    free_port,
    machine,
    make_workload,
    median,
    nginx,
    python_server,
    reference_workload,
    service,
    table,
    versions_to_measure,
)

REPOSITORY = Path(__file__).resolve().parent.parent
SMALL_FILE = 21 * 1024
FLOOR = "floor: no ZIP"


@contextmanager
def read_floor(folder: Path) -> Iterator[str]:
    """bench/read_floor.py serving ``folder`` on a free port; its URL."""
    port = free_port()
    arguments = ["-m", "bench.read_floor", str(folder), str(port)]
    with python_server(arguments, port, dict(os.environ), REPOSITORY) as (_, url):
        yield f"{url}/files"


def measure(
    workload: Workload,
    static: Path,
    binary: str,
    rounds: int,
    versions: dict[str, Path | None],
    floor: Path | None,
) -> tuple[dict[str, int], dict[str, list[float]], dict[str, list[float]], list[float]]:
    """(Bytes sent, times and first bytes by version, and of the floor when
    ``floor`` names the folder of files it sends; nginx's times of the ZIP)."""
    reference = static / "export.zip"
    theirs: list[float] = []
    with ExitStack() as stack:
        urls = {
            name: f"{stack.enter_context(service(workload.config, baseline=baseline)).url}"
            f"/api/air/export/zip/{workload.run_id}"
            for name, baseline in versions.items()
        }
        if floor is not None:
            urls[FLOOR] = stack.enter_context(read_floor(floor))
        times: dict[str, list[float]] = {name: [] for name in urls}
        first_bytes: dict[str, list[float]] = {name: [] for name in urls}
        curl(urls["service"], str(reference))
        sizes = {name: curl(url).size for name, url in urls.items()}
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
    return sizes, times, first_bytes, theirs


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
                True,
            ),
            "reference (12 files)": (
                reference_workload(Path(temp) / "few"),
                ">= 0.75",
                "< 20 ms",
                False,
            ),
        }
        for export, (workload, ratio_target, first_byte_target, with_floor) in exports.items():
            static = workload.base / "static"
            static.mkdir()
            stems = workload.run_folder() / "stems"
            sizes, times, first_bytes, theirs = measure(
                workload, static, binary, arguments.rounds, versions, stems if with_floor else None
            )
            zip_size, nginx_time = sizes["service"], median(theirs)  # nginx sends the ZIP
            for name in times:
                ours, sent = times[name], sizes[name]
                targets = (
                    ("the most, with no ZIP", "no ZIP to plan")
                    if name == FLOOR
                    else (f"target {ratio_target}", f"target {first_byte_target}")
                )
                rows.append(
                    [
                        export,
                        name,
                        f"{sent / MIB:.0f} MiB",
                        f"{median(ours) * 1000:.0f} ms ({sent / median(ours) / MIB:.0f} MiB/s)",
                        f"{nginx_time * 1000:.0f} ms ({zip_size / nginx_time / MIB:.0f} MiB/s)",
                        f"{nginx_time / median(ours):.2f} ({targets[0]})",
                        f"{median(first_bytes[name]) * 1000:.1f} ms ({targets[1]})",
                    ]
                )
    print(
        table(
            f"Small files against nginx ({arguments.rounds} alternating rounds, {machine()})",
            rows,
            [
                "export",
                "version",
                "sent",
                "download",
                "nginx static",
                "throughput / nginx's",
                "first byte",
            ],
        )
    )


if __name__ == "__main__":
    main()
