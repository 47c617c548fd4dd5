"""The plan of an export's ZIP: which files go in, under which entry names, at
which offsets, and how long the whole is, before a byte of a file is read.

A file goes through three stages, each with one name, from the disk to the
ZIP (the names of the manifest and the archive alike):

- **scanned file**: what a scan of a run folder saw of a regular file (its
  path, size, mtime, ctime, device, inode), kept compact as a ``FileRecord``
  in a ``FolderScan`` (scanning.py);
- **listed file**: a scanned file under its step and rel_path, as the
  manifest lists it: ``manifest.ListedFile`` (without a URL: a ZIP has
  none); in the manifest's JSON it is an ``ExportFile``, the name the API's
  schema gives it. An ``Export`` holds one project's listed files;
- **planned entry**: a listed file as this module plans it into the ZIP, with
  its entry name (names.py) and its offsets: :class:`PlannedEntry`. An
  ``ExportArchive`` (archive.py) holds the planned entries of one download
  and makes its bytes.

What identifies a version of a file (its **snapshot**: the ETag, the CRC
cache's key, what a checked read compares) is its device, inode, size, mtime
and **ctime**. The mtime alone does not: anyone who may write a file may set
it (``cp -p``, ``rsync -t``, ``tar x``, ``touch -d``, ``os.utime``), so a file
rewritten in place at the same size with its mtime restored looked unchanged.
The ctime (the inode's last change) cannot be set by users and moves on every
write, ``utime``, rename and chmod; it comes from the same stat.

The layout is computed here, from the lengths of the records zipstream-ng
writes (records.py), so the exact size is known before the first byte and a
range needs nothing before it: each entry is its local header (with the
ZIP64 sizes when the file needs them) then its data; the central directory
and the end records follow the last entry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from zipfile import ZIP64_LIMIT, ZIP_FILECOUNT_LIMIT

from ..core.manifest import ListedFile, Step
from ..core.safe_files import FolderFiles
from .names import MAX_ARCNAME_BYTES, ArcnameAllocator

log = logging.getLogger("export_service.archive")  # obs/logs.py: LOGGER_NAMES

ZIP_MIN_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_DATE = (2107, 12, 31, 23, 59, 58)

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


def is_planned_file(info: os.stat_result, entry: PlannedEntry) -> bool:
    """Whether ``info`` is the stat of the very version that was planned (its snapshot)."""
    return (
        info.st_ino == entry.ino
        and info.st_size == entry.size
        and info.st_mtime_ns == entry.mtime_ns
        and info.st_ctime_ns == entry.ctime_ns
        and info.st_dev == entry.dev
    )


def zip64(value: int) -> bool:
    """The one ZIP64 rule: a size or offset goes in a ZIP64 record when it is
    beyond where zipfile and zipstream-ng put the limit (2 GiB). (An entry
    count has its own limit, ``ZIP_FILECOUNT_LIMIT``.)"""
    return value > ZIP64_LIMIT


_LOCAL_HEADER = 30  # fixed part of a local file header (then name, extra field)
_CENTRAL_HEADER = 46  # fixed part of a central directory header
_ZIP64_SIZES = 20  # a ZIP64 extra field holding the two sizes
_END_RECORD = 22
_ZIP64_END_RECORDS = 56 + 20  # ZIP64 end of central directory record and locator


def name_length(arcname: str) -> int:
    """The length of the name as zipstream-ng writes it (ASCII, else UTF-8)."""
    return len(arcname) if arcname.isascii() else len(arcname.encode("utf-8"))


def footer_size(entries: list[PlannedEntry], central_offset: int) -> int:
    """What zipstream-ng's footer writes for these entries: the central
    directory starting at ``central_offset``, and the end records."""
    size = _END_RECORD
    for entry in entries:
        extras = 2 * zip64(entry.size) + zip64(entry.header_offset)
        size += _CENTRAL_HEADER + name_length(entry.arcname) + (4 + 8 * extras if extras else 0)
    directory = size - _END_RECORD
    if len(entries) >= ZIP_FILECOUNT_LIMIT or zip64(central_offset) or zip64(directory):
        size += _ZIP64_END_RECORDS
    return size


def _dos_date_time(seconds: int) -> tuple[int, int, int, int, int, int]:
    """A time in UTC, clamped to what a ZIP can hold."""
    stamp = time.gmtime(seconds)[:6]
    return min(max(ZIP_MIN_DATE, stamp), _ZIP_MAX_DATE)


def plan_entries(
    files: Iterable[ListedFile], root_reals: Mapping[Step, str]
) -> tuple[list[PlannedEntry], dict[str, str]]:
    """Name every file of the export and lay the entries out (blocking): the
    planned entries, and the files left out (``skipped``).

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
            if name_length(arcname) > MAX_ARCNAME_BYTES:
                log.warning(
                    "leaving %s/%s out of the ZIP: its entry name has %d bytes, more than "
                    "the %d a ZIP can hold",
                    step,
                    rel_path[:200] + "...",
                    name_length(arcname),
                    MAX_ARCNAME_BYTES,
                )
                skipped[f"{step}/{rel_path}"] = "its name is too long for a ZIP"
                continue
            data_offset = offset + _LOCAL_HEADER + name_length(arcname) + zip64(size) * _ZIP64_SIZES
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
    return entries, skipped
