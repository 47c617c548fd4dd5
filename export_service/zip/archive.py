"""The ZIP of an export: the download plan and its bytes.

A file goes through three stages, each with one name, from the disk to the
ZIP (the names of the manifest and the archive alike):

- **scanned file**: what a scan of a run folder saw of a regular file (its
  path, size, mtime, ctime, device, inode): ``scanning.ScannedFile``, kept compact
  as a ``FileRecord`` in a ``FolderScan``;
- **listed file**: a scanned file under its step and rel_path, as the
  manifest lists it: ``manifest.ListedFile`` (without a URL: a ZIP has
  none); in the manifest's JSON it is an ``ExportFile``, the name the API's
  schema gives it. An ``Export`` holds one project's listed files;
- **planned entry**: a listed file as this module plans it into the ZIP, with
  its entry name (names.py) and its offsets: :class:`PlannedEntry`. An
  :class:`ExportArchive` holds the planned entries of one download and makes
  its bytes.

Blocking code, run off the event loop by the caller. The archive is stored
(no compression), every entry with its CRC-32 and sizes in its local header
and no data descriptor, so its exact length is known before the first byte
and readers that stream it front to back can. zipstream-ng writes every ZIP
record (local headers, central directory, end records); the service lays the
entries out and feeds the data itself, through :func:`_read_planned`, which
reopens the file without following links, checks it is the very file that was
planned and still inside its root, and reads it in large chunks. A run of
10,000 small files is mostly per-file overhead, so that path is kept short:
one generator per file, one folder check per folder, one read per small file.

What identifies a version of a file (its **snapshot**: the ETag, the CRC
cache's key, what a checked read compares) is its device, inode, size, mtime
and **ctime**. The mtime alone does not: anyone who may write a file may set
it (``cp -p``, ``rsync -t``, ``tar x``, ``touch -d``, ``os.utime``), so a file
rewritten in place at the same size with its mtime restored looked unchanged.
The ctime (the inode's last change) cannot be set by users and moves on every
write, ``utime``, rename and chmod; it comes from the same stat.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
import time
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from typing import NamedTuple
from zipfile import ZIP64_LIMIT, ZIP_FILECOUNT_LIMIT

from isal.isal_zlib import crc32
from zipstream import ZipStream
from zipstream.ng import ZipStreamInfo

from ..core.etags import hashed_etag
from ..core.manifest import ListedFile, Step
from ..core.safe_files import FolderFiles
from ..errors import SourceChanged
from .names import MAX_ARCNAME_BYTES, ArcnameAllocator

log = logging.getLogger("export_service.archive")  # obs/logs.py: LOGGER_NAMES

_ZIP_MIN_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_DATE = (2107, 12, 31, 23, 59, 58)


# -- the plan ------------------------------------------------------------------


def _zip64(value: int) -> bool:
    """The one ZIP64 rule: a size or offset goes in a ZIP64 record when it is
    beyond where zipfile and zipstream-ng put the limit (2 GiB). (An entry
    count has its own limit, ``ZIP_FILECOUNT_LIMIT``.)"""
    return value > ZIP64_LIMIT


_LOCAL_HEADER = 30  # fixed part of a local file header (then name, extra field)
_CENTRAL_HEADER = 46  # fixed part of a central directory header
_ZIP64_SIZES = 20  # a ZIP64 extra field holding the two sizes
_END_RECORD = 22
_ZIP64_END_RECORDS = 56 + 20  # ZIP64 end of central directory record and locator
# Entries are regular files made on Unix, readable by everyone who extracts them.
_FILE_ATTRIBUTES = (stat.S_IFREG | 0o644) << 16
_UNIX = 3
_DEFAULT_VERSION = 20  # what a ZIP reader needs for stored entries (2.0)


def _name_length(arcname: str) -> int:
    """The length of the name as zipstream-ng writes it (ASCII, else UTF-8)."""
    return len(arcname) if arcname.isascii() else len(arcname.encode("utf-8"))


# What identifies a version of a file: (device, inode, size, mtime_ns, ctime_ns).
Snapshot = tuple[int, int, int, int, int]


class PlannedEntry(NamedTuple):
    """A listed file as it was when the download was planned, under its entry
    name, and where it lies in the ZIP; reading checks it still is that file."""

    arcname: str
    rel_path: str
    path: str
    root_real: str
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int
    date_time: tuple[int, int, int, int, int, int]  # mtime in UTC, as a ZIP holds it
    header_offset: int  # where its local header starts in the ZIP
    data_offset: int  # where its data starts

    @property
    def snapshot(self) -> Snapshot:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)


def _is_planned_file(info: os.stat_result, entry: PlannedEntry) -> bool:
    return (
        info.st_ino == entry.ino
        and info.st_size == entry.size
        and info.st_mtime_ns == entry.mtime_ns
        and info.st_ctime_ns == entry.ctime_ns
        and info.st_dev == entry.dev
    )


def _dos_date_time(seconds: int) -> tuple[int, int, int, int, int, int]:
    """A time in UTC, clamped to what a ZIP can hold."""
    stamp = time.gmtime(seconds)[:6]
    return min(max(_ZIP_MIN_DATE, stamp), _ZIP_MAX_DATE)


class CrcCache:
    """CRC-32s of files by their snapshot (device, inode, size, mtime_ns,
    ctime_ns: a rewrite that restores the mtime still misses), least recently used
    dropped first. Every pass over a whole file fills it, so a later download
    need not read a big file twice, and a resume reads nothing before its
    offset."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._max_entries = max_entries
        self._crcs: OrderedDict[Snapshot, int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Snapshot) -> int | None:
        with self._lock:
            crc = self._crcs.get(key)
            if crc is not None:
                self._crcs.move_to_end(key)
            return crc

    def put(self, key: Snapshot, crc: int) -> None:
        self.put_many(((key, crc),))

    def put_many(self, items: Iterable[tuple[Snapshot, int]]) -> None:
        with self._lock:
            for key, crc in items:
                self._crcs[key] = crc
                self._crcs.move_to_end(key)
            while len(self._crcs) > self._max_entries:
                self._crcs.popitem(last=False)

    def discard(self, key: Snapshot) -> None:
        with self._lock:
            self._crcs.pop(key, None)


