"""Target 3: a render run of 10,000 files.

Manifest latency against a bare Python ``os.walk`` + ``stat`` of the same
folder (target: within 3x), and the ZIP of the run (about 210 MiB, like the
reference export) in files/s and MiB/s against the single-download reference
(target: >= 50% of its throughput).

    python bench/big_runs.py [--files 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    curl,
    machine,
    make_workload,
    median,
    reference_workload,
    service,
    table,
)

WALK = """
import os, sys, time
started = time.perf_counter()
count = 0
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        os.stat(os.path.join(folder, name))
        count += 1
print(time.perf_counter() - started, count)
"""


def bare_walk(folder: Path) -> float:
    """One cold-process walk + stat of every file (the page cache is warm)."""
    result = subprocess.run(
        [sys.executable, "-c", WALK, str(folder)], capture_output=True, text=True, check=True
    )
    return float(result.stdout.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    total = 210 * MIB
    with tempfile.TemporaryDirectory(prefix="bench-big-runs-") as temp:
        many = make_workload(Path(temp) / "many", [total // arguments.files] * arguments.files)
        few = reference_workload(Path(temp) / "few")
        run_folder = many.run_folder()
        with service(many.config) as svc_many, service(few.config) as svc_few:
            list_url = f"{svc_many.url}/api/air/export/list/{many.run_id}"
            zip_many = f"{svc_many.url}/api/air/export/zip/{many.run_id}"
            zip_few = f"{svc_few.url}/api/air/export/zip/{few.run_id}"
            curl(list_url), curl(zip_many), curl(zip_few)  # warm the page cache
            walks, manifests, many_times, few_times = [], [], [], []
            for _ in range(arguments.rounds):
                walks.append(bare_walk(run_folder))
                manifests.append(curl(list_url).seconds)
                many_times.append(curl(zip_many).seconds)
                few_times.append(curl(zip_few).seconds)
            zip_size = curl(zip_many).size
            few_size = curl(zip_few).size
    many_rate = zip_size / median(many_times)
    few_rate = few_size / median(few_times)
    rows: list[list[object]] = [
        [
            "bare os.walk + stat (median)",
            f"{median(walks) * 1000:.1f} ms",
            f"{arguments.files} files, {os.cpu_count()} cores",
        ],
        [
            "manifest over HTTP (median)",
            f"{median(manifests) * 1000:.1f} ms",
            f"ratio {median(manifests) / median(walks):.2f}x (target <= 3x)",
        ],
        [
            "ZIP of the 10,000-file run",
            f"{median(many_times) * 1000:.0f} ms",
            f"{arguments.files / median(many_times):,.0f} files/s, {many_rate / MIB:.0f} MiB/s",
        ],
        [
            "ZIP of the 12-file reference",
            f"{median(few_times) * 1000:.0f} ms",
            f"{few_rate / MIB:.0f} MiB/s",
        ],
        ["10,000-file / reference throughput", f"{many_rate / few_rate:.2f}", "target >= 0.50"],
    ]
    print(
        table(
            f"Big runs ({arguments.rounds} rounds, {machine()})", rows, ["measure", "value", "note"]
        )
    )


if __name__ == "__main__":
    main()
