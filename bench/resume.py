"""Resuming ZIP downloads: where the first body byte comes from, and what it costs.

1. The ~210 MiB reference export, ``Range: bytes=<half>-`` on a fresh service
   (cold: the CRCs of the files before the offset are not known yet), then
   again (warm: from the CRC cache), against a download from the start.
   Target: a resume starts sending within 1 s.
2. One 1 GiB file, CRC cache warm: resumes at 1% and at 90% of it. The bytes
   the service has read (``rchar`` of /proc/<pid>/io) when the first body
   byte arrives. Target: < 64 MiB read at 90%, and a first byte no later than
   twice that of the resume at 1%.

    python bench/resume.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
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


def bytes_read(pid: int) -> int:
    """What the process has read through read(2) and friends, page cache included."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/<pid>/io")


def first_body_byte(url: str, byte_range: str | None = None, pid: int = 0) -> tuple[float, int]:
    """Seconds from sending the request to the first byte of the body (the
    headers go out before a resume learns its CRCs, so they do not count),
    and the bytes the service (``pid``, if given) read meanwhile."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    read_before = bytes_read(pid) if pid else 0
    started = time.perf_counter()
    connection.request("GET", path, headers={"Range": f"bytes={byte_range}"} if byte_range else {})
    response = connection.getresponse()
    assert response.read(1)
    elapsed = time.perf_counter() - started
    read = bytes_read(pid) - read_before if pid else 0
    connection.close()
    return elapsed, read


def content_length(url: str) -> int:
    connection = http.client.HTTPConnection(url.removeprefix("http://").split("/")[0])
    connection.request("HEAD", "/" + url.removeprefix("http://").split("/", 1)[1])
    size = int(connection.getresponse().headers["Content-Length"])
    connection.close()
    return size


def settle(pid: int) -> None:
    """Wait until the service stops reading (a cut download's read-ahead ends)."""
    last = bytes_read(pid)
    while True:
        time.sleep(0.2)
        now = bytes_read(pid)
        if now == last:
            return
        last = now


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    cold, warm, start = [], [], []
    at_1: list[tuple[float, int]] = []
    at_90: list[tuple[float, int]] = []
    with tempfile.TemporaryDirectory(prefix="bench-resume-") as temp:
        workload = reference_workload(Path(temp) / "air")
        for _ in range(arguments.rounds):
            with service(workload.config) as svc:  # a fresh process: an empty CRC cache
                url = f"{svc.url}/api/air/export/zip/{workload.run_id}"
                size = content_length(url)
                half = f"{size // 2}-"
                cold.append(first_body_byte(url, half)[0])
                warm.append(first_body_byte(url, half)[0])
                start.append(first_body_byte(url)[0])
        big = make_workload(Path(temp) / "big", [1024 * MIB])
        with service(big.config) as svc:
            url = f"{svc.url}/api/air/export/zip/{big.run_id}"
            big_size = content_length(url)
            curl(url)  # a full download: the CRC cache now holds the file's
            for _ in range(arguments.rounds):
                for share, results in ((0.01, at_1), (0.90, at_90)):
                    settle(svc.pid)
                    results.append(first_body_byte(url, f"{int(big_size * share)}-", svc.pid))

    def read_mib(results: list[tuple[float, int]]) -> str:
        return f"{median([read for _, read in results]) / MIB:.1f} MiB"

    def first_ms(results: list[tuple[float, int]]) -> float:
        return median([seconds for seconds, _ in results]) * 1000

    rows = [
        ["reference export size", f"{size / MIB:.1f} MiB", f"resume at byte {size // 2:,}"],
        [
            "resume at 50%, cold CRC cache: first body byte",
            f"{median(cold) * 1000:.1f} ms",
            "target < 1 s",
        ],
        [
            "resume at 50%, warm CRC cache: first body byte",
            f"{median(warm) * 1000:.1f} ms",
            "",
        ],
        ["download from the start: first body byte", f"{median(start) * 1000:.1f} ms", ""],
        ["1 GiB file: resume at 1%: first body byte", f"{first_ms(at_1):.1f} ms", ""],
        [
            "1 GiB file: resume at 90%: first body byte",
            f"{first_ms(at_90):.1f} ms",
            f"{first_ms(at_90) / first_ms(at_1):.2f}x the 1% resume (target <= 2x)",
        ],
        ["1 GiB file: read before the first byte, resume at 1%", read_mib(at_1), ""],
        [
            "1 GiB file: read before the first byte, resume at 90%",
            read_mib(at_90),
            "target < 64 MiB",
        ],
    ]
    print(
        table(
            f"Resume ({arguments.rounds} rounds, {machine()})",
            rows,
            ["measure", "value", "note"],
        )
    )


if __name__ == "__main__":
    main()