def _open_planned(entry: PlannedEntry, files: FolderFiles) -> int:
    """A descriptor of the planned file; :class:`SourceChanged` when it is no
    longer the planned file (its snapshot) or cannot be opened."""
    try:
        fd, info = files.open(entry.path, entry.root_real)
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: cannot be opened ({error.strerror})") from error
    except SourceChanged as error:
        raise SourceChanged(f"{entry.rel_path}: {error.message}") from error
    if not _is_planned_file(info, entry):
        os.close(fd)
        raise SourceChanged(f"{entry.rel_path}: was replaced or modified")
    return fd


def _read_planned(
    entry: PlannedEntry, files: FolderFiles, chunk_bytes: int, start: int = 0, stop: int = -1
) -> Generator[bytes, None, None]:
    """Bytes ``start`` to ``stop`` (default: the end) of a planned file;
    :class:`SourceChanged` when it is no longer the planned file, cannot be
    read, or is modified while it is read. Closing it closes the file."""
    fd = _open_planned(entry, files)
    try:
        if start:
            os.lseek(fd, start, os.SEEK_SET)
        remaining = (entry.size if stop < 0 else stop) - start
        while remaining:
            chunk = os.read(fd, min(chunk_bytes, remaining))
            if not chunk:
                raise SourceChanged(f"{entry.rel_path}: shrank while being read")
            remaining -= len(chunk)
            yield chunk
        if not _is_planned_file(os.fstat(fd), entry):
            raise SourceChanged(f"{entry.rel_path}: was modified while being read")
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: read failed ({error.strerror})") from error
    finally:
        os.close(fd)


