"""Range requests: which bytes a Range header asks for, If-Range and HTTP
dates; then ranges of a ZIP, every slice equal to the same slice of the full
download. (A file URL's ranges: tests/test_file_urls.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import struct
import threading
import zipfile
from collections.abc import Generator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

import export_service.zip.crcs as crcs_module
import export_service.zip.plan as plan_module
from export_service.core.safe_files import FolderFiles
from export_service.errors import RangeNotSatisfiable, SourceChanged
from export_service.exports import Services, plan_export_archive
from export_service.http.byte_ranges import http_date, requested_range
from export_service.zip.archive import ExportArchive
from export_service.zip.crcs import CrcCache
from tests.helpers import AirTree, rewrite_in_place, write
from tests.zips import EXTRACTORS, extract_with, java_read_zip, read_zip, unzip_test

SIZE = 10_240
ETAG = '"v1"'
MODIFIED = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
MODIFIED_TEXT = "Tue, 14 Nov 2023 22:13:20 GMT"


def _range(header: str | None, if_range: str | None = None) -> tuple[int, int] | None:
    return requested_range(header, if_range, SIZE, ETAG)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=-10", (10230, 10239)),  # the last ten
        ("bytes=-99999", (0, 10239)),  # more than there is: all of it
        ("bytes=10000-", (10000, 10239)),
        ("bytes=10000-99999999", (10000, 10239)),  # the end is clipped
        ("bytes=10239-10239", (10239, 10239)),
        ("BYTES=1-2", (1, 2)),
        (" bytes=1-2 ", (1, 2)),
        ("bytes=0-" + "9" * 5000, (0, 10239)),  # no int of 5,000 digits is made
        ("bytes=-" + "9" * 5000, (0, 10239)),
        ("bytes=" + "0" * 5000 + "1-2", (1, 2)),
    ],
)
def test_one_range_is_its_first_and_last_byte(header: str, expected: tuple[int, int]) -> None:
    assert _range(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "items=0-1",  # another unit
        "bytes=0-1,5-6",  # several ranges: the whole body (RFC 9110 allows it)
        "bytes=5-1",  # last before first: invalid, ignored
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-2-3",
    ],
)
def test_what_is_no_single_byte_range_asks_for_the_whole_body(header: str | None) -> None:
    assert _range(header) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10240-10240", SIZE),  # starts at the end
        ("bytes=99999-", SIZE),
        ("bytes=" + "9" * 5000 + "-", SIZE),
        ("bytes=-0", SIZE),  # the last zero bytes
        ("bytes=-5", 0),  # an empty body has no last bytes
        ("bytes=0-", 0),
    ],
)
def test_a_range_outside_the_body_is_416_with_its_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as error:
        requested_range(header, None, size, ETAG, what="the file")
    assert error.value.status == 416
    assert error.value.headers == {"Content-Range": f"bytes */{size}"}
    assert error.value.message == f"the file has {size} bytes; the range asked for lies outside it"


@pytest.mark.parametrize(
    ("if_range", "served"),
    [
        (ETAG, True),
        (f" {ETAG} ", True),
        ('"v0"', False),  # another version: the whole body, not a splice
        ('W/"v1"', False),  # weak tags never match for ranges
        (MODIFIED_TEXT, False),  # a date never validates: see the last test
        ("Tue, 14 Nov 2023 22:13:19 GMT", False),
        ("not a date", False),
    ],
)
def test_if_range_serves_the_range_only_for_the_current_version(
    if_range: str, served: bool
) -> None:
    assert _range("bytes=0-9", if_range) == ((0, 9) if served else None)


def test_if_range_that_fails_ignores_even_an_unsatisfiable_range() -> None:
    assert _range("bytes=99999-", '"v0"') is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MODIFIED_TEXT, MODIFIED),
        ("Tuesday, 14-Nov-23 22:13:20 GMT", MODIFIED),  # RFC 850, obsolete but valid
        ("Tue Nov 14 22:13:20 2023", MODIFIED),  # asctime
        ("Tue, 14 Nov 2023 22:13:20 -0000", MODIFIED),  # naive: taken as UTC
        (
            "Tue, 14 Nov 2023 23:13:20 +0100",
            datetime(2023, 11, 14, 23, 13, 20, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_http_dates_are_aware(value: str, expected: datetime) -> None:
    date = http_date(value)
    assert date == expected and date.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "not a date",
        "Tue, 99 Nov 2023 99:99:99 GMT",
        "Mon, 1 Jan 99999999999 00:00:00 GMT",  # overflows
        "9" * 5000,
        MODIFIED_TEXT + " " * 60,  # longer than any date
        "\udcff",
    ],
)
def test_what_is_no_http_date_is_none(value: str | None) -> None:
    assert http_date(value) is None


def test_a_date_never_validates_a_range() -> None:
    """RFC 9110 13.1.5: a date in If-Range only for a strong Last-Modified,
    which no Last-Modified of this service is (a rename keeps the ZIP's, a
    restored mtime a file's): the whole body, never a range of what may be
    other bytes, whatever date is sent; the strong ETag validates."""
    for date in (MODIFIED_TEXT, "Tuesday, 14-Nov-23 22:13:20 GMT", "Tue Nov 14 22:13:20 2023"):
        assert requested_range("bytes=0-9", date, SIZE, ETAG) is None
    assert requested_range("bytes=0-9", ETAG, SIZE, ETAG) == (0, 9)


def _aiohttps_range(header: str) -> slice:
    return make_mocked_request("GET", "/", headers={"Range": header}).http_range


def test_aiohttps_parsed_range_answers_otherwise() -> None:
    """Why Range and If-Range are read here (byte_ranges' docstring): this
    fails once aiohttp's ``http_range`` and ``if_range`` give these answers."""
    assert _aiohttps_range("bytes=-0") == _aiohttps_range("bytes=0-")
    with pytest.raises(RangeNotSatisfiable):
        _range("bytes=-0")
    assert _range("bytes=0-") == (0, SIZE - 1)
    huge = "9" * 5000
    for header, ours in ((f"bytes={huge}-", None), (f"bytes=0-{huge}", (0, SIZE - 1))):
        with pytest.raises(ValueError):
            _aiohttps_range(header)
        with pytest.raises(RangeNotSatisfiable) if ours is None else contextlib.nullcontext():
            assert _range(header) == ours
    assert make_mocked_request("GET", "/", headers={"If-Range": ETAG}).if_range is None
    assert _range("bytes=0-9", ETAG) == (0, 9)


def _archive(tree: AirTree, crcs: CrcCache | None = None) -> ExportArchive:
    services = Services.from_settings(tree.settings(limits={"read_chunk_bytes": 65536}))
    return plan_export_archive(services, "r", None, crcs)


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
        "just after a file's data": data_end + 5,
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
    real_file_crc = crcs_module.file_crc

    def counting_file_crc(
        entry: plan_module.PlannedEntry,
        files: FolderFiles,
        chunk_bytes: int,
        cancelled: threading.Event | None,
    ) -> Generator[bytes, None, int]:
        learned.append(entry.arcname)
        return real_file_crc(entry, files, chunk_bytes, cancelled)

    body = b"".join(_archive(tree).chunks())
    monkeypatch.setattr(crcs_module, "file_crc", counting_file_crc)
    cold = CrcCache()
    middle = len(body) - 150_000  # inside z.wav
    assert b"".join(_archive(tree, cold).chunks(middle)) == body[middle:]
    # Each file read once to learn its CRC for the central directory...
    assert sorted(learned) == sorted(read_zip(body))
    learned.clear()
    assert b"".join(_archive(tree, cold).chunks(middle)) == body[middle:]
    assert learned == []  # ...the second resume reads none of them
    warm = CrcCache()
    assert b"".join(_archive(tree, warm).chunks()) == body  # a full download fills it
    assert learned == ["render/r/a.wav", "render/r/z.wav", "render/r/ünï b.wav"]  # > 1 chunk
    learned.clear()
    assert b"".join(_archive(tree, warm).chunks(middle)) == body[middle:]
    assert learned == []


def _bytes_read() -> int:
    """What this process has read through read(2) and friends (page cache included)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_resume_inside_a_file_whose_crc_is_known_reads_from_the_offset(
    tree: AirTree,
) -> None:
    content = os.urandom(8 * 1024 * 1024)
    write(tree.render / "r" / "big.wav", content)
    crcs = CrcCache()
    full = b"".join(_archive(tree, crcs).chunks())  # learns the CRC
    archive = _archive(tree, crcs)
    start = archive.entries[0].data_offset + len(content) * 9 // 10
    before = _bytes_read()
    part = b"".join(archive.chunks(start))
    read = _bytes_read() - before
    assert part == full[start:]
    assert len(content) // 10 - 65536 <= read < len(content) // 10 + 65536, read
    # A range inside the data that ends before the central directory needs no CRC at all.
    before = _bytes_read()
    assert b"".join(_archive(tree).chunks(start, start + 99)) == full[start : start + 100]
    assert _bytes_read() - before < 65536 * 2


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
    with pytest.raises(SourceChanged):
        b"".join(archive.chunks(middle))


async def _get(client: Any, path: str, **headers: str) -> tuple[int, Any, bytes]:
    response = await client.get(path, headers=headers)
    return response.status, response.headers, await response.read()


async def test_range_requests_over_http(tree: AirTree, client: Any) -> None:
    _populate(tree)
    url = "/api/air/export/zip/r"
    status, headers, full = await _get(client, url)
    size = len(full)
    assert status == 200 and headers["Accept-Ranges"] == "bytes"
    etag, last_modified = headers["ETag"], headers["Last-Modified"]
    cases = {
        "bytes=100-199": (100, 199),
        f"bytes={size - 30}-": (size - 30, size - 1),
        "bytes=-25": (size - 25, size - 1),
        f"bytes=0-{size + 500}": (0, size - 1),
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),
    }
    for header, (first, last) in cases.items():
        status, headers, body = await _get(client, url, Range=header)
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}"
        assert body == full[first : last + 1], header
        assert headers["ETag"] == etag
    for header in (f"bytes={size}-", "bytes=-0"):
        status, headers, body = await _get(client, url, Range=header)
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
        assert b'"range_not_satisfiable"' in body
    for header in ("bytes=0-9,20-29", "bytes=9-0", "items=0-9", "bytes=x-"):
        status, _, body = await _get(client, url, Range=header)
        assert status == 200 and body == full, header
    assert (await _get(client, url, **{"Range": "bytes=10-", "If-Range": etag}))[0] == 206
    # the ZIP's date is no strong validator (test_a_resume_by_date_never_splices)
    for stale in ('"something-else"', "W/" + etag, last_modified, "Sat, 01 Jan 2000 00:00:00 GMT"):
        status, _, body = await _get(client, url, **{"Range": "bytes=10-", "If-Range": stale})
        assert status == 200 and body == full, stale
    head = await client.head(url, headers={"Range": "bytes=100-199"})
    assert head.status == 206 and head.headers["Content-Length"] == "100"
    assert head.headers["Content-Range"] == f"bytes 100-199/{size}"
    assert await head.read() == b""
    os.utime(tree.render / "r" / "a.wav", (1_900_000_000, 1_900_000_000))
    _, headers, _ = await _get(client, url)
    assert headers["ETag"] != etag


async def test_curl_resumes_a_download_cut_in_the_middle(
    tree: AirTree, client: Any, tmp_path: Path
) -> None:
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    _populate(tree)
    url = str(client.make_url("/api/air/export/zip/r"))
    full = await (await client.get("/api/air/export/zip/r")).read()
    partial = tmp_path / "export_r.zip"
    partial.write_bytes(full[: len(full) // 2])  # what a dropped connection left
    result = await asyncio.to_thread(
        subprocess.run, ["curl", "-sS", "-C", "-", "-o", str(partial), url], capture_output=True
    )
    assert result.returncode == 0, result.stderr
    assert partial.read_bytes() == full
    unzip_test(partial.read_bytes(), tmp_path)


@pytest.mark.slow
async def test_curl_resumes_a_selected_zip_cut_in_the_middle(
    tree: AirTree, client: Any, tmp_path: Path
) -> None:
    """A selective export resumes as any ZIP does: cut, ``curl -C -`` with the
    selection's URL, the same bytes; every reader takes the result."""
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    _populate(tree)
    write(tree.render / "r" / "stems" / "drums.wav", os.urandom(150_000), mtime=1_700_000_004)
    write(tree.render / "r" / "stems" / "bass.wav", os.urandom(90_000), mtime=1_700_000_005)
    write(tree.midi / "r" / "stems" / "notes.mid", b"MThd", mtime=1_700_000_006)
    path = "/api/air/export/zip/r?steps=render&prefix=stems"
    answer = await client.get(path)
    assert (
        answer.headers["Content-Disposition"] == 'attachment; filename="export_r_render_stems.zip"'
    )
    full = await answer.read()
    partial = tmp_path / "export_r_render_stems.zip"
    partial.write_bytes(full[: len(full) // 2])  # what a dropped connection left
    result = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "-C", "-", "-o", str(partial), str(client.make_url(path))],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr
    resumed = partial.read_bytes()
    assert resumed == full
    expected = {
        "render/r/stems/bass.wav": (tree.render / "r" / "stems" / "bass.wav").read_bytes(),
        "render/r/stems/drums.wav": (tree.render / "r" / "stems" / "drums.wav").read_bytes(),
    }
    assert read_zip(resumed) == expected
    for extractor in EXTRACTORS:  # each skips the test, visibly, when not installed
        assert extract_with(extractor, resumed, tmp_path) == expected
    assert java_read_zip(resumed, tmp_path) == expected


@pytest.mark.slow
def test_zip64_records_scaled_down(
    tree: AirTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZIP64 (files or offsets over 4 GiB, over 65,535 entries) with the
    limits lowered to a few hundred KB and 3 entries, so every ZIP64 record
    the archive and its ranges depend on is written by a fast test: local
    headers with ZIP64 extra fields (read front to back by Java's
    ZipInputStream too), ZIP64 offsets in the central directory, and the ZIP64
    end records."""
    import zipstream.ng

    limit = 200_000
    monkeypatch.setattr(zipstream.ng, "ZIP64_LIMIT", limit)
    monkeypatch.setattr(zipstream.ng, "ZIP_FILECOUNT_LIMIT", 3)
    monkeypatch.setattr(plan_module, "ZIP64_LIMIT", limit)
    monkeypatch.setattr(plan_module, "ZIP_FILECOUNT_LIMIT", 3)
    _populate(tree)
    archive = _archive(tree)
    full = b"".join(archive.chunks())
    assert len(full) == archive.size
    assert b"PK\x06\x06" in full[-200:] and b"PK\x06\x07" in full[-200:]  # ZIP64 end records
    with zipfile.ZipFile(io.BytesIO(full)) as opened:
        a_wav = opened.getinfo("render/r/a.wav")
    assert struct.unpack_from("<H", full, a_wav.header_offset + 30 + len(a_wav.filename))[0] == 1
    contents = {
        f"render/r/{path.name}": path.read_bytes() for path in (tree.render / "r").iterdir()
    }
    assert read_zip(full) == contents
    # Ranges starting on and around every entry's data boundaries, where a
    # wrong header or descriptor length would show.
    with zipfile.ZipFile(io.BytesIO(full)) as opened:
        infos = opened.infolist()
    starts: set[int] = set()
    for info in infos:
        name_length, extra_length = struct.unpack_from("<HH", full, info.header_offset + 26)
        data_start = info.header_offset + 30 + name_length + extra_length
        for boundary in (data_start, data_start + info.file_size):
            starts.update(range(boundary - 2, boundary + 3))
    for start in sorted(starts):
        part = b"".join(_archive(tree, CrcCache()).chunks(start, len(full) - 1))
        assert part == full[start:], start
    unzip_test(full, tmp_path)
    assert java_read_zip(full, tmp_path) == contents


@pytest.mark.slow
def test_more_than_65535_entries_for_real(tree: AirTree, tmp_path: Path) -> None:
    """The entry-count ZIP64 boundary at its real value (a few seconds)."""
    run = tree.render / "r"
    run.mkdir(parents=True)
    for index in range(65_600):
        fd = os.open(run / f"{index:05d}.mid", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, index.to_bytes(3, "big"))
        os.close(fd)
    archive = _archive(tree)
    full = b"".join(archive.chunks())
    assert len(full) == archive.size
    assert b"PK\x06\x06" in full[-200:]
    with zipfile.ZipFile(io.BytesIO(full)) as opened:
        infos = opened.infolist()
        assert len(infos) == 65_600
        assert opened.read(infos[-1]) == (65_599).to_bytes(3, "big")
        assert opened.testzip() is None
    unzip_test(full, tmp_path)


@pytest.mark.parametrize("change", ["rename", "delete", "rewrite", "none"])
async def test_a_resume_by_date_never_splices(
    tree: AirTree, client: Any, tmp_path: Path, change: str
) -> None:
    """Half a ZIP, then a file of the run that is not the newest is renamed
    or deleted (the newest mtime, the Last-Modified, stays), then a resume
    with If-Range: <Last-Modified>: the whole new ZIP (200), never its second
    half after the first half of the old one. A file rewritten in place at
    the same size with its exact mtime restored (issue 22: it kept the ETag)
    gets the whole new ZIP by date and by the old ETag too. With the ETag and
    nothing changed, the resume is a 206 that completes the archive."""
    _populate(tree)
    url = "/api/air/export/zip/r"
    status, headers, full = await _get(client, url)
    half = len(full) // 2
    if change == "rename":
        (tree.render / "r" / "a.wav").rename(tree.render / "r" / "b.wav")
    elif change == "delete":
        (tree.render / "r" / "empty.txt").unlink()
    elif change == "rewrite":
        path = tree.render / "r" / "a.wav"
        rewrite_in_place(path, os.urandom(path.stat().st_size))
    validators = [headers["Last-Modified"]]
    if change in ("rewrite", "none"):
        validators.append(headers["ETag"])
    for validator in validators:
        status, resumed_headers, rest = await _get(
            client, url, **{"Range": f"bytes={half}-", "If-Range": validator}
        )
        assert resumed_headers["Last-Modified"] == headers["Last-Modified"]
        if status == 206:  # what curl -C - does: append
            assert validator == headers["ETag"] and change == "none"
            unzip_test(full[:half] + rest, tmp_path)
        else:  # a 200 replaces what it held
            assert status == 200
            unzip_test(rest, tmp_path)
