import calendar
import io
import os
import stat
import struct
import subprocess
import threading
import time
import zipfile
import zlib
from pathlib import Path

import pytest

import export_service.zip.crcs as crcs_module
from export_service.errors import SourceChanged
from export_service.exports import Services, build_export, plan_export_archive
from export_service.zip.archive import ExportArchive
from export_service.zip.crcs import CrcCache
from export_service.zip.names import ArcnameAllocator, sanitize_arcname
from export_service.zip.plan import PlannedEntry, footer_size
from export_service.zip.records import footer
from tests.helpers import AirTree, open_paths_under, rewrite_in_place, write
from tests.zips import java_read_zip, read_zip, require, unzip_test


def _plan(tree: AirTree, run_id: str = "r", chunk: int = 1 << 20) -> ExportArchive:
    settings = tree.settings(limits={"read_chunk_bytes": max(chunk, 4096)})
    return plan_export_archive(Services.from_settings(settings), run_id, None)


def _body(archive: ExportArchive) -> bytes:
    return b"".join(archive.chunks())


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
    from export_service.zip.archive import plan_archive

    export = build_export(Services.from_settings(settings), "r", None)
    bad.unlink()
    archive = plan_archive(
        export.drain_files(),
        {"render": str(tree.render.resolve()), "midi_generation": "", "param_generation": ""},
        4096,
    )
    assert archive.skipped == {"render/r/bad.wav": "cannot be opened"}
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


def test_isal_computes_the_crcs() -> None:
    """ISA-L's CRC-32 runs about 6x zlib's (bench/crc32.py); a silent return to
    zlib's would cost the first download of every big file a slower pass."""
    from isal import isal_zlib

    import export_service.zip.archive

    assert crcs_module.crc32 is isal_zlib.crc32  # the passes'
    assert vars(export_service.zip.archive)["crc32"] is isal_zlib.crc32  # the sends'


def _local_headers(body: bytes) -> list[tuple[int, int, int, int, str, int]]:
    """(flags, crc, compressed size, size, name, data offset) of each local
    header, walked front to back as a streaming reader does."""
    headers = []
    offset = 0
    while body[offset : offset + 4] == b"PK\x03\x04":
        flags, _, _, _, crc, compressed, size, name_length, extra_length = struct.unpack_from(
            "<HHHHIIIHH", body, offset + 6
        )
        name = body[offset + 30 : offset + 30 + name_length].decode()
        data = offset + 30 + name_length + extra_length
        headers.append((flags, crc, compressed, size, name, data))
        offset = data + size  # no data descriptor after the data
    assert body[offset : offset + 4] == b"PK\x01\x02", "the central directory follows the data"
    return headers


@pytest.mark.slow
def test_local_headers_carry_crc_and_sizes_and_there_is_no_data_descriptor(
    tree: AirTree, tmp_path: Path
) -> None:
    contents = {
        "render/r/a.wav": os.urandom(3 * 65536 + 7),  # several chunks: a CRC pass first
        "render/r/b.wav": b"small",
        "render/r/empty.txt": b"",
        "render/r/ünï.wav": os.urandom(70_000),
    }
    for name, content in contents.items():
        write(tree.base / name.replace("render/", "render/output/", 1), content)
    body = _body(_plan(tree, chunk=65536))
    headers = _local_headers(body)
    assert [name for *_, name, _ in headers] == list(contents)
    for flags, crc, compressed, size, name, _ in headers:
        assert not flags & 0x08, name  # no data descriptor
        assert (crc, compressed, size) == (
            zlib.crc32(contents[name]),
            len(contents[name]),
            len(contents[name]),
        )
    assert read_zip(body) == contents  # zipfile, and stream-unzip front to back
    assert java_read_zip(body, tmp_path) == contents  # java.util.zip.ZipInputStream


