"""Target 1: one ZIP download vs nginx serving the same bytes as a static file.

~210 MiB of random "stems"; curl to /dev/null; service and nginx alternate,
ROUNDS times; the medians' ratio is the result (target: service/nginx >= 0.75),
and the service's median time to first byte (target: < 20 ms).

    python bench/throughput.py [--rounds 9]
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
    curl,
    ensure_nginx,
    machine,
    median,
    nginx,
    reference_workload,
    service,
    table,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    arguments = parser.parse_args()
    binary = ensure_nginx()
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as temp:
        workload = reference_workload(Path(temp) / "air")
        static = Path(temp) / "static"
        static.mkdir()
        with service(workload.config) as svc:
            zip_url = f"{svc.url}/api/air/export/zip/{workload.run_id}"
            reference = static / "export.zip"
            curl(zip_url, str(reference))
            size = reference.stat().st_size
            again = Path(temp) / "again.zip"
            curl(zip_url, str(again))
            assert (
                hashlib.sha256(again.read_bytes()).digest()
                == hashlib.sha256(reference.read_bytes()).digest()
            ), "two downloads differ"
            ours: list[float] = []
            theirs: list[float] = []
            first_bytes: list[float] = []
            if binary is None:
                print("nginx is not available: only the service is measured", file=sys.stderr)
                for _ in range(arguments.rounds):
                    fetch = curl(zip_url)
                    ours.append(fetch.seconds)
                    first_bytes.append(fetch.first_byte)
            else:
                with nginx(binary, static) as nginx_url:
                    curl(f"{nginx_url}/export.zip")  # warm
                    for _ in range(arguments.rounds):
                        fetch = curl(zip_url)
                        ours.append(fetch.seconds)
                        first_bytes.append(fetch.first_byte)
                        theirs.append(curl(f"{nginx_url}/export.zip").seconds)
    rows: list[list[object]] = [
        ["export size", f"{size / MIB:.1f} MiB ({workload.files} files)", ""],
        [
            "service: median time",
            f"{median(ours) * 1000:.0f} ms",
            f"{size / median(ours) / MIB:.0f} MiB/s",
        ],
        [
            "service: median time to first byte",
            f"{median(first_bytes) * 1000:.1f} ms",
            "target < 20 ms",
        ],
    ]
    if theirs:
        ratio = median(theirs) / median(ours)
        rows += [
            [
                "nginx sendfile: median time",
                f"{median(theirs) * 1000:.0f} ms",
                f"{size / median(theirs) / MIB:.0f} MiB/s",
            ],
            ["service / nginx throughput", f"{ratio:.2f}", "target >= 0.75"],
        ]
    print(
        table(
            f"Single download ({arguments.rounds} alternating rounds, {machine()})",
            rows,
            ["measure", "value", "note"],
        )
    )


if __name__ == "__main__":
    main()