def _read_whole(entry: PlannedEntry, files: FolderFiles) -> bytes:
    """All of a small planned file in one read, checked as :func:`_read_planned` does."""
    fd = _open_planned(entry, files)
    try:
        data = os.read(fd, entry.size) if entry.size else b""
        if len(data) != entry.size:
            raise SourceChanged(f"{entry.rel_path}: shrank while being read")
        if not _is_planned_file(os.fstat(fd), entry):
            raise SourceChanged(f"{entry.rel_path}: was modified while being read")
        return data
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: read failed ({error.strerror})") from error
    finally:
        os.close(fd)


# A pass that reads a file only to learn its CRC-32 yields this (no bytes)
# after every PASS_SLICE bytes read: the caller can stop there and let the
# thread do other work (streaming.py ends a batch at it), and a pass over a
# file of 32 GiB is many short steps, not one.
PASS_STEP = b""
PASS_SLICE = 8 * 1024 * 1024


class PassCancelled(Exception):
    """The download a CRC pass was for has ended (cut, or the service stops)."""


def _file_crc(
    entry: PlannedEntry, files: FolderFiles, chunk_bytes: int, cancelled: threading.Event | None
) -> Generator[bytes, None, int]:
    """Read a planned file to learn its CRC-32 (it must still be the planned
    file); yields :data:`PASS_STEP` every :data:`PASS_SLICE` bytes, returns
    the CRC. :class:`PassCancelled` (the file closed) as soon as ``cancelled``
    is set, checked between chunks."""
    crc = 0
    since_step = 0
    for chunk in _read_planned(entry, files, chunk_bytes):
        if cancelled is not None and cancelled.is_set():
            raise PassCancelled(f"{entry.rel_path}: its download ended during its CRC pass")
        crc = crc32(chunk, crc)
        since_step += len(chunk)
        if since_step >= PASS_SLICE:
            since_step = 0
            yield PASS_STEP
    return crc


class _Records:
    """zipstream-ng's records of the entries, from one ``ZipStreamInfo`` refilled
    per entry (making one per record was a tenth of a small file's cost):
    stored, sized, its CRC known, no data descriptor, mode 0644 on Unix, the
    file's mtime in UTC. Only attributes zipfile documents are set."""

    def __init__(self) -> None:
        self._info = ZipStreamInfo("file", _ZIP_MIN_DATE)
        self._info.create_system = _UNIX
        self._info.external_attr = _FILE_ATTRIBUTES

    def info(self, entry: PlannedEntry, crc: int) -> ZipStreamInfo:
        info = self._info
        info.filename = entry.arcname
        info.date_time = entry.date_time
        info.file_size = info.compress_size = entry.size
        info.CRC = crc
        info.header_offset = entry.header_offset
        # Writing a header raises these for ZIP64; each entry starts afresh.
        info.extract_version = info.create_version = _DEFAULT_VERSION
        return info

    def local_header(self, entry: PlannedEntry, crc: int) -> bytes:
        header: bytes = self.info(entry, crc).FileHeader(_zip64(entry.size))
        return header


class _CentralDirectory:
    """The entries as zipstream-ng's footer reads them (``len``, and iteration
    that it consumes one record at a time), each record made when it is
    written: a download holds one CRC per entry, not one ``ZipInfo``."""

    def __init__(self, entries: list[PlannedEntry], crcs: list[int]) -> None:
        self._entries = entries
        self._crcs = crcs

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ZipStreamInfo]:
        return map(_Records().info, self._entries, self._crcs)


def _footer(entries: list[PlannedEntry], crcs: list[int], offset: int) -> Iterator[bytes]:
    """The central directory (and ZIP64 end records if needed) and the end
    record, written by zipstream-ng's ``ZipStream.footer()``: it reads the
    entries from ``_filelist`` and the directory's offset from ``_pos``, the
    two private names the archive sets (guarded by tests/test_archive.py)."""
    stream = ZipStream(sized=False)
    stream._filelist = _CentralDirectory(entries, crcs)
    stream._pos = offset
    return iter(stream.footer())


