import calendar
import io
import os
import struct
import time
import zipfile
from pathlib import Path

import pytest

from export_service.archive import (
    ArcnameAllocator,
    ExportArchive,
    plan_export_archive,
    sanitize_arcname,
)
from export_service.errors import SourceChanged
from export_service.manifest import ExportSources, build_export
from tests.conftest import AirTree, open_paths_under, write
from tests.zips import read_zip, unzip_test


def _plan(tree: AirTree, run_id: str = "r", chunk: int = 1 << 20) -> ExportArchive:
    settings = tree.settings(limits={"read_chunk_bytes": max(chunk, 4096)})
    return plan_export_archive(ExportSources.from_settings(settings), run_id, None)


def _body(archive: ExportArchive) -> bytes:
    return b"".join(archive.chunks())


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


def test_archive_holds_the_manifest_files_in_order(tree: AirTree, tmp_path: Path) -> None:
    write(tree.render / "r" / "mix.wav", b"M" * 5000)
    write(tree.render / "r" / "a\\b.wav", b"1")
    write(tree.render / "r" / "a" / "b.wav", b"2")
    write(tree.render / "r" / "empty.txt")
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    archive = _plan(tree, chunk=4096)
    body = _body(archive)
    assert len(body) == archive.size
    assert list(read_zip(body).items()) == [
        ("midi_generation/20261101_r/t.mid", b"MThd"),
        ("render/r/a/b.wav", b"2"),
        ("render/r/a/b__1.wav", b"1"),
        ("render/r/empty.txt", b""),
        ("render/r/mix.wav", b"M" * 5000),
    ]
    unzip_test(body, tmp_path)


def test_entries_are_stored_and_stamped_with_utc_mtime_whatever_the_timezone(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the two zipstream-ng hooks archive.py relies on (see its docstring)."""
    mtime = calendar.timegm((2001, 2, 3, 4, 5, 6))
    write(tree.render / "r" / "a.wav", b"a", mtime=mtime)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        body = _body(_plan(tree))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        (info,) = archive.infolist()
    assert info.compress_type == zipfile.ZIP_STORED
    assert info.date_time == (2001, 2, 3, 4, 5, 6)
    dos_time, dos_date = struct.unpack_from("<HH", body, info.header_offset + 10)
    assert (dos_date, dos_time) == ((2001 - 1980) << 9 | 2 << 5 | 3, 4 << 11 | 5 << 5 | 6 // 2)


def test_same_files_give_the_same_bytes(tree: AirTree) -> None:
    write(tree.render / "r" / "a.wav", b"a" * 100)
    assert _body(_plan(tree)) == _body(_plan(tree))


def test_a_file_gone_between_the_scan_and_planning_is_left_out(tree: AirTree) -> None:
    write(tree.render / "r" / "good.wav", b"g")
    bad = write(tree.render / "r" / "bad.wav", b"b")
    settings = tree.settings()
    from export_service.archive import plan_archive

    export = build_export(ExportSources.from_settings(settings), "r", None)
    bad.unlink()
    archive = plan_archive(
        export.files,
        {"render": str(tree.render.resolve()), "midi_generation": "", "param_generation": ""},
        4096,
    )
    assert archive.skipped == ["render/r/bad.wav"]
    assert read_zip(_body(archive)) == {"render/r/good.wav": b"g"}


@pytest.mark.parametrize(
    "change", ["truncate", "grow", "replace", "delete", "symlink_out", "fifo", "folder_out"]
)
@pytest.mark.parametrize("chunk", [4096, 1 << 20], ids=["read_in_chunks", "read_in_one"])
def test_a_file_that_changes_after_planning_fails_the_stream(
    tree: AirTree, change: str, chunk: int
) -> None:
    path = write(tree.render / "r" / "big.wav", b"x" * 20000)
    archive = _plan(tree, chunk=chunk)
    chunks = archive.chunks()
    if change == "truncate":
        path.write_bytes(b"x" * 10)
    elif change == "grow":
        with path.open("ab") as handle:
            handle.write(b"more")
    elif change == "replace":
        path.unlink()
        write(path, b"y" * 20000, mtime=1_000_000_000)
    elif change == "delete":
        path.unlink()
    elif change == "fifo":
        path.unlink()
        os.mkfifo(path)  # must not hang the reader
    elif change == "folder_out":
        # The run folder swapped for a link to a folder outside the root that
        # holds a file of the same name.
        outside = tree.base / "outside"
        write(outside / "big.wav", b"x" * 20000)
        path.parent.rename(tree.base / "moved")
        path.parent.symlink_to(outside)
    else:
        path.unlink()
        path.symlink_to(tree.canary)
    with pytest.raises(SourceChanged):
        for _ in chunks:
            pass


def test_an_empty_file_is_checked_too(tree: AirTree) -> None:
    path = write(tree.render / "r" / "empty.wav")
    chunks = _plan(tree).chunks()
    path.unlink()
    path.symlink_to(tree.canary)
    with pytest.raises(SourceChanged):
        for _ in chunks:
            pass


def test_a_file_truncated_mid_read_fails_the_stream(tree: AirTree) -> None:
    path = write(tree.render / "r" / "big.wav", b"x" * 40000)
    chunks = _plan(tree, chunk=4096).chunks()
    sent = next(chunks) + next(chunks)  # local header, first 4 KiB
    assert sent
    os.truncate(path, 5000)
    with pytest.raises(SourceChanged, match="shrank"):
        for _ in chunks:
            pass


def test_closing_the_stream_closes_the_open_file(tree: AirTree) -> None:
    path = write(tree.render / "r" / "big.wav", b"x" * 40000)
    chunks = _plan(tree, chunk=4096).chunks()
    next(chunks)
    next(chunks)

    assert str(path.resolve()) in open_paths_under(tree.base)
    chunks.close()
    assert str(path.resolve()) not in open_paths_under(tree.base)


def test_zipstream_still_has_the_hooks_the_archive_feeds(tree: AirTree) -> None:
    """Guards how archive.py drives zipstream-ng: entries queued with
    ``_enqueue`` are sized by it and written by ``_gen_file_entry(**kwargs)``;
    a CRC computed over many chunks (ISA-L's) is the file's zlib CRC."""
    import inspect
    import zlib

    from isal import isal_zlib
    from zipstream import ZipStream

    import export_service.archive

    assert vars(export_service.archive)["crc32"] is isal_zlib.crc32  # 6x zlib's (bench/crc32.py)
    assert "self._add_size_from_file(" in inspect.getsource(ZipStream._enqueue)
    assert "self._gen_file_entry(**kwargs)" in inspect.getsource(ZipStream.file)
    content = os.urandom(3 * 1024 * 1024 + 7)
    write(tree.render / "r" / "a.wav", content)
    archive = _plan(tree, chunk=65536)
    body = _body(archive)
    assert len(body) == archive.size
    with zipfile.ZipFile(io.BytesIO(body)) as opened:
        stored_crc = opened.getinfo("render/r/a.wav").CRC
    assert stored_crc == zlib.crc32(content)
    assert read_zip(body)["render/r/a.wav"] == content