def test_zipstreams_private_footer_inputs() -> None:
    """The guard of the two private names of zipstream-ng that records.py
    sets for ``ZipStream.footer()`` (it has no public way in for entries it
    did not write: records.py's docstring): ``_filelist`` (the entries) and
    ``_pos`` (where the directory starts, here past 4 GiB so that the ZIP64
    end records must carry it). Read back from the bytes, not from
    zipstream-ng's source: a release that renames either writes an empty
    directory, or one at offset 0, and fails here by name. The footer's
    length is also the one plan.py lays out."""
    entries = [
        PlannedEntry(name, name, "", "", size, 0, 0, 0, 0, (1980, 1, 1, 0, 0, 0), header, 0)
        for name, size, header in (
            ("render/r/a.wav", 10, 0),
            ("render/r/ü.wav", 0, 1000),
            ("render/r/far.wav", 3, 5 << 30),  # its header offset in a ZIP64 extra field
        )
    ]
    offset = 6 << 30
    written = b"".join(footer(entries, [1, 2, 3], offset))
    assert written[-22:-18] == b"PK\x05\x06"
    count, _, directory_offset = struct.unpack_from("<HII", written, len(written) - 12)
    assert count == len(entries), "zipstream-ng's footer no longer lists ZipStream._filelist"
    assert directory_offset == 0xFFFFFFFF, "zipstream-ng's footer no longer starts at _pos"
    assert len(written) == footer_size(entries, offset)
    (zip64_end,) = struct.unpack_from("<Q", written, len(written) - 22 - 20 + 8)
    signature, _, _, _, _, _, _, count, size, start = struct.unpack(
        "<4sQHHLLQQQQ", written[zip64_end - offset : zip64_end - offset + 56]
    )
    assert signature == b"PK\x06\x06"
    assert count == len(entries), "zipstream-ng's footer no longer lists ZipStream._filelist"
    assert start == offset, "zipstream-ng's footer no longer starts at ZipStream._pos"
    assert zip64_end == offset + size
    at = 0
    for entry, crc in zip(entries, [1, 2, 3], strict=True):
        assert written[at : at + 4] == b"PK\x01\x02"
        (written_crc,) = struct.unpack_from("<I", written, at + 16)
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", written, at + 28)
        (header_offset,) = struct.unpack_from("<I", written, at + 42)
        assert written[at + 46 : at + 46 + name_length].decode() == entry.arcname
        assert written_crc == crc
        if entry.header_offset > 0xFFFFFFFF:
            assert header_offset == 0xFFFFFFFF
            extra = written[at + 46 + name_length : at + 46 + name_length + extra_length]
            assert struct.unpack("<HHQ", extra) == (1, 8, entry.header_offset)
        else:
            assert header_offset == entry.header_offset
        at += 46 + name_length + extra_length + comment_length
    assert at == size


def test_zipstreams_footer_is_fed_the_right_entries_and_offset(tree: AirTree) -> None:
    """The same guard on a planned archive: ``_pos`` (where the central
    directory starts) and ``_filelist`` (the entries it lists, with their
    local header offsets), read back from the bytes of a download."""
    for index in range(5):
        write(tree.render / "r" / f"{index}.wav", os.urandom(1000 * index))
    archive = _plan(tree, chunk=4096)
    body = _body(archive)
    assert len(body) == archive.size
    entries, directory_size, directory_offset = struct.unpack_from("<HII", body, len(body) - 12)
    assert body.index(b"PK\x01\x02") == directory_offset  # zipfile would hide a shift
    assert directory_offset + directory_size + 22 == len(body)
    assert entries == 5
    offset = directory_offset
    for planned in archive.entries:
        assert body[offset : offset + 4] == b"PK\x01\x02"
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", body, offset + 28)
        header_offset = struct.unpack_from("<I", body, offset + 42)[0]
        assert body[offset + 46 : offset + 46 + name_length].decode() == planned.arcname
        assert header_offset == planned.header_offset
        assert body[header_offset : header_offset + 4] == b"PK\x03\x04"
        offset += 46 + name_length + extra_length + comment_length


def test_extracted_files_are_readable_by_everyone(tree: AirTree, tmp_path: Path) -> None:
    write(tree.render / "r" / "stems" / "a.wav", b"a")
    body = _body(_plan(tree))
    with zipfile.ZipFile(io.BytesIO(body)) as opened:
        (info,) = opened.infolist()
    assert info.create_system == 3  # Unix
    assert info.external_attr >> 16 == stat.S_IFREG | 0o644
    require("unzip")
    (tmp_path / "export.zip").write_bytes(body)
    out = tmp_path / "out"
    subprocess.run(["unzip", "-q", str(tmp_path / "export.zip"), "-d", str(out)], check=True)
    extracted = out / "render" / "r" / "stems" / "a.wav"
    assert stat.filemode(extracted.stat().st_mode) == "-rw-r--r--"


def test_the_bytes_do_not_depend_on_what_the_crc_cache_holds(tree: AirTree) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(300_000))
    write(tree.render / "r" / "small.wav", b"s" * 100)
    settings = tree.settings(limits={"read_chunk_bytes": 65536})
    services = Services.from_settings(settings)
    crcs = CrcCache()
    cold = _body(plan_export_archive(services, "r", None, crcs))
    warm = _body(plan_export_archive(services, "r", None, crcs))
    none = _body(plan_export_archive(services, "r", None))
    assert cold == warm == none


