"""The ZIP of an export: entry names, the download plan and its bytes.

Blocking code, run off the event loop by the caller. The archive is stored
(no compression) and sized, so its exact length is known before the first
byte. Files are not read by zipstream-ng's ``add_path`` (which reopens by name
with 64 KiB reads) but by :func:`_read_entry`, which reopens each file without
following links, checks it is the very file that was planned and still inside
its root, and reads it in large chunks.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import stat
import struct
import time
from collections.abc import Generator, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple, get_args

import zipstream.ng
from isal import isal_zlib
from zipstream import ZipStream

from .errors import SourceChanged
from .files import open_checked
from .manifest import ExportedFile, ExportSources, Step, build_export

log = logging.getLogger(__name__)

# zipstream-ng computes each entry's CRC-32 with the ``crc32`` it imported from
# zipfile (zlib's, about 4 GB/s here), which made the CRC most of the cost of a
# download. ISA-L's is the same function at about 28 GB/s (bench/crc32.py).
# tests/test_archive.py checks that zipstream-ng still calls this name.
zipstream.ng.crc32 = isal_zlib.crc32

# Unicode categories Cc (C0 and C1 controls, DEL) and Cs (lone surrogates).
_DROPPED_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ZIP_MIN_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_DATE = (2107, 12, 31, 23, 59, 58)


# -- entry names ---------------------------------------------------------------


_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')


def _clean_segment(segment: str) -> str:
    """What Windows can extract: reserved characters become ``_``, and trailing
    dots and spaces (which Windows drops) are trimmed."""
    return _WINDOWS_RESERVED.sub("_", segment).rstrip(". ")


def sanitize_arcname(name: str) -> str:
    """A safe relative entry name: ``/`` separators only; no empty, ``.`` or
    ``..`` segments; no control characters; no ``<>:"|?*`` and no trailing dot
    or space in a segment; ``file`` when nothing is left."""
    if _DROPPED_CHARACTERS.search(name):
        name = _DROPPED_CHARACTERS.sub("", name)
    segments = [
        cleaned
        for segment in name.replace("\\", "/").split("/")
        if (cleaned := _clean_segment(segment)) not in {"", ".", ".."}
    ]
    return "/".join(segments) or "file"


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:end]) for end in range(1, len(parts))]


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
        candidate = self._unique(f"{self._place_folder(folder)}/{base}" if folder else base)
        self._files.add(candidate)
        self._folders.update(_parents(candidate))
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

    @property
    def snapshot(self) -> tuple[int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns)


def _snapshot(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _dos_date_time(mtime_ns: int) -> tuple[int, int, int, int, int, int]:
    """The file's mtime in UTC, clamped to what a ZIP can hold."""
    stamp = time.gmtime(mtime_ns // 1_000_000_000)[:6]
    return min(max(_ZIP_MIN_DATE, stamp), _ZIP_MAX_DATE)


class _UtcStampedZipStream(ZipStream):  # type: ignore[misc]
    """A ZipStream whose entries carry their file's mtime in UTC.

    zipstream-ng stamps entries added from an iterable with the current local
    time, and offers no option for it (pR0Ps/zipstream-ng#27). The local
    header's DOS time and date sit at bytes 10-13; the central directory reads
    the entry's ``date_time``. tests/test_archive.py checks both, so an
    upstream change that breaks this shows up there.
    """

    def add_stamped(
        self, data: Iterator[bytes], arcname: str, size: int, date_time: tuple[int, ...]
    ) -> None:
        self.add(data, arcname, size=size)
        self._queue[-1]["date_time"] = date_time

    def _gen_file_entry(
        self, *, date_time: tuple[int, ...] | None = None, **kwargs: Any
    ) -> Iterator[bytes]:
        parts = super()._gen_file_entry(**kwargs)
        if date_time is None:
            yield from parts
            return
        header = next(parts)
        year, month, day, hour, minute, second = date_time
        dos = struct.pack(
            "<HH", hour << 11 | minute << 5 | second // 2, (year - 1980) << 9 | month << 5 | day
        )
        yield header[:10] + dos + header[14:]
        yield from parts
        self._filelist[-1].date_time = date_time


def _read_entry(entry: PlannedEntry, chunk_bytes: int) -> Generator[bytes, None, None]:
    """The bytes of a planned file; :class:`SourceChanged` when it is no longer
    the planned file (device, inode, size, mtime), cannot be read, or is
    modified while it is read."""
    try:
        fd, info = open_checked(entry.path, entry.root_real)
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: cannot be opened ({error.strerror})") from error
    except SourceChanged as error:
        raise SourceChanged(f"{entry.rel_path}: {error.message}") from error
    with open(fd, "rb", buffering=0, closefd=True) as handle:
        if _snapshot(info) != entry.snapshot:
            raise SourceChanged(f"{entry.rel_path}: was replaced or modified")
        remaining = entry.size
        try:
            while remaining:
                chunk = handle.read(min(chunk_bytes, remaining))
                if not chunk:
                    raise SourceChanged(f"{entry.rel_path}: shrank while being read")
                remaining -= len(chunk)
                yield chunk
            modified = _snapshot(os.fstat(fd)) != entry.snapshot
        except OSError as error:
            raise SourceChanged(f"{entry.rel_path}: read failed ({error.strerror})") from error
        if modified:
            raise SourceChanged(f"{entry.rel_path}: was modified while being read")


class ExportArchive:
    """A planned download: its entries, exact size, and (once) its bytes."""

    def __init__(self, entries: list[PlannedEntry], skipped: list[str], chunk_bytes: int):
        self.entries = entries
        self.skipped = skipped
        self._readers = [_read_entry(entry, chunk_bytes) for entry in entries]
        self._stream = _UtcStampedZipStream(sized=True)
        for entry, reader in zip(entries, self._readers, strict=True):
            self._stream.add_stamped(
                reader, entry.arcname, entry.size, _dos_date_time(entry.mtime_ns)
            )
        self.size: int = len(self._stream)

    @property
    def last_modified(self) -> datetime | None:
        if not self.entries:
            return None
        newest = max(entry.mtime_ns for entry in self.entries)
        return datetime.fromtimestamp(newest // 1_000_000_000, UTC)

    def chunks(self) -> Generator[bytes, None, None]:
        """The archive's bytes; single use. Closing it closes any open file."""
        try:
            yield from self._stream
        finally:
            for reader in self._readers:
                reader.close()


def plan_archive(
    files: list[ExportedFile], root_reals: Mapping[Step, str], chunk_bytes: int
) -> ExportArchive:
    """Name every file of the export and check it can be read now (blocking).

    A file that cannot be read is left out and logged; its rel_path is listed
    in ``skipped``.
    """
    allocator = ArcnameAllocator()
    entries: list[PlannedEntry] = []
    skipped: list[str] = []
    for item in files:
        step, rel_path, source = item.entry["step"], item.entry["rel_path"], item.source
        # Two cheap calls instead of an open: reading reopens the file and
        # checks it against this snapshot and against the root anyway.
        try:
            info = os.lstat(source.path)
            readable = stat.S_ISREG(info.st_mode) and os.access(source.path, os.R_OK)
        except OSError:
            readable = False
        if not readable:
            log.warning("leaving %s/%s out of the ZIP: it cannot be opened", step, rel_path)
            skipped.append(f"{step}/{rel_path}")
            continue
        arcname = allocator.allocate(sanitize_arcname(f"{step}/{rel_path}"))
        entries.append(
            PlannedEntry(
                arcname,
                rel_path,
                source.path,
                root_reals[step],
                info.st_size,
                info.st_mtime_ns,
                info.st_dev,
                info.st_ino,
            )
        )
    return ExportArchive(entries, skipped, chunk_bytes)


def plan_export_archive(
    sources: ExportSources, render_run_id: str, param_run_id: str | None
) -> ExportArchive:
    """The manifest's files, planned as one download (blocking, one hop)."""
    export = build_export(sources, render_run_id, param_run_id)
    root_reals: dict[Step, str] = {
        step: os.path.realpath(getattr(sources.settings.roots, step)) for step in get_args(Step)
    }
    return plan_archive(export.files, root_reals, sources.settings.limits.read_chunk_bytes)
