"""The ZIP of an export: entry names, the download plan and its bytes.

Blocking code, run off the event loop by the caller. The archive is stored
(no compression) and sized, so its exact length is known before the first
byte. zipstream-ng writes every ZIP record (headers, data descriptors, central
directory, sizes); the service feeds it each file's data itself, through
:func:`_read_planned`, which reopens the file without following links, checks
it is the very file that was planned and still inside its root, and reads it
in large chunks. A run of 10,000 small files is mostly per-file overhead, so
that path is kept short: one generator per file, one folder check per folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Iterator, Mapping
from datetime import UTC, datetime
from importlib.metadata import version
from typing import NamedTuple, get_args
from zipfile import ZIP64_LIMIT, ZIP_STORED

from isal.isal_zlib import crc32
from zipstream import ZipStream
from zipstream.ng import _FLAG_DATA_DESCRIPTOR, ZIP64_ESTIMATE_FACTOR, ZipStreamInfo

from .errors import SourceChanged
from .files import FolderFiles
from .manifest import ExportedFile, ExportSources, Step, build_export

log = logging.getLogger(__name__)

# Unicode categories Cc (C0 and C1 controls, DEL) and Cs (lone surrogates).
_DROPPED_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ZIP_MIN_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_DATE = (2107, 12, 31, 23, 59, 58)


# -- entry names ---------------------------------------------------------------


_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')
# Device names Windows will not create a file under, whatever the extension.
_WINDOWS_DEVICE_NAMES = r"(?:CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])"
_WINDOWS_DEVICE = re.compile(_WINDOWS_DEVICE_NAMES + r"(?=\.|\Z)", re.IGNORECASE)
# Names the sanitizing would return unchanged (most of them): segments of
# letters, digits, ``_ - . space``, starting with a letter, digit, ``_`` or
# ``-``, not ending in a dot or space, and no device name.
_PLAIN_SEGMENT = rf"(?!{_WINDOWS_DEVICE_NAMES}(?:[./]|\Z))[\w-][\w .-]*(?<![ .])"
_PLAIN_NAME = re.compile(rf"(?:{_PLAIN_SEGMENT}/)*{_PLAIN_SEGMENT}\Z", re.ASCII | re.IGNORECASE)


def _clean_segment(segment: str) -> str:
    """What Windows can extract: reserved characters become ``_``, trailing
    dots and spaces (which Windows drops) are trimmed, and a device name
    gets a ``_`` (``CON.wav`` -> ``CON_.wav``)."""
    cleaned = _WINDOWS_RESERVED.sub("_", segment).rstrip(". ")
    return _WINDOWS_DEVICE.sub(r"\g<0>_", cleaned, count=1)


def sanitize_arcname(name: str) -> str:
    """A safe relative entry name: ``/`` separators only; no empty, ``.`` or
    ``..`` segments; no control characters; no ``<>:"|?*``, no trailing dot
    or space and no Windows device name in a segment; ``file`` when nothing
    is left."""
    return name if _PLAIN_NAME.match(name) else sanitize_arcname_fully(name)


def sanitize_arcname_fully(name: str) -> str:
    """:func:`sanitize_arcname` without its shortcut for plain names."""
    if _DROPPED_CHARACTERS.search(name):
        name = _DROPPED_CHARACTERS.sub("", name)
    segments = [
        cleaned
        for segment in name.replace("\\", "/").split("/")
        if (cleaned := _clean_segment(segment)) not in {"", ".", ".."}
    ]
    return "/".join(segments) or "file"


class ArcnameAllocator:
    """Hands out unique entry names: ``a.wav``, ``a__1.wav``, ``a__2.wav``;
    ``b``, ``b__1``. A file and a folder never share a name (no extractor
    could write both): a file whose name is taken by a folder gets a suffix,
    and a folder whose name is taken by a file is written as ``name__N/``
    for all the entries inside it."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()
        self._placed_folders: dict[str, str] = {}  # folder as named -> as written
        self._next_suffix: dict[str, int] = {}

    def _taken(self, name: str) -> bool:
        return name in self._files or name in self._folders

    def _unique(self, name: str) -> str:
        if not self._taken(name):
            return name
        stem, extension = posixpath.splitext(name)
        suffix = self._next_suffix.get(name, 1)
        while self._taken(candidate := f"{stem}__{suffix}{extension}"):
            suffix += 1
        self._next_suffix[name] = suffix + 1
        return candidate

    def _place_folder(self, folder: str) -> str:
        placed = self._placed_folders.get(folder)
        if placed is None:
            parent, _, base = folder.rpartition("/")
            placed = f"{self._place_folder(parent)}/{base}" if parent else base
            if placed in self._files:
                placed = self._unique(placed)
            self._placed_folders[folder] = placed
            self._folders.add(placed)
        return placed

    def allocate(self, name: str) -> str:
        folder, _, base = name.rpartition("/")
        # Placing the folder records it and its parents as folders.
        candidate = self._unique(f"{self._place_folder(folder)}/{base}" if folder else base)
        self._files.add(candidate)
        return candidate


