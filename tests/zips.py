"""Reading ZIPs back: with zipfile and stream-unzip (every time), and with
Info-ZIP's ``unzip``, 7-Zip, bsdtar and Java's ``ZipInputStream`` where installed."""

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


def unzip_test(data: bytes, folder: Path) -> None:
    """``unzip -t`` must accept the archive (skipped where unzip is absent)."""
    if shutil.which("unzip") is None:
        return
    path = folder / "check.zip"
    path.write_bytes(data)
    result = subprocess.run(["unzip", "-t", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Reader -> (command, whether the ZIP comes on standard input: read front to back).
READERS = {
    "unzip": (["unzip", "-q", "{zip}", "-d", "{out}"], False),
    "7z": (["7z", "x", "-y", "-bd", "-o{out}", "{zip}"], False),
    "bsdtar": (["bsdtar", "-x", "-f", "{zip}", "-C", "{out}"], False),
    "bsdtar from a pipe": (["bsdtar", "-x", "-f", "-", "-C", "{out}"], True),
}


def extract_with_every_reader(data: bytes, folder: Path) -> dict[str, dict[str, bytes]]:
    """Extract with each installed reader: reader -> {relative path: content}.
    Java's ``ZipInputStream`` reads it too where a JDK is installed."""
    archive = folder / "readers.zip"
    archive.write_bytes(data)
    results = {}
    for reader, (command, piped) in READERS.items():
        if shutil.which(command[0]) is None:
            continue
        out = folder / f"extract-{reader.replace(' ', '-')}"
        out.mkdir()
        arguments = [part.format(zip=archive, out=out) for part in command]
        with archive.open("rb") as stdin:
            result = subprocess.run(arguments, capture_output=True, stdin=stdin if piped else None)
        assert result.returncode == 0, (reader, result.stdout, result.stderr)
        results[reader] = {
            path.relative_to(out).as_posix(): path.read_bytes()
            for path in out.rglob("*")
            if path.is_file()
        }
    if shutil.which("javac") and shutil.which("java"):
        results["java ZipInputStream"] = java_read_zip(data, folder)
    return results


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
    into ``folder``. Skipped where no JDK is installed."""
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("no JDK (javac, java) is installed")
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
