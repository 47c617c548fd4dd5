"""Entry names (names.py): the sanitizing and allocation rules one by one, then
hostile names on disk end to end: valid JSON, and ZIPs every common reader opens."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.zip.names import ArcnameAllocator, sanitize_arcname
from tests.helpers import AirTree, write
from tests.zips import EXTRACTORS, extract_with, java_read_zip, read_zip

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


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("render/r/mix.wav", "render/r/mix.wav"),
        ("render/r/a\\b.wav", "render/r/a/b.wav"),
        ("render/r/..\\..\\etc\\passwd", "render/r/etc/passwd"),
        ("/abs/./x//y", "abs/x/y"),
        ("a\x00b/c\x1fd\x7f", "ab/cd"),
        ("x/.\x01./y", "x/y"),  # dropping the control character leaves '..'
        ("", "file"),
        ("./../..", "file"),
        ("ünï/cödé.wav", "ünï/cödé.wav"),
        ("render/r/CON.wav", "render/r/CON_.wav"),  # Windows device names
        ("render/nul/lpt9.tar.gz", "render/nul_/lpt9_.tar.gz"),
        ("render/r/aux", "render/r/aux_"),
        ("render/r/CONSOLE.wav", "render/r/CONSOLE.wav"),
        ("render/r/COM0.wav", "render/r/COM0.wav"),
        ("render/r/con_.wav", "render/r/con_.wav"),
    ],
)
def test_sanitize_arcname(name: str, expected: str) -> None:
    assert sanitize_arcname(name) == expected


def test_allocator_suffixes_before_the_extension_and_stays_unique() -> None:
    allocator = ArcnameAllocator()
    names = [
        "a.wav",
        "a.wav",
        "a__2.wav",
        "a.wav",
        "b",
        "b",
        "d.x/c",
        "d.x/c",
        ".hidden",
        ".hidden",
    ]
    assert [allocator.allocate(name) for name in names] == [
        "a.wav",
        "a__1.wav",
        "a__2.wav",
        "a__3.wav",
        "b",
        "b__1",
        "d.x/c",
        "d.x/c__1",
        ".hidden",
        ".hidden__1",
    ]


def test_names_equal_but_for_letter_case_are_taken() -> None:
    allocator = ArcnameAllocator()
    names = [
        "r/Take.wav",
        "r/take.wav",
        "r/TAKE.wav",
        "r/take__1.WAV",
        "r/Stems/a.wav",
        "r/stems/b.wav",
        "r/Stems/c.wav",
        "r/STEMS",  # a file named like a folder, in another case
        "r/stems__1/d.wav",  # a real folder named like a suffixed one
        "r/Café.wav",
        "r/cafe\u0301.WAV",  # the same name in NFD, which macOS treats as equal
    ]
    assert [allocator.allocate(name) for name in names] == [
        "r/Take.wav",
        "r/take__1.wav",
        "r/TAKE__2.wav",
        "r/take__1__1.WAV",
        "r/Stems/a.wav",
        "r/stems__1/b.wav",
        "r/Stems/c.wav",
        "r/STEMS__2",
        "r/stems__1__1/d.wav",
        "r/Café.wav",
        "r/cafe\u0301__1.WAV",
    ]


@pytest.mark.slow
def test_the_allocator_is_deterministic_and_handles_any_depth() -> None:
    deep = "/".join(["d"] * 5000) + "/x.wav"
    names = [deep, deep.upper(), "a/b.wav", "A/B.wav"]
    first = [ArcnameAllocator().allocate(name) for name in names]
    allocator = ArcnameAllocator()
    assert [allocator.allocate(name) for name in names] == [
        deep,
        "D__1/" + "/".join(["D"] * 4999) + "/X.WAV",
        "a/b.wav",
        "A__1/B.wav",
    ]
    assert first == names  # each name alone keeps its spelling


def test_allocating_a_files_folder_and_base_apart_is_allocating_its_full_sanitized_name() -> None:
    """allocate_file sanitizes a folder once and takes a plain base as it is;
    the names must be those of the full rules, in the same order."""
    names = [f"render/r/{name}" for name in HOSTILE]
    names += ["render/r/x/CON.wav", "render/r/x/con.wav", "render/r/x/a.wav.", "render/r/X/a.wav"]
    names += ["render/r/ünï/plain.wav", "render/r/a\\b/c.wav", "render/r/a/b/c.wav"]
    by_parts, whole = ArcnameAllocator(), ArcnameAllocator()
    for name in names:
        folder, _, base = name.rpartition("/")
        assert by_parts.allocate_file(folder, base) == whole.allocate(sanitize_arcname(name))


async def _hostile_zip(tree: AirTree, client: TestClient[Any, Any]) -> bytes:
    """The run ``r`` with every name of :data:`HOSTILE` (and one not UTF-8);
    its ZIP."""
    run = tree.render / "r"
    for name, content in HOSTILE.items():
        write(run / name, content)
    (run / "bytes\udcff\udcfe.wav").write_bytes(b"14")  # not UTF-8 on disk
    return await (await client.get("/api/air/export/zip/r")).read()


async def test_hostile_names_give_valid_json_and_safe_zip_names(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    body = await _hostile_zip(tree, client)
    response = await client.get("/api/air/export/list/r")
    assert response.status == 200
    manifest = json.loads(await response.read())
    assert len(manifest["files"]) == len(HOSTILE) + 1

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


@pytest.mark.parametrize("reader", [*EXTRACTORS, "java ZipInputStream"])
@pytest.mark.slow
async def test_every_reader_extracts_the_hostile_names_as_zipfile_reads_them(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path, reader: str
) -> None:
    """Each reader its own test: one that is not installed is a skip of its own."""
    body = await _hostile_zip(tree, client)
    if reader == "java ZipInputStream":
        extracted = java_read_zip(body, tmp_path)
    else:
        extracted = extract_with(reader, body, tmp_path)
    assert extracted == read_zip(body)
