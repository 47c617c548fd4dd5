"""Resuming a ZIP download at 50% of the ~210 MiB reference export.

Time to the first body byte of ``Range: bytes=<half>-`` on a fresh service (cold: the
CRCs of the files before the offset must be learned by reading them once),
then again (warm: from the CRC cache), against a download from the start.
Target: a resume starts sending within 1 s.

    python bench/resume.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MIB, machine, median, reference_workload, service, table


def first_body_byte(url: str, byte_range: str | None = None) -> float:
    """Seconds from sending the request to the first byte of the body (the
    headers go out before a resume learns its CRCs, so they do not count)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    started = time.perf_counter()
    connection.request("GET", path, headers={"Range": f"bytes={byte_range}"} if byte_range else {})
    response = connection.getresponse()
    assert response.read(1)
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    cold, warm, start = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as temp:
        workload = reference_workload(Path(temp) / "air")
        for _ in range(arguments.rounds):
            with service(workload.config) as svc:  # a fresh process: an empty CRC cache
                url = f"{svc.url}/api/air/export/zip/{workload.run_id}"
                size = int(
                    subprocess.run(
                        ["curl", "-sSI", url], capture_output=True, text=True, check=True
                    )
                    .stdout.lower()
                    .split("content-length:")[1]
                    .split()[0]
                )
                half = f"{size // 2}-"
                cold.append(first_body_byte(url, half))
                warm.append(first_body_byte(url, half))
                start.append(first_body_byte(url))
    rows = [
        ["export size", f"{size / MIB:.1f} MiB", f"resume at byte {size // 2:,}"],
        [
            "resume at 50%, cold CRC cache: first body byte",
            f"{median(cold) * 1000:.1f} ms",
            "reads the first half once; target < 1 s",
        ],
        [
            "resume at 50%, warm CRC cache: first body byte",
            f"{median(warm) * 1000:.1f} ms",
            "reads nothing before the offset",
        ],
        ["download from the start: first body byte", f"{median(start) * 1000:.1f} ms", ""],
    ]
    print(
        table(
            f"Resume ({arguments.rounds} fresh services, {machine()})",
            rows,
            ["measure", "value", "note"],
        )
    )


if __name__ == "__main__":
    main()
