"""CRC-32 speeds: zlib's (zipstream-ng's default) against ISA-L's, which
export_service/zip/crcs.py uses for every CRC of the ZIP path.

    python bench/crc32.py
"""

from __future__ import annotations

import os
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isal import isal_zlib

from bench.harness import MIB, machine, table

Crc = Callable[[bytes, int], int]


def speed(function: Crc, chunks: list[bytes]) -> float:
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        crc = 0
        for chunk in chunks:
            crc = function(chunk, crc)
        best = min(best, time.perf_counter() - started)
    return sum(map(len, chunks)) / best


def main() -> None:
    data = os.urandom(64 * MIB)
    chunks = [data[start : start + MIB] for start in range(0, len(data), MIB)]
    assert zlib.crc32(data) == isal_zlib.crc32(data)
    zlib_speed, isal_speed = speed(zlib.crc32, chunks), speed(isal_zlib.crc32, chunks)
    rows = [
        ["zlib.crc32", f"{zlib_speed / 1e9:.1f} GB/s", ""],
        ["isal_zlib.crc32", f"{isal_speed / 1e9:.1f} GB/s", f"{isal_speed / zlib_speed:.1f}x"],
    ]
    print(table(f"CRC-32 over 1 MiB chunks ({machine()})", rows, ["function", "speed", "ratio"]))


if __name__ == "__main__":
    main()
