"""Descriptors left behind by abandoned requests (issue 12 item 1).

Starts the service as a real process and sends it, for each kind of request,
N requests from raw sockets that reset the connection right after sending
(SO_LINGER 0: what an audio element does when the listener seeks), then
counts the process's open descriptors in /proc/<pid>/fd.

    python bench/abandoned_requests.py [--requests 1000] [--compare PATH]

``--compare PATH`` runs the same against the package in another checkout
(e.g. main's worktree) in the same run, for a before/after table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MIB, Service, machine, make_workload, service, table

KINDS = [
    ("file URL", "/api/audio/{run}/stems/stem_00000.wav", ""),
    ("file URL, range", "/api/audio/{run}/stems/stem_00000.wav", "Range: bytes=1000-2000\r\n"),
    ("ZIP", "/api/air/export/zip/{run}", ""),
    ("ZIP, range", "/api/air/export/zip/{run}", "Range: bytes=1000000-\r\n"),
    ("manifest", "/api/air/export/list/{run}", ""),
]


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(live: Service) -> int:
    """The descriptor count once the service has answered a request after the load."""
    time.sleep(1.0)
    urllib.request.urlopen(live.url + "/healthz", timeout=10).close()
    time.sleep(0.2)
    return _fds(live.pid)


def _abandon(url: str, target: str, headers: str, count: int) -> None:
    host, port = url.removeprefix("http://").split(":")
    request = f"GET {target} HTTP/1.1\r\nHost: t\r\n{headers}\r\n".encode()
    for _ in range(count):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(request)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def measure(config: Path, run_id: str, requests: int, source: str | None) -> list[int]:
    """Descriptors at the start, then after each kind's abandoned requests."""
    # ``python -m`` puts the working folder first on sys.path: run from there.
    with contextlib.chdir(source or "."), service(config) as live:
        for _, target, _ in KINDS:  # warm: pool threads exist, caches are filled
            urllib.request.urlopen(live.url + target.format(run=run_id), timeout=30).read()
        counts = [_settled_fds(live)]
        for _, target, headers in KINDS:
            _abandon(live.url, target.format(run=run_id), headers, requests)
            counts.append(_settled_fds(live))
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--compare", help="another checkout's root, measured the same way")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-abandoned-") as base:
        workload = make_workload(Path(base), [int(2.6 * MIB)] * 3)
        runs = {"this tree": measure(workload.config, workload.run_id, arguments.requests, None)}
        if arguments.compare:
            compared = str(Path(arguments.compare).resolve())
            runs[arguments.compare] = measure(
                workload.config, workload.run_id, arguments.requests, compared
            )
    labels = ["before the load", *(f"after {arguments.requests} x {kind}" for kind, *_ in KINDS)]
    rows = [
        [label, *(counts[index] for counts in runs.values())] for index, label in enumerate(labels)
    ]
    print(
        table(
            f"Open descriptors of the service, abandoned requests ({machine()})",
            rows,
            ["measure (cumulative)", *(f"fds: {name}" for name in runs)],
        )
    )


if __name__ == "__main__":
    main()
