"""Ranges of a ZIP: every slice equals the same slice of the full download."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import pytest

import export_service.archive as archive_module
from export_service.archive import CrcCache, ExportArchive, plan_export_archive
from export_service.manifest import ExportSources
from tests.conftest import AirTree, write


def _archive(tree: AirTree, crcs: CrcCache | None = None) -> ExportArchive:
    sources = ExportSources.from_settings(tree.settings(limits={"read_chunk_bytes": 65536}))
    return plan_export_archive(sources, "r", None, crcs)


def _populate(tree: AirTree) -> None:
    write(tree.render / "r" / "a.wav", os.urandom(300_000), mtime=1_700_000_000)
    write(tree.render / "r" / "empty.txt", b"", mtime=1_700_000_001)
    write(tree.render / "r" / "ünï b.wav", os.urandom(70_000), mtime=1_700_000_002)
    write(tree.render / "r" / "z.wav", os.urandom(200_000), mtime=1_700_000_003)


def _offsets(full: bytes) -> dict[str, int]:
    with zipfile.ZipFile(io.BytesIO(full)) as archive:
        infos = archive.infolist()
    second = next(info for info in infos if not info.filename.isascii())  # a UTF-8 name
    name_length = len(second.filename.encode())
    data_start = second.header_offset + 30 + name_length
    data_end = data_start + second.file_size
    central = struct.unpack_from("<I", full, len(full) - 22 + 16)[0]
    return {
        "inside a local header": second.header_offset + 7,
        "first byte of file data": data_start,
        "inside file data": data_start + 1000,
        "inside a data descriptor": data_end + 5,
        "inside the central directory": central + 20,
        "last byte": len(full) - 1,
        "first byte": 0,
    }


@pytest.mark.parametrize("cache", [False, True])
def test_every_slice_equals_the_full_downloads_slice(tree: AirTree, cache: bool) -> None:
    _populate(tree)
    crcs = CrcCache() if cache else None
    full = b"".join(_archive(tree, crcs).chunks())
    for where, start in _offsets(full).items():
        for end in (start, min(start + 100, len(full) - 1), len(full) - 1):
            part = b"".join(_archive(tree, crcs).chunks(start, end))
            assert part == full[start : end + 1], (where, start, end)


def test_a_warm_cache_reads_nothing_before_the_offset(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(tree)
    learned: list[str] = []
    real_file_crc = archive_module._file_crc

    def counting_file_crc(entry: archive_module.PlannedEntry, chunk_bytes: int) -> int:
        learned.append(entry.arcname)
        return real_file_crc(entry, chunk_bytes)

    monkeypatch.setattr(archive_module, "_file_crc", counting_file_crc)
    cold = CrcCache()
    full = _archive(tree).chunks()
    body = b"".join(full)
    middle = len(body) - 150_000  # inside z.wav: a.wav and empty.txt lie before it
    assert b"".join(_archive(tree, cold).chunks(middle)) == body[middle:]
    assert learned == ["render/r/a.wav", "render/r/empty.txt"]  # read once, to learn CRCs...
    learned.clear()
    assert b"".join(_archive(tree, cold).chunks(middle)) == body[middle:]
    assert learned == []  # ...the second reads none of them
    warm = CrcCache()
    assert b"".join(_archive(tree, warm).chunks()) == body  # a full download fills it
    assert b"".join(_archive(tree, warm).chunks(middle)) == body[middle:]
    assert learned == []


def test_same_files_same_etag_and_bytes_and_a_touch_changes_the_etag(tree: AirTree) -> None:
    _populate(tree)
    first, second = _archive(tree), _archive(tree)
    assert first.etag == second.etag and first.etag.startswith('"')
    assert b"".join(first.chunks()) == b"".join(second.chunks())
    os.utime(tree.render / "r" / "z.wav", (1_800_000_000, 1_800_000_000))
    assert _archive(tree).etag != first.etag


def test_bytes_do_not_depend_on_the_timezone(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    _populate(tree)
    utc = b"".join(_archive(tree).chunks())
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        assert b"".join(_archive(tree).chunks()) == utc
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_file_changed_before_a_resume_fails_it(tree: AirTree, tmp_path: Path) -> None:
    _populate(tree)
    archive = _archive(tree)
    middle = archive.size // 2
    os.truncate(tree.render / "r" / "a.wav", 10)
    with pytest.raises(archive_module.SourceChanged):
        b"".join(archive.chunks(middle))
