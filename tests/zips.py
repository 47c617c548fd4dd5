"""Reading ZIPs back: with zipfile, and with Info-ZIP's ``unzip -t`` where installed."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from pathlib import Path


def read_zip(data: bytes) -> dict[str, bytes]:
    """Entry name -> content, after checking every CRC."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


def unzip_test(data: bytes, folder: Path) -> None:
    """``unzip -t`` must accept the archive (skipped where unzip is absent)."""
    if shutil.which("unzip") is None:
        return
    path = folder / "check.zip"
    path.write_bytes(data)
    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


READERS = {
    "unzip": ["unzip", "-q", "{zip}", "-d", "{out}"],
    "7z": ["7z", "x", "-y", "-bd", "-o{out}", "{zip}"],
    "bsdtar": ["bsdtar", "-x", "-f", "{zip}", "-C", "{out}"],
}


def extract_with_every_reader(data: bytes, folder: Path) -> dict[str, dict[str, bytes]]:
    """Extract with each installed reader: reader -> {relative path: content}."""
    archive = folder / "readers.zip"
    archive.write_bytes(data)
    results = {}
    for reader, command in READERS.items():
        if shutil.which(command[0]) is None:
            continue
        out = folder / f"extract-{reader}"
        out.mkdir()
        arguments = [part.format(zip=archive, out=out) for part in command]
        result = subprocess.run(arguments, capture_output=True)
        assert result.returncode == 0, (reader, result.stdout, result.stderr)
        results[reader] = {
            path.relative_to(out).as_posix(): path.read_bytes()
            for path in out.rglob("*")
            if path.is_file()
        }
    return results
