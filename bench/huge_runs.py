"""Issue 12 item 2: runs of 200,000 and 1,000,000 tiny files must not starve
everyone else.

For each size, a render run of that many tiny files (1,000 per folder) is made
once under a temp folder and reused. Against it, 2 manifests and 2 ``HEAD``s of
its ZIP run at once while a prober calls ``/healthz`` every 20 ms and a small
export (3 files) is downloaded again and again. Reported: each request's
status, the service's peak RSS (target <= 600 MiB for 200k), the ``/healthz``
max (target <= 250 ms) and the small export's worst time to first byte
(target <= 1 s). A last row per size measures the memory one manifest holds
per listed file (one manifest alone, its limit raised so it is not refused).

    python bench/huge_runs.py [--sizes 200000,1000000] [--before PATH]

``--before PATH`` also runs the service from another checkout (say ``git
archive main`` unpacked there), on the same trees, for a side-by-side
before/after.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    RssSampler,
    Workload,
    machine,
    make_workload,
    rss_kib,
    service,
    table,
)

PER_FOLDER = 1_000
SMALL_RUN = "small_run"
LIMIT_ENV = "EXPORT_SERVICE_LIMITS_MAX_FILES_PER_EXPORT"


def make_huge_run(workload: Workload, run_id: str, files: int) -> None:
    """``files`` files of 8 bytes, 1,000 per folder (created with bare syscalls:
    a million files take about a minute)."""
    run = workload.run_folder(run_id)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for index in range(files):
        if index % PER_FOLDER == 0:
            folder = run / f"take_{index // PER_FOLDER:04d}"
            folder.mkdir(parents=True)
            folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        fd = os.open(f"note_{index % PER_FOLDER:04d}.wav", flags, 0o644, dir_fd=folder_fd)
        os.write(fd, b"RIFFdata")
        os.close(fd)
        if index % PER_FOLDER == PER_FOLDER - 1 or index == files - 1:
            os.close(folder_fd)
    os.sync()


def request(port: int, method: str, path: str, first_byte_only: bool = False) -> tuple[int, float]:
    """(status, seconds to the first body byte, or to the end of a HEAD)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        started = time.perf_counter()
        connection.request(method, path)
        response = connection.getresponse()
        if method != "HEAD":
            response.read(1)
        elapsed = time.perf_counter() - started
        if not first_byte_only:
            response.read()
        return response.status, elapsed
    finally:
        connection.close()


class Repeating(threading.Thread):
    """Calls ``work`` again and again (``pause`` apart) until stopped; keeps the times."""

    def __init__(self, work: object, pause: float) -> None:
        super().__init__(daemon=True)
        self.work, self.pause = work, pause
        self.times: list[float] = []
        self.statuses: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            status, seconds = self.work()  # type: ignore[operator]
            self.statuses.add(status)
            self.times.append(seconds)
            self.stop.wait(self.pause)


@contextmanager
def watching(port: int) -> Iterator[tuple[Repeating, Repeating]]:
    prober = Repeating(lambda: request(port, "GET", "/healthz"), 0.020)
    small = Repeating(
        lambda: request(port, "GET", f"/api/air/export/zip/{SMALL_RUN}", first_byte_only=True),
        0.25,
    )
    for thread in (prober, small):
        thread.start()
    try:
        yield prober, small
    finally:
        for thread in (prober, small):
            thread.stop.set()
            thread.join()


def load(port: int, pid: int, run_id: str) -> list[object]:
    """2 manifests + 2 HEADs of the ZIP at once, watched."""
    calls = [
        ("GET", f"/api/air/export/list/{run_id}"),
        ("GET", f"/api/air/export/list/{run_id}"),
        ("HEAD", f"/api/air/export/zip/{run_id}"),
        ("HEAD", f"/api/air/export/zip/{run_id}"),
    ]
    results: list[tuple[int, float]] = [(0, 0.0)] * len(calls)

    def call(index: int) -> None:
        method, path = calls[index]
        results[index] = request(port, method, path)

    idle = rss_kib(pid)
    started = time.perf_counter()
    with RssSampler(pid) as rss, watching(port) as (prober, small):
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    seconds = time.perf_counter() - started
    statuses = "/".join(str(status) for status, _ in results)
    return [
        statuses,
        f"{seconds:.1f} s",
        f"{idle / 1024:.0f} / {rss.peak_kib / 1024:.0f} MiB",
        f"{max(prober.times) * 1000:.0f} ms ({len(prober.times)} probes)",
        f"{max(small.times) * 1000:.0f} ms ({len(small.times)} tries, "
        + "/".join(map(str, sorted(small.statuses)))
        + ")",
    ]


def per_file_memory(port: int, pid: int, run_id: str, files: int) -> str:
    """Peak RSS growth of one manifest, per listed file."""
    idle = rss_kib(pid)
    with RssSampler(pid) as rss:
        status, _ = request(port, "GET", f"/api/air/export/list/{run_id}")
    grown = (rss.peak_kib - idle) * 1024
    return f"{status}: +{grown / MIB:.0f} MiB, {grown / files:.0f} B/file"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000,1000000")
    parser.add_argument(
        "--before", type=Path, help="also run the service from this checkout, on the same trees"
    )
    arguments = parser.parse_args()
    sizes = [int(size) for size in arguments.sizes.split(",")]
    temp = tempfile.mkdtemp(prefix="bench-huge-runs-")
    services: list[tuple[str, list[tuple[str, str]]]] = [("this checkout", [])]
    if arguments.before:
        services.insert(0, ("before", [("PYTHONPATH", str(arguments.before.resolve()))]))
        # A service's first import path is its working folder: not this checkout.
        os.chdir(temp)
    rows: list[list[object]] = []
    try:
        workload = make_workload(Path(temp), [64 * 1024] * 3, run_id=SMALL_RUN)
        for files in sizes:
            run_id = f"huge_{files}"
            print(f"making {files:,} files...", file=sys.stderr)
            make_huge_run(workload, run_id, files)
            for label, env in services:
                with service(workload.config, *env) as svc:
                    port = int(svc.url.rsplit(":", 1)[1])
                    loaded = load(port, svc.pid, run_id)
                    rows.append([f"{files:,}", label, "2 manifests + 2 HEADs", *loaded])
                with service(workload.config, *env, (LIMIT_ENV, str(2 * files))) as svc:
                    port = int(svc.url.rsplit(":", 1)[1])
                    memory = per_file_memory(port, svc.pid, run_id, files)
                    rows.append([f"{files:,}", label, "1 manifest (limit raised)", memory, *"----"])
            shutil.rmtree(workload.run_folder(run_id))
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    headers = ["files", "service", "load", "statuses", "load took", "RSS idle / peak"]
    headers += ["/healthz max", "small ZIP first byte, max"]
    print(table(f"Huge runs ({machine()})", rows, headers))


if __name__ == "__main__":
    main()
