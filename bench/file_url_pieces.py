"""What the file URLs' sendfile piece size costs: one 256 MiB file URL
fetched by curl from three services side by side, sending 1 MiB (before),
256 KiB and 64 KiB pieces, ROUNDS times alternating; medians. A smaller
piece lets a slower reader through (the send timeout restarts per piece) and
costs a call per piece.

    python bench/file_url_pieces.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MIB, curl, free_port, machine, make_workload, median, table
from export_service.file_urls import SENDFILE_PIECE

# The service with another SENDFILE_PIECE (a module constant, not a setting).
_LAUNCHER = """
import sys
import export_service.file_urls as file_urls
file_urls.SENDFILE_PIECE = int(sys.argv.pop(1))
from export_service.cli import main
sys.exit(main())
"""


_NOTES = {MIB: " (before)", SENDFILE_PIECE: " (now)"}


@contextmanager
def service_with_piece(config: Path, piece: int) -> Iterator[str]:
    port = free_port()
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(piece), *serve])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    pieces = (MIB, 256 * 1024, 64 * 1024)
    times: dict[int, list[float]] = {piece: [] for piece in pieces}
    with tempfile.TemporaryDirectory(prefix="bench-pieces-") as temp:
        workload = make_workload(Path(temp) / "air", [256 * MIB])
        path = f"/api/audio/{workload.run_id}/stems/stem_00000.wav"
        with contextlib.ExitStack() as services:
            urls = {
                piece: services.enter_context(service_with_piece(workload.config, piece)) + path
                for piece in pieces
            }
            for url in urls.values():
                curl(url)  # warm the page cache and the services
            for _ in range(arguments.rounds):
                for piece, url in urls.items():
                    fetch = curl(url)
                    assert fetch.size == 256 * MIB
                    times[piece].append(fetch.seconds)
    rows = [
        [
            f"{piece // 1024} KiB pieces" + _NOTES.get(piece, ""),
            f"{median(times[piece]) * 1000:.0f} ms",
            f"{256 / median(times[piece]):.0f} MiB/s",
        ]
        for piece in pieces
    ]
    print(table("One 256 MiB file URL, by sendfile piece size", rows, ["", "median", "rate"]))
    print(machine())


if __name__ == "__main__":
    main()
