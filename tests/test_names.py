"""Hostile names on disk: valid JSON, and ZIPs that every common reader opens."""

import json
import os
import re
from pathlib import Path
from shutil import which
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import AirTree, write
from tests.zips import extract_with_every_reader, read_zip

HOSTILE = {
    "new\nline.wav": b"1",
    "tab\there.wav": b"2",
    "bell\x07.wav": b"3",
    'win<>:"|?*.wav': b"4",
    "trailing dots...": b"5",
    "trailing space ": b"6",
    "x" * 240 + ".wav": b"7",
    "/".join(["deep"] * 30) + "/bottom.wav": b"8",
    "a\\b.wav": b"9",
    "a/b.wav": b"10",
    "clash": b"11",  # a file named like the folder below, once sanitized
    "clash./inner.wav": b"12",
    "ünïcødé ✓.wav": b"13",
    # Names equal but for letter case, which Windows and macOS extract as one.
    "Take.wav": b"15",
    "take.wav": b"16",
    "Stems/x.wav": b"17",
    "stems/y.wav": b"18",
}
_WINDOWS = re.compile(r'[<>:"|?*\x00-\x1f\x7f-\x9f]')


def _check_names(names: list[str]) -> None:
    """Unique, also ignoring letter case, and no file named like a folder."""
    folded = [name.casefold() for name in names]
    assert len(folded) == len(set(folded))
    folders = {"/".join(n.split("/")[:i]) for n in folded for i in range(1, n.count("/") + 1)}
    assert not folders & set(folded), "a file and a folder share a name"
    spelled = {"/".join(n.split("/")[:i]) for n in names for i in range(1, n.count("/") + 1)}
    assert len(spelled) == len(folders), "two folders differ only by letter case"
    for name in names:
        assert not name.startswith("/") and not _WINDOWS.search(name), name
        for segment in name.split("/"):
            assert segment not in {"", ".", ".."} and segment == segment.rstrip(". "), name


async def test_hostile_names_give_valid_json_and_zips_every_reader_opens(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    run = tree.render / "r"
    for name, content in HOSTILE.items():
        write(run / name, content)
    (run / "bytes\udcff\udcfe.wav").write_bytes(b"14")  # not UTF-8 on disk
    response = await client.get("/api/air/export/list/r")
    assert response.status == 200
    manifest = json.loads(await response.read())
    assert len(manifest["files"]) == len(HOSTILE) + 1

    body = await (await client.get("/api/air/export/zip/r")).read()
    entries = read_zip(body)
    _check_names(list(entries))
    assert sorted(entries.values()) == sorted([*HOSTILE.values(), b"14"])
    assert entries["render/r/clash"] == b"11"
    assert entries["render/r/clash__1/inner.wav"] == b"12"
    assert entries["render/r/win_______.wav"] == b"4"
    assert entries["render/r/a/b.wav"] == b"10" and entries["render/r/a/b__1.wav"] == b"9"
    assert entries["render/r/Take.wav"] == b"15" and entries["render/r/take__1.wav"] == b"16"
    assert entries["render/r/Stems/x.wav"] == b"17"
    assert entries["render/r/stems__1/y.wav"] == b"18"

    extracted = extract_with_every_reader(body, tmp_path)
    for reader, files in extracted.items():
        assert files == entries, reader
    if which("javac"):
        assert "java ZipInputStream" in extracted


def test_every_reader_is_installed_where_ci_installs_them() -> None:
    if os.environ.get("CI"):
        assert all(which(tool) for tool in ("unzip", "7z", "bsdtar", "javac", "java"))