# -- the plan ------------------------------------------------------------------


class PlannedEntry(NamedTuple):
    """A file as it was when the download was planned; reading checks it still is."""

    arcname: str
    rel_path: str
    path: str
    root_real: str
    size: int
    mtime_ns: int
    dev: int
    ino: int
    date_time: tuple[int, int, int, int, int, int]  # mtime in UTC, as a ZIP holds it

    @property
    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns)


def _snapshot(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _dos_date_time(seconds: int) -> tuple[int, int, int, int, int, int]:
    """A time in UTC, clamped to what a ZIP can hold."""
    stamp = time.gmtime(seconds)[:6]
    return min(max(_ZIP_MIN_DATE, stamp), _ZIP_MAX_DATE)


class CrcCache:
    """CRC-32s of files by (device, inode, size, mtime_ns), least recently used
    dropped first. Every full read of a file fills it, so resuming a download
    at offset X does not read again the files before X."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self._max_entries = max_entries
        self._crcs: OrderedDict[tuple[int, int, int, int], int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int, int]) -> int | None:
        with self._lock:
            crc = self._crcs.get(key)
            if crc is not None:
                self._crcs.move_to_end(key)
            return crc

    def put(self, key: tuple[int, int, int, int], crc: int) -> None:
        with self._lock:
            self._crcs[key] = crc
            self._crcs.move_to_end(key)
            while len(self._crcs) > self._max_entries:
                self._crcs.popitem(last=False)


class SkippedData(NamedTuple):
    """Stands in the stream for file data that lies before a range's start."""

    size: int


def _local_header_length(arcname: str, size: int) -> int:
    """What zipstream-ng writes before an entry's data (its ``FileHeader``)."""
    try:
        name_length = len(arcname.encode("ascii"))
    except UnicodeEncodeError:
        name_length = len(arcname.encode("utf-8"))
    zip64 = size * ZIP64_ESTIMATE_FACTOR > ZIP64_LIMIT
    return 30 + name_length + (20 if zip64 else 0)


def _read_planned(
    entry: PlannedEntry, files: FolderFiles, chunk_bytes: int
) -> Generator[bytes, None, None]:
    """The bytes of a planned file; :class:`SourceChanged` when it is no longer
    the planned file (device, inode, size, mtime), cannot be read, or is
    modified while it is read. Closing it closes the file."""
    try:
        fd, info = files.open(entry.path, entry.root_real)
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: cannot be opened ({error.strerror})") from error
    except SourceChanged as error:
        raise SourceChanged(f"{entry.rel_path}: {error.message}") from error
    try:
        if _snapshot(info) != entry.snapshot:
            raise SourceChanged(f"{entry.rel_path}: was replaced or modified")
        remaining = entry.size
        while remaining:
            chunk = os.read(fd, min(chunk_bytes, remaining))
            if not chunk:
                raise SourceChanged(f"{entry.rel_path}: shrank while being read")
            remaining -= len(chunk)
            yield chunk
        if _snapshot(os.fstat(fd)) != entry.snapshot:
            raise SourceChanged(f"{entry.rel_path}: was modified while being read")
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: read failed ({error.strerror})") from error
    finally:
        os.close(fd)


class _ExportZipStream(ZipStream):  # type: ignore[misc]
    """zipstream-ng, fed the planned files by the service.

    zipstream-ng formats every record; what it is not given is the reading:
    its own entries from an iterable go through three nested generators per
    chunk, use zlib's CRC-32 (4 GB/s here; ISA-L's runs at about 28 GB/s,
    bench/crc32.py) and are stamped with the current local time
    (pR0Ps/zipstream-ng#27). Each entry is queued with ``_enqueue`` (which
    also sizes it) and written by :meth:`_gen_file_entry` below, which sets
    the same ``ZipStreamInfo`` fields zipstream-ng sets for an iterable, with
    the file's mtime in UTC. An entry whose CRC is known can be written
    without its data (for a range that starts after it): a
    :class:`SkippedData` marker stands for the data. Guarded by
    tests/test_archive.py and tests/test_zip_ranges.py.
    """

    def __init__(self, crcs: CrcCache | None, chunk_bytes: int) -> None:
        super().__init__(sized=True)
        self._crcs = crcs
        self._chunk_bytes = chunk_bytes
        self.files = FolderFiles()

    def add_entry(self, entry: PlannedEntry, known_crc: int | None) -> None:
        self._enqueue(arcname=entry.arcname, size=entry.size, planned=entry, known_crc=known_crc)

    def _gen_file_entry(
        self, *, arcname: str, size: int, planned: PlannedEntry, known_crc: int | None
    ) -> Iterator[bytes | SkippedData]:
        info = ZipStreamInfo(arcname, planned.date_time)
        info.external_attr = 0o600 << 16  # as zipstream-ng sets it for an iterable
        info.file_size = info.compress_size = size
        info.compress_type = ZIP_STORED
        info._compresslevel = None
        info.header_offset = self._pos
        info.flag_bits |= _FLAG_DATA_DESCRIPTOR
        zip64 = size * ZIP64_ESTIMATE_FACTOR > ZIP64_LIMIT
        header = self._track(info.FileHeader(zip64))
        if known_crc is None and size <= self._chunk_bytes:
            # A file read in one chunk goes out as one piece with its header
            # and data descriptor: a third of the pieces to pass along.
            data = b"".join(_read_planned(planned, self.files, self._chunk_bytes))  # no copy
            crc = self._read_crc(planned, data)
            yield header + data + self._descriptor(info, size, crc, zip64)
            return
        yield header
        if known_crc is None:
            crc = 0
            for chunk in _read_planned(planned, self.files, self._chunk_bytes):
                crc = crc32(chunk, crc)
                yield chunk
            self._read_crc(planned, b"", crc)
        else:
            crc = known_crc
            yield SkippedData(size)
        yield self._descriptor(info, size, crc, zip64)

    def _read_crc(self, planned: PlannedEntry, data: bytes, crc: int = 0) -> int:
        """The CRC-32 of a file read in full (continuing ``crc`` over ``data``), cached."""
        crc = crc32(data, crc)
        if self._crcs is not None:
            self._crcs.put(planned.snapshot, crc)
        return crc

    def _descriptor(self, info: ZipStreamInfo, size: int, crc: int, zip64: bool) -> bytes:
        """The data descriptor after an entry's data; the entry is then complete."""
        self._pos += size
        info.CRC = crc
        self._filelist.append(info)
        descriptor: bytes = self._track(info.DataDescriptor(zip64))
        return descriptor


def _file_crc(entry: PlannedEntry, files: FolderFiles, chunk_bytes: int) -> int:
    """Read a planned file to learn its CRC-32 (it must still be the planned file)."""
    crc = 0
    for chunk in _read_planned(entry, files, chunk_bytes):
        crc = crc32(chunk, crc)
    return crc


def _ranged(
    pieces: Iterator[bytes | SkippedData], start: int, end: int
) -> Generator[bytes, None, None]:
    """The bytes of ``pieces`` from offset ``start`` to ``end`` (inclusive)."""
    offset = 0
    for piece in pieces:
        if isinstance(piece, SkippedData):
            offset += piece.size
            continue
        piece_end = offset + len(piece)
        if piece_end > start:
            low, high = max(0, start - offset), min(len(piece), end + 1 - offset)
            yield piece[low:high] if low or high < len(piece) else piece
        offset = piece_end
        if offset > end:
            return


class ExportArchive:
    """A planned download: its entries, exact size, strong ETag, and its bytes
    (all of them, or one range)."""

    FORMAT = f"stored zip, zipstream-ng {version('zipstream-ng')}, utc mtimes"

    def __init__(
        self,
        entries: list[PlannedEntry],
        skipped: list[str],
        chunk_bytes: int,
        crcs: CrcCache | None = None,
    ):
        self.entries = entries
        self.skipped = skipped
        self._chunk_bytes = chunk_bytes
        self._crcs = crcs
        # The stream made to learn the size serves the first full download.
        self._unused_full_stream: _ExportZipStream | None = self._stream(skip_data_before=0)
        self.size: int = len(self._unused_full_stream)
        # Computed here, in the planning hop, not on the event loop.
        self.etag = self._etag()
        self.last_modified = (
            datetime.fromtimestamp(max(e.mtime_ns for e in entries) // 1_000_000_000, UTC)
            if entries
            else None
        )

    def _etag(self) -> str:
        """Strong: the same for the same planned files (name, size, mtime,
        inode) on any replica, different as soon as one of them changes."""
        digest = hashlib.sha256(self.FORMAT.encode())
        for entry in self.entries:
            digest.update(
                f"{entry.arcname}\0{entry.size}\0{entry.mtime_ns}\0{entry.ino}\n".encode()
            )
        return f'"{digest.hexdigest()[:40]}"'

    def _stream(self, skip_data_before: int) -> _ExportZipStream:
        """A stream of the archive; entries whose data ends before the given
        offset are written without their data (their CRC from the cache, or
        from reading the file once)."""
        stream = _ExportZipStream(self._crcs, self._chunk_bytes)
        offset = 0
        try:
            for entry in self.entries:
                data_start = offset + _local_header_length(entry.arcname, entry.size)
                offset = (
                    data_start
                    + entry.size
                    + (24 if entry.size * ZIP64_ESTIMATE_FACTOR > ZIP64_LIMIT else 16)
                )
                known_crc = None
                if data_start + entry.size <= skip_data_before:
                    cached = self._crcs.get(entry.snapshot) if self._crcs is not None else None
                    known_crc = (
                        cached if cached is not None else self._learn_crc(entry, stream.files)
                    )
                stream.add_entry(entry, known_crc)
        except BaseException:
            stream.files.close()
            raise
        return stream

    def _learn_crc(self, entry: PlannedEntry, files: FolderFiles) -> int:
        crc = _file_crc(entry, files, self._chunk_bytes)
        if self._crcs is not None:
            self._crcs.put(entry.snapshot, crc)
        return crc

    def chunks(self, start: int = 0, end: int | None = None) -> Generator[bytes, None, None]:
        """The archive's bytes from ``start`` to ``end`` (inclusive; default:
        all). Blocking: learning the CRCs of files before ``start`` happens on
        the first pull. Closing it closes any open file."""
        end = self.size - 1 if end is None else end
        if start == 0 and self._unused_full_stream is not None:
            stream, self._unused_full_stream = self._unused_full_stream, None
        else:
            stream = self._stream(skip_data_before=start)
        pieces = iter(stream)
        try:
            yield from (
                pieces if (start, end) == (0, self.size - 1) else _ranged(pieces, start, end)
            )
        finally:
            pieces.close()
            stream.files.close()


def plan_archive(
    files: list[ExportedFile],
    root_reals: Mapping[Step, str],
    chunk_bytes: int,
    crcs: CrcCache | None = None,
) -> ExportArchive:
    """Name every file of the export and check it can be read now (blocking).

    The sizes and times are the ones the scan saw (in the same hop); reading
    checks each file against them. A file that cannot be read is left out and
    logged; its rel_path is listed in ``skipped``.
    """
    allocator = ArcnameAllocator()
    date_times: dict[int, tuple[int, int, int, int, int, int]] = {}
    entries: list[PlannedEntry] = []
    skipped: list[str] = []
    for item in files:
        step, rel_path, source = item.entry["step"], item.entry["rel_path"], item.source
        if source.size is None or not os.access(source.path, os.R_OK):
            log.warning("leaving %s/%s out of the ZIP: it cannot be opened", step, rel_path)
            skipped.append(f"{step}/{rel_path}")
            continue
        seconds = source.mtime_ns // 1_000_000_000
        date_time = date_times.get(seconds)
        if date_time is None:
            date_time = date_times[seconds] = _dos_date_time(seconds)
        entries.append(
            PlannedEntry(
                allocator.allocate(sanitize_arcname(f"{step}/{rel_path}")),
                rel_path,
                source.path,
                root_reals[step],
                source.size,
                source.mtime_ns,
                source.dev,
                source.ino,
                date_time,
            )
        )
    return ExportArchive(entries, skipped, chunk_bytes, crcs)


def plan_export_archive(
    sources: ExportSources,
    render_run_id: str,
    param_run_id: str | None,
    crcs: CrcCache | None = None,
) -> ExportArchive:
    """The manifest's files, planned as one download (blocking, one hop)."""
    export = build_export(sources, render_run_id, param_run_id)
    root_reals: dict[Step, str] = {
        step: os.path.realpath(getattr(sources.settings.roots, step)) for step in get_args(Step)
    }
    return plan_archive(export.files, root_reals, sources.settings.limits.read_chunk_bytes, crcs)
