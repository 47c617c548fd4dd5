"""CRC passes over a huge file: do they hold the ZIP threads, and do they stop?
(issue 22, item 3).

A run holds a 32 GiB sparse file (no disk space): a ZIP of it starts with a
pass over the whole file to learn its CRC-32 before the entry's header. The
service (2 ZIP threads, a 5 s shutdown grace) is measured for:

- one uncached pass over a 4 GiB sparse file alone (what the pass costs);
- a normal 70 MB ZIP while two downloads of the 32 GiB run are in their passes;
- two clients that hang up right after the headers (a full GET, then a
  ``Range: bytes=-100``, which needs the CRC for the central directory): a
  normal ZIP right after, and the huge file's descriptors 2 s later
  (``/proc/<pid>/fd``);
- SIGTERM while a download is in its pass: the time to exit.

    python bench/crc_passes.py [--baseline DIR] [--first-port N]

``--baseline DIR`` (``git archive <commit> export_service | tar -x -C DIR``)
measures that version in the same run. ``--first-port`` binds the services
to N, N+1 instead of free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import MIB, add_baseline_option, machine, versions_to_measure, write_random

GIB = 1024 * MIB


def _config(base: Path) -> Path:
    path = base / "config.toml"
    path.write_text(
        f'[server]\nshutdown_grace_seconds = 5.0\n[roots]\nrender = "{base}/render"\n'
        f'midi_generation = "{base}/midi"\nparam_generation = "{base}/param"\n'
        f'[links]\nfile = "{base}/step_links.json"\n[limits]\nzip_threads = 2\n'
        '[logging]\nlevel = "WARNING"\n'
    )
    return path


def _sparse(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
    return path


class _Tree:
    def __init__(self, base: Path) -> None:
        for step in ("render", "midi", "param"):
            (base / step).mkdir()
        self.huge = _sparse(base / "render" / "huge" / "huge.wav", 32 * GIB)
        self.four = _sparse(base / "render" / "four" / "four.wav", 4 * GIB)
        for index in range(7):
            write_random(base / "render" / "normal" / f"part{index}.wav", 10 * MIB)
        self.config = _config(base)
        self.mtime = 1_700_000_000

    def uncached(self, path: Path) -> None:
        """A new mtime: no CRC cache knows the file any more."""
        self.mtime += 1
        os.utime(path, (self.mtime, self.mtime))


def _curl_seconds(url: str, *options: str) -> float:
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", *options, url],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def _headers_only(url: str, range_header: str = "") -> socket.socket:
    """A GET of the huge run's ZIP whose client reads the head, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    extra = f"Range: {range_header}\r\n" if range_header else ""
    sock.sendall(f"GET /api/air/export/zip/huge HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    return sock


def _huge_fds(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").endswith("huge.wav")
    return count


def _time_into(times: list[float], url: str) -> None:
    times.append(_curl_seconds(url))


def _until_closed(pid: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while _huge_fds(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def _measure(tree: _Tree, baseline: Path | None) -> dict[str, object]:
    row: dict[str, object] = {}
    with harness.service(tree.config, baseline=baseline) as live:
        normal = live.url + "/api/air/export/zip/normal"
        for _ in range(2):
            _curl_seconds(normal)
        row["a 70 MB ZIP, idle (s, best of 3)"] = min(_curl_seconds(normal) for _ in range(3))
        passes = []
        for _ in range(3):
            tree.uncached(tree.four)
            passes.append(_curl_seconds(live.url + "/api/air/export/zip/four", "-r", "-100"))
        row["one pass over 4 GiB alone (s, best of 3)"] = min(passes)
        tree.uncached(tree.huge)
        staying = [_headers_only(live.url) for _ in range(2)]
        row["a 70 MB ZIP while 2 passes run (s)"] = _curl_seconds(normal)
        for sock in staying:
            sock.close()
        _until_closed(live.pid)
        for label, range_header in (("GET", ""), ("Range: bytes=-100", "bytes=-100")):
            tree.uncached(tree.huge)
            gone = [_headers_only(live.url, range_header) for _ in range(2)]
            time.sleep(0.3)
            for sock in gone:
                sock.close()
            timed: list[float] = []
            after = threading.Thread(target=_time_into, args=(timed, normal))
            after.start()
            time.sleep(2)
            row[f"{label}, 2 hang-ups: huge file's fds 2 s later"] = _huge_fds(live.pid)
            after.join()
            row[f"{label}, 2 hang-ups: a 70 MB ZIP right after (s)"] = timed[0]
            _until_closed(live.pid)
        tree.uncached(tree.huge)
        held = _headers_only(live.url)
        time.sleep(0.5)
        started = time.monotonic()
        live.process.send_signal(signal.SIGTERM)
        live.process.wait(120)
        row["SIGTERM during a pass, grace 5 s: exit after (s)"] = time.monotonic() - started
        held.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_baseline_option(parser)
    parser.add_argument("--first-port", type=int, help="bind to N, N+1 instead of free ports")
    options = parser.parse_args()
    if options.first_port:
        ports = iter(range(options.first_port, options.first_port + 10))
        harness.free_port = lambda: next(ports)
    versions = versions_to_measure(options.baseline)
    with tempfile.TemporaryDirectory(prefix="crc-passes-") as folder:
        tree = _Tree(Path(folder))
        rows = {name: _measure(tree, package) for name, package in versions.items()}
    print(f"crc passes ({machine()})\n")
    names = list(rows)
    print(f"| measure | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for key in rows[names[0]]:
        cells = [rows[name][key] for name in names]
        shown = [f"{cell:.3f}" if isinstance(cell, float) else str(cell) for cell in cells]
        print(f"| {key} | {' | '.join(shown)} |")


if __name__ == "__main__":
    main()
