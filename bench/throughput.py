"""Target 1: one ZIP download vs nginx serving the same bytes as a static file.

~210 MiB of random "stems"; curl to /dev/null. Each round starts a fresh
service (an empty CRC cache), downloads the ZIP twice (the first download
learns every file's CRC-32 in a pass just before its header; the second finds
them cached) and nginx once; the medians' ratios are the result (target:
service/nginx >= 0.75 for both), and the service's median time to first byte
(target: < 20 ms).

    python bench/throughput.py [--rounds 9] [--baseline FOLDER]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    add_baseline_option,
    curl,
    ensure_nginx,
    machine,
    median,
    nginx,
    reference_workload,
    service,
    table,
    versions_to_measure,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    add_baseline_option(parser)
    arguments = parser.parse_args()
    binary = ensure_nginx()
    versions = versions_to_measure(arguments.baseline)
    first: dict[str, list[float]] = {name: [] for name in versions}
    later: dict[str, list[float]] = {name: [] for name in versions}
    first_bytes: dict[str, list[float]] = {name: [] for name in versions}
    theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as temp:
        workload = reference_workload(Path(temp) / "air")
        static = Path(temp) / "static"
        static.mkdir()
        reference = static / "export.zip"
        with service(workload.config) as svc:
            zip_url = f"{svc.url}/api/air/export/zip/{workload.run_id}"
            curl(zip_url, str(reference))
            again = Path(temp) / "again.zip"
            curl(zip_url, str(again))
            assert (
                hashlib.sha256(again.read_bytes()).digest()
                == hashlib.sha256(reference.read_bytes()).digest()
            ), "two downloads differ"
            again.unlink()
        size = reference.stat().st_size
        with nginx(binary, static) as nginx_url:
            curl(f"{nginx_url}/export.zip")  # warm
            for round_number in range(arguments.rounds):
                # Each round in the other order, so neither version always follows nginx.
                order = list(versions.items())
                for name, baseline in order if round_number % 2 else reversed(order):
                    # A fresh process: an empty CRC cache.
                    with service(workload.config, baseline=baseline) as svc:
                        zip_url = f"{svc.url}/api/air/export/zip/{workload.run_id}"
                        cold = curl(zip_url)
                        first[name].append(cold.seconds)
                        first_bytes[name].append(cold.first_byte)
                        warm = curl(zip_url)
                        later[name].append(warm.seconds)
                        first_bytes[name].append(warm.first_byte)
                theirs.append(curl(f"{nginx_url}/export.zip").seconds)

    def rate(seconds: list[float]) -> str:
        return f"{size / median(seconds) / MIB:.0f} MiB/s"

    rows: list[list[object]] = [
        ["export size", f"{size / MIB:.1f} MiB ({workload.files} files)", ""],
        ["nginx sendfile: median time", f"{median(theirs) * 1000:.0f} ms", rate(theirs)],
    ]
    for name in versions:
        rows += [
            [
                f"{name}, first download (cold CRC cache): median time",
                f"{median(first[name]) * 1000:.0f} ms",
                rate(first[name]),
            ],
            [
                f"{name}, later downloads (CRCs cached): median time",
                f"{median(later[name]) * 1000:.0f} ms",
                rate(later[name]),
            ],
            [
                f"{name}: median time to first byte",
                f"{median(first_bytes[name]) * 1000:.1f} ms",
                f"max {max(first_bytes[name]) * 1000:.1f} ms; target < 20 ms",
            ],
            [
                f"{name}, first download / nginx throughput",
                f"{median(theirs) / median(first[name]):.2f}",
                "target >= 0.75",
            ],
            [
                f"{name}, later downloads / nginx throughput",
                f"{median(theirs) / median(later[name]):.2f}",
                "",
            ],
        ]
    if "baseline" in versions:
        rows += [
            [
                "first download: service / baseline throughput",
                f"{median(first['baseline']) / median(first['service']):.2f}",
                "",
            ],
            [
                "later downloads: service / baseline throughput",
                f"{median(later['baseline']) / median(later['service']):.2f}",
                "target >= 1 (not slower)",
            ],
        ]
    print(
        table(
            f"Single download ({arguments.rounds} rounds, a fresh service each, {machine()})",
            rows,
            ["measure", "value", "note"],
        )
    )


if __name__ == "__main__":
    main()
