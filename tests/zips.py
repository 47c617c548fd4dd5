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
