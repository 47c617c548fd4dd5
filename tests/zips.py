"""Reading ZIPs back: with zipfile and stream-unzip (every time: both come
with Python and the dev extra), and with Info-ZIP's ``unzip``, 7-Zip, bsdtar
and Java's ``ZipInputStream``, system tools that .ci/run installs where it can.

A test that needs one of those and does not find it is skipped, saying
``<reader> not installed`` (pytest -ra lists it), never passed without the
check: so a test calls its reader last, after every check it makes alone.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from stream_unzip import stream_unzip


def read_zip(data: bytes) -> dict[str, bytes]:
    """Entry name -> content, after checking every CRC; the same entries read
    front to back by a streaming reader (stream-unzip), which needs each CRC
    and size in the local header."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    assert stream_read_zip(data) == entries
    return entries


def stream_read_zip(data: bytes, piece: int = 65536) -> dict[str, bytes]:
    """Entry name -> content, read by stream-unzip from pieces of ``piece`` bytes."""
    pieces = (data[i : i + piece] for i in range(0, len(data), piece))
    return {name.decode(): b"".join(chunks) for name, _, chunks in stream_unzip(pieces)}


# Reader -> the commands it needs.
_TOOLS = {"unzip": ["unzip"], "7z": ["7z"], "bsdtar": ["bsdtar"], "java": ["javac", "java"]}


def require(reader: str) -> None:
    """Skip the test, visibly, when ``reader`` is not installed."""
    if any(shutil.which(command) is None for command in _TOOLS[reader]):
        pytest.skip(f"{reader} not installed")


def unzip_test(data: bytes, folder: Path) -> None:
    """``unzip -t`` must accept the archive."""
    require("unzip")
    path = folder / "check.zip"
    path.write_bytes(data)
    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Reader -> (command, whether the ZIP comes on standard input: read front to back).
EXTRACTORS = {
    "unzip": (["unzip", "-q", "{zip}", "-d", "{out}"], False),
    "7z": (["7z", "x", "-y", "-bd", "-o{out}", "{zip}"], False),
    "bsdtar": (["bsdtar", "-x", "-f", "{zip}", "-C", "{out}"], False),
    "bsdtar from a pipe": (["bsdtar", "-x", "-f", "-", "-C", "{out}"], True),
}


def extract_with(extractor: str, data: bytes, folder: Path) -> dict[str, bytes]:
    """Extract with one of :data:`EXTRACTORS`: {relative path: content}."""
    command, piped = EXTRACTORS[extractor]
    require(command[0])
    archive = folder / "readers.zip"
    archive.write_bytes(data)
    out = folder / f"extract-{extractor.replace(' ', '-')}"
    out.mkdir()
    arguments = [part.format(zip=archive, out=out) for part in command]
    with archive.open("rb") as stdin:
        result = subprocess.run(arguments, capture_output=True, stdin=stdin if piped else None)
    assert result.returncode == 0, (extractor, result.stdout, result.stderr)
    return {
        path.relative_to(out).as_posix(): path.read_bytes()
        for path in out.rglob("*")
        if path.is_file()
    }


_JAVA_READER = """
import java.io.*;
import java.util.Base64;
import java.util.zip.*;

public class ReadZip {
    public static void main(String[] args) throws IOException {
        Base64.Encoder b64 = Base64.getEncoder();
        PrintStream out = new PrintStream(System.out, false, "UTF-8");
        try (ZipInputStream zip = new ZipInputStream(new BufferedInputStream(System.in))) {
            ZipEntry entry;
            while ((entry = zip.getNextEntry()) != null) {
                byte[] data = zip.readAllBytes();
                out.println(b64.encodeToString(entry.getName().getBytes("UTF-8")) + " "
                    + b64.encodeToString(data));
            }
        }
        out.flush();
    }
}
"""


def java_read_zip(data: bytes, folder: Path) -> dict[str, bytes]:
    """Entry name -> content, as Java's ``java.util.zip.ZipInputStream`` reads
    the ZIP from standard input (what ``jar x`` does); a tiny reader compiled
    into ``folder``."""
    require("java")
    classes = folder / "java-reader"
    if not (classes / "ReadZip.class").exists():
        classes.mkdir(exist_ok=True)
        (classes / "ReadZip.java").write_text(_JAVA_READER)
        subprocess.run(["javac", "-d", str(classes), str(classes / "ReadZip.java")], check=True)
    result = subprocess.run(
        ["java", "-cp", str(classes), "ReadZip"], input=data, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    entries = {}
    for line in result.stdout.decode().splitlines():
        name, _, content = line.partition(" ")
        entries[base64.b64decode(name).decode()] = base64.b64decode(content)
    return entries