def test_a_rewrite_that_restores_the_mtime_is_another_version(tree: AirTree) -> None:
    """Issue 22: a file rewritten in place at the same size with its exact
    mtime restored kept the ZIP's ETag and its CRC cache key, so a resume
    spliced two versions and the cache handed out the old CRC (every later
    ZIP was cut). Its ctime moved: it is another version everywhere."""
    path = write(tree.render / "r" / "big.wav", b"a" * 300_000)
    settings = tree.settings(limits={"read_chunk_bytes": 65536})
    services = Services.from_settings(settings)
    crcs = CrcCache()
    first = plan_export_archive(services, "r", None, crcs)
    chunks = first.chunks()
    header = next(chunks)  # the CRC pass is over: the header says CRC("a" * 300000)
    assert struct.unpack_from("<I", header, 14)[0] == zlib.crc32(b"a" * 300_000)
    rewrite_in_place(path, b"b" * 300_000)
    with pytest.raises(SourceChanged, match="modified"):  # by its stat, not by the CRC
        for _ in chunks:
            pass
    second = plan_export_archive(services, "r", None, crcs)
    assert second.etag != first.etag and second.size == first.size
    assert read_zip(_body(second)) == {"render/r/big.wav": b"b" * 300_000}
    # The cache holds the CRC of b now; a rewrite keyed the same but for the
    # ctime misses it: the next ZIP learns the new CRC, it is not cut.
    rewrite_in_place(path, b"c" * 300_000)
    third = plan_export_archive(services, "r", None, crcs)
    assert third.etag not in (first.etag, second.etag)
    assert read_zip(_body(third)) == {"render/r/big.wav": b"c" * 300_000}


def test_a_crc_that_does_not_match_the_data_sent_cuts_the_download(tree: AirTree) -> None:
    """The last defence, for a file system whose ctime would not move: the
    data sent is checked against the CRC its header said (here a cache that
    holds a wrong one for the very snapshot); the download is cut and the
    CRC dropped."""
    write(tree.render / "r" / "big.wav", b"a" * 300_000)
    settings = tree.settings(limits={"read_chunk_bytes": 65536})
    services = Services.from_settings(settings)
    crcs = CrcCache()
    archive = plan_export_archive(services, "r", None, crcs)
    crcs.put(archive.entries[0].snapshot, zlib.crc32(b"b" * 300_000))
    with pytest.raises(SourceChanged, match="CRC-32"):
        _body(archive)
    assert read_zip(_body(plan_export_archive(services, "r", None, crcs))) == {
        "render/r/big.wav": b"a" * 300_000
    }


def test_planned_names_are_the_allocators_for_the_full_sanitized_names(tree: AirTree) -> None:
    """Planning sanitizes a folder once and a plain base name alone; the names
    must be those of sanitizing and allocating each full name in order."""
    from tests.test_entry_names import HOSTILE

    for name, content in HOSTILE.items():
        write(tree.render / "r" / name, content)
    for name in ("stems/a.wav", "stems/A.wav", "stems/a.wav.", "Stems/b.wav", "x/CON.wav"):
        write(tree.render / "r" / name, b"x")
    settings = tree.settings()
    export = build_export(Services.from_settings(settings), "r", None)
    archive = _plan(tree)
    allocator = ArcnameAllocator()
    expected = [
        allocator.allocate(sanitize_arcname(f"{item.step}/{item.rel_path}"))
        for item in export.drain_files()
    ]
    assert [entry.arcname for entry in archive.entries] == expected


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk space."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
    return path


@pytest.mark.parametrize("start", [0, "central directory"])
def test_a_crc_pass_goes_in_steps_and_stops_when_its_download_ends(
    tree: AirTree, start: int | str
) -> None:
    """A file bigger than one read, uncached, is read once for its CRC before
    its header (or, for a range reaching the central directory, once for the
    directory): that pass yields an empty step every PASS_SLICE bytes rather
    than holding the thread to the end, and once its download has ended
    (``cancelled`` set) it stops between two chunks and closes the file."""
    size = 6 * crcs_module.PASS_SLICE
    big = _sparse(tree.render / "r" / "big.wav", size)
    archive = _plan(tree)
    first = archive.size - 10 if start == "central directory" else 0
    cancelled = threading.Event()
    chunks = archive.chunks(first, None, cancelled)
    # two slices into the pass, nothing to send yet
    assert [next(chunks), next(chunks)] == [crcs_module.PASS_STEP] * 2
    assert str(big.resolve()) in open_paths_under(tree.base)
    cancelled.set()
    with pytest.raises(crcs_module.PassCancelled):
        next(chunks)
    assert open_paths_under(tree.base) == []
    # Not cancelled, the same pass runs to the end in steps, and the bytes are the ZIP's.
    pieces = list(_plan(tree).chunks(first))
    assert pieces.count(crcs_module.PASS_STEP) == size // crcs_module.PASS_SLICE
    assert b"".join(pieces) == b"".join(_plan(tree).chunks())[first:]