def _cut(pieces: Iterator[bytes], offset: int, start: int, end: int) -> Iterator[bytes]:
    """The part of ``pieces`` (written from ``offset`` on) between ``start``
    and ``end`` (inclusive)."""
    for piece in pieces:
        piece_end = offset + len(piece)
        if piece_end > start:
            low, high = max(0, start - offset), min(len(piece), end + 1 - offset)
            yield piece[low:high] if low or high < len(piece) else piece
        offset = piece_end
        if offset > end:
            return


class ExportArchive:
    """A planned download: its entries, exact size, strong ETag, and its bytes
    (all of them, or one range).

    Every entry is stored with its CRC-32 and sizes in its local header and
    no data descriptor, which readers that stream a ZIP front to back need
    (Java's ``ZipInputStream``, ``stream-unzip``, bsdtar from a pipe). So a
    file's CRC must be known before its header: a file read in one chunk is
    read before its header; a bigger one takes its CRC from the cache, else
    from one pass over it just before its header. The pass that sends the
    data computes the CRC again and cuts the download if it differs (the file
    was rewritten in between, even at the same size and mtime). The bytes are
    a pure function of the planned files, whatever the cache held.

    zipstream-ng writes every record (``ZipStreamInfo.FileHeader``, and its
    ``footer()`` for the central directory and end records); the layout (each
    entry's offsets, the total size) is computed here at planning, so a range
    is produced without writing or reading what lies before it.
    """

    FORMAT = (
        f"stored zip, crc and sizes in local headers, no data descriptors, unix 0644, "
        f"zipstream-ng {version('zipstream-ng')}, utc mtimes"
    )

    def __init__(
        self,
        entries: list[PlannedEntry],
        skipped: dict[str, str],
        chunk_bytes: int,
        crcs: CrcCache | None = None,
        selection_key: str | None = None,
    ):
        self.entries = entries
        self.selection_key = selection_key  # a selective export's (selection.py); None: all
        self.skipped = skipped
        self.unlisted: Counter[str] = Counter()  # paths the scan could not list, by reason
        self.missing: list[str] = []  # the steps of the export with no file
        self.param_run_id: str | None = None  # the param run the export looked for
        self._chunk_bytes = chunk_bytes
        self._crcs = crcs
        self._central_offset = entries[-1].data_offset + entries[-1].size if entries else 0
        self.size = self._central_offset + self._footer_size()
        # Computed here, in the planning hop, not on the event loop.
        self.etag = self._etag()
        self.last_modified = (
            datetime.fromtimestamp(max(e.mtime_ns for e in entries) // 1_000_000_000, UTC)
            if entries
            else None
        )

    def _footer_size(self) -> int:
        """What zipstream-ng's footer writes for these entries."""
        size = _END_RECORD
        for entry in self.entries:
            extras = 2 * _zip64(entry.size) + _zip64(entry.header_offset)
            size += (
                _CENTRAL_HEADER + _name_length(entry.arcname) + (4 + 8 * extras if extras else 0)
            )
        directory = size - _END_RECORD
        if (
            len(self.entries) >= ZIP_FILECOUNT_LIMIT
            or _zip64(self._central_offset)
            or _zip64(directory)
        ):
            size += _ZIP64_END_RECORDS
        return size

    def _etag(self) -> str:
        """Strong: the same for the same planned files (name, size, mtime,
        ctime, inode) on any replica, different as soon as one of them changes
        (the ctime: even when a rewrite restored the size and mtime). A
        selective export's selection is hashed in too: its ETag is never the
        whole export's, even when both hold the same files."""
        digest = hashlib.sha256(self.FORMAT.encode())
        if self.selection_key is not None:
            digest.update(f"\0selection\0{self.selection_key}\0".encode())
        digest.update(
            "".join(
                f"{entry.arcname}\0{entry.size}\0{entry.mtime_ns}\0{entry.ctime_ns}\0{entry.ino}\n"
                for entry in self.entries
            ).encode()
        )
        return hashed_etag(digest)

    def _known_crc(
        self, entry: PlannedEntry, files: FolderFiles, cancelled: threading.Event | None
    ) -> Generator[bytes, None, int]:
        """An entry's CRC-32 from the cache, else from one pass over the file
        (yielding :data:`PASS_STEP` as it goes)."""
        crc = self._crcs.get(entry.snapshot) if self._crcs is not None else None
        if crc is None:
            crc = yield from _file_crc(entry, files, self._chunk_bytes, cancelled)
            if self._crcs is not None:
                self._crcs.put(entry.snapshot, crc)
        return crc

    def _entry(
        self,
        entry: PlannedEntry,
        files: FolderFiles,
        records: _Records,
        start: int,
        end: int,
        cancelled: threading.Event | None,
    ) -> Generator[bytes, None, int | None]:
        """The part of one entry between ``start`` and ``end`` (ZIP offsets,
        inclusive), unless it is a whole small file (:meth:`chunks` does those);
        returns its CRC-32 when it was learned or checked."""
        first = max(start, entry.data_offset) - entry.data_offset  # offsets in the file
        stop = min(end + 1, entry.data_offset + entry.size) - entry.data_offset
        if start >= entry.data_offset:  # no header: only (part of) the data
            sent = yield from self._data(entry, files, first, stop)
            if sent is None:
                return None
            cached = self._crcs.get(entry.snapshot) if self._crcs is not None else None
            self._check_sent(entry, sent, cached)
            if self._crcs is not None:
                self._crcs.put(entry.snapshot, sent)
            return sent
        crc = yield from self._known_crc(entry, files, cancelled)
        yield from _cut(iter((records.local_header(entry, crc),)), entry.header_offset, start, end)
        if stop > 0:
            sent = yield from self._data(entry, files, 0, stop)
            if sent is not None:
                self._check_sent(entry, sent, crc)
        return crc

    def _data(
        self, entry: PlannedEntry, files: FolderFiles, first: int, stop: int
    ) -> Generator[bytes, None, int | None]:
        """Bytes ``first`` to ``stop`` of an entry's file; returns their CRC-32
        when they are all of it (a part needs none)."""
        chunks = _read_planned(entry, files, self._chunk_bytes, first, stop)
        if first or stop != entry.size:
            yield from chunks
            return None
        crc = 0
        for chunk in chunks:
            crc = crc32(chunk, crc)
            yield chunk
        return crc

    def _check_sent(self, entry: PlannedEntry, sent: int, known: int | None) -> None:
        """The CRC-32 of the data just sent must be the one its header said
        (or the cache holds, when the range left the header out): else the file
        was rewritten in between, even at the same size and mtime, and the
        download is cut rather than end as a complete-looking, broken ZIP."""
        if known is not None and sent != known:
            if self._crcs is not None:
                self._crcs.discard(entry.snapshot)
            raise SourceChanged(f"{entry.rel_path}: was rewritten (its CRC-32 changed)")

    def chunks(
        self, start: int = 0, end: int | None = None, cancelled: threading.Event | None = None
    ) -> Generator[bytes, None, None]:
        """The archive's bytes from ``start`` to ``end`` (inclusive; default:
        all). Blocking. Only the entries the range touches are read, each from
        where the range starts in it; the CRCs of the entries before the range
        (for the central directory) come from the cache or one pass each, once
        the range reaches the directory. Closing it closes any open file.

        A pass that reads a file only for its CRC yields :data:`PASS_STEP`
        (no bytes) every :data:`PASS_SLICE` bytes, so that whoever drives it
        can share the thread between downloads; it stops with
        :class:`PassCancelled` between two chunks once ``cancelled`` is set."""
        end = self.size - 1 if end is None else end
        crcs: list[int | None] = [None] * len(self.entries)
        files = FolderFiles()
        records = _Records()
        try:
            first = max(0, bisect_right(self.entries, start, key=_header_offset) - 1)
            for index in range(first, len(self.entries)):
                entry = self.entries[index]
                if entry.header_offset > end:
                    return
                data_end = entry.data_offset + entry.size
                if data_end <= start:
                    continue  # an empty entry before the range
                if (
                    start < entry.data_offset
                    and data_end <= end + 1
                    and entry.size <= self._chunk_bytes
                ):
                    # A whole small file, read before its header (no second
                    # pass; its CRC is cached with the others at the end):
                    # most of a run of 10,000 small files, so it skips a
                    # generator of its own.
                    data = _read_whole(entry, files)
                    crcs[index] = crc = crc32(data)
                    header = records.local_header(entry, crc)
                    yield (
                        header[start - entry.header_offset :]
                        if start > entry.header_offset
                        else header
                    )
                    yield data
                    continue
                crcs[index] = yield from self._entry(entry, files, records, start, end, cancelled)
            if end < self._central_offset:
                return
            known: list[int] = []
            for index, entry in enumerate(self.entries):  # one pass at a time, in steps
                learned = crcs[index]
                if learned is None:
                    learned = crcs[index] = yield from self._known_crc(entry, files, cancelled)
                known.append(learned)
            yield from _cut(
                _footer(self.entries, known, self._central_offset),
                self._central_offset,
                start,
                end,
            )
        finally:
            files.close()
            if self._crcs is not None:
                self._crcs.put_many(
                    (entry.snapshot, crc)
                    for entry, crc in zip(self.entries, crcs, strict=True)
                    if crc is not None
                )


def _header_offset(entry: PlannedEntry) -> int:
    return entry.header_offset


def plan_archive(
    files: Iterable[ListedFile],
    root_reals: Mapping[Step, str],
    chunk_bytes: int,
    crcs: CrcCache | None = None,
    selection_key: str | None = None,
) -> ExportArchive:
    """Name every file of the export and lay out the ZIP (blocking).

    The sizes and times are the ones the scan saw (in the same hop); reading
    checks each file against them. A file that cannot be read now is left
    out and logged; ``skipped`` maps its ``<step>/<rel_path>`` to why, as for a file whose
    entry name is longer than a ZIP can hold (``MAX_ARCNAME_BYTES``): HEAD and
    GET plan alike, so the headers never promise what cannot be written. The offsets of
    every entry are laid out here, so a range needs nothing before it.
    """
    allocator = ArcnameAllocator()
    date_times: dict[int, tuple[int, int, int, int, int, int]] = {}
    entries: list[PlannedEntry] = []
    skipped: dict[str, str] = {}
    offset = 0
    with FolderFiles() as folder_files:
        for listed in files:
            step, rel_path, size = listed.step, listed.rel_path, listed.size
            if size is None or not folder_files.readable(listed.path, root_reals[step]):
                log.warning("leaving %s/%s out of the ZIP: it cannot be opened", step, rel_path)
                skipped[f"{step}/{rel_path}"] = "cannot be opened"
                continue
            seconds = listed.mtime_ns // 1_000_000_000
            date_time = date_times.get(seconds)
            if date_time is None:
                date_time = date_times[seconds] = _dos_date_time(seconds)
            folder, _, base = f"{step}/{rel_path}".rpartition("/")
            arcname = allocator.allocate_file(folder, base)
            if _name_length(arcname) > MAX_ARCNAME_BYTES:
                log.warning(
                    "leaving %s/%s out of the ZIP: its entry name has %d bytes, more than "
                    "the %d a ZIP can hold",
                    step,
                    rel_path[:200] + "...",
                    _name_length(arcname),
                    MAX_ARCNAME_BYTES,
                )
                skipped[f"{step}/{rel_path}"] = "its name is too long for a ZIP"
                continue
            data_offset = (
                offset + _LOCAL_HEADER + _name_length(arcname) + _zip64(size) * _ZIP64_SIZES
            )
            entries.append(
                PlannedEntry(
                    arcname,
                    rel_path,
                    listed.path,
                    root_reals[step],
                    size,
                    listed.mtime_ns,
                    listed.ctime_ns,
                    listed.dev,
                    listed.ino,
                    date_time,
                    offset,
                    data_offset,
                )
            )
            offset = data_offset + size
    return ExportArchive(entries, skipped, chunk_bytes, crcs, selection_key)
