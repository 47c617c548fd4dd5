"""Slow but steady readers: which ones the service cuts as stalled.

One 64 MiB file, served as a file URL and as a ZIP, with
``limits.send_timeout_seconds = 10``. Clients that never stop reading, at
20, 50 and 200 KiB/s, all at once for 25 s:

- ``steady``: a socket with the kernel's default buffers, reading at its
  rate from the first byte (its receive buffer stays small);
- ``16 KiB window``: the same with ``SO_RCVBUF`` 16 KiB;
- ``curl --limit-rate``: curl takes a first burst at full speed, so the
  kernel grows its receive buffer to megabytes, then reads from it slowly.

A client counts as cut when the service resets it within the 25 s. With
``--baseline DIR`` the same clients run against another version of the
package too (say ``git archive <commit> export_service | tar -x -C DIR``).

    python bench/slow_readers.py [--baseline DIR]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    add_baseline_option,
    machine,
    make_workload,
    service,
    table,
    versions_to_measure,
)

SECONDS = 25.0
TIMEOUT = 10
RATES = (20, 50, 200)  # KiB/s
KINDS = ("steady", "16 KiB window", "curl --limit-rate")


def _socket_reader(url: str, path: str, rate_kib: int, window: int | None) -> str:
    """Reads at ``rate_kib`` until SECONDS pass; how it ended."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    received = 0
    with socket.socket() as sock:
        if window:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)
        sock.connect((host, int(port)))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        piece = max(1024, rate_kib * 1024 // 20)
        while (elapsed := time.monotonic() - started) < SECONDS:
            try:
                chunk = sock.recv(piece)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return f"cut at {elapsed:.0f} s ({received / MIB:.1f} MiB)"
            received += len(chunk)
            ahead = received / (rate_kib * 1024) - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return f"kept ({received / MIB:.1f} MiB)"


def _curl_reader(url: str, path: str, rate_kib: int) -> str:
    started = time.monotonic()
    done = subprocess.run(
        [
            *("curl", "-s", "-o", "/dev/null", "-m", str(SECONDS)),
            *("--limit-rate", f"{rate_kib}k", "-w", "%{size_download}", url + path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    received = int(done.stdout or 0) / MIB
    if done.returncode == 28:  # curl's own time limit: still downloading
        return f"kept ({received:.1f} MiB)"
    return f"cut at {time.monotonic() - started:.0f} s ({received:.1f} MiB, curl {done.returncode})"


def run_clients(url: str, run_id: str) -> dict[tuple[str, str, int], str]:
    paths = {"file URL": f"/api/audio/{run_id}/stems/stem_00000.wav"}
    paths["ZIP"] = f"/api/air/export/zip/{run_id}"
    results: dict[tuple[str, str, int], str] = {}

    def one(kind: str, route: str, rate: int) -> None:
        if kind == "curl --limit-rate":
            outcome = _curl_reader(url, paths[route], rate)
        else:
            window = 16 * 1024 if kind == "16 KiB window" else None
            outcome = _socket_reader(url, paths[route], rate, window)
        results[kind, route, rate] = outcome

    threads = [
        threading.Thread(target=one, args=(kind, route, rate))
        for kind in KINDS
        for route in paths
        for rate in RATES
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_baseline_option(parser)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as base:
        workload = make_workload(Path(base), [64 * MIB])
        timeout = ("EXPORT_SERVICE_LIMITS_SEND_TIMEOUT_SECONDS", str(TIMEOUT))
        versions = versions_to_measure(arguments.baseline)
        outcomes = {}
        for name, baseline in versions.items():
            with service(workload.config, timeout, baseline=baseline) as running:
                outcomes[name] = run_clients(running.url, workload.run_id)
    rows = [
        [kind, route, f"{rate} KiB/s", *(outcomes[name][kind, route, rate] for name in versions)]
        for kind in KINDS
        for route in ("file URL", "ZIP")
        for rate in RATES
    ]
    print(
        table(
            f"Slow readers against a {TIMEOUT} s send timeout, {SECONDS:.0f} s each ({machine()})",
            rows,
            ["client", "route", "rate", *versions],
        )
    )


if __name__ == "__main__":
    main()
