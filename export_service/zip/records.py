"""The ZIP records of planned entries, written by zipstream-ng.

zipstream-ng writes every record of the ZIP: each local header
(``ZipStreamInfo.FileHeader``, zipfile's ``ZipInfo`` method), and the central
directory and end records (``ZipStream.footer()``). The service lays the
entries out itself (plan.py) and feeds the data, since zipstream-ng's own way
of adding a file writes a data descriptor after it, which streaming readers
cannot use, and would read every file before a range.

``footer()`` has no public way in for entries it did not write: it lists
``ZipStream._filelist`` and starts at ``ZipStream._pos``, so :func:`footer`
sets those two private attributes. They stay rather than a central directory
written by hand, since zipstream-ng's writer is the one that ZIP64 and every
reader were tested against; what the footer makes of them is pinned by
tests/test_archive.py (``test_zipstreams_private_footer_inputs``: the
directory's offset and every entry read back from the bytes, ZIP64 records
included), which fails the first release that renames or reinterprets either.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

from zipstream import ZipStream
from zipstream.ng import ZipStreamInfo

from .plan import ZIP_MIN_DATE, PlannedEntry, zip64

# Entries are regular files made on Unix, readable by everyone who extracts them.
_FILE_ATTRIBUTES = (stat.S_IFREG | 0o644) << 16
_UNIX = 3
_DEFAULT_VERSION = 20  # what a ZIP reader needs for stored entries (2.0)


class Records:
    """zipstream-ng's records of the entries, from one ``ZipStreamInfo`` refilled
    per entry (making one per record was a tenth of a small file's cost):
    stored, sized, its CRC known, no data descriptor, mode 0644 on Unix, the
    file's mtime in UTC. Only attributes zipfile documents are set."""

    def __init__(self) -> None:
        self._info = ZipStreamInfo("file", ZIP_MIN_DATE)
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
        header: bytes = self.info(entry, crc).FileHeader(zip64(entry.size))
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
        return map(Records().info, self._entries, self._crcs)


def footer(entries: list[PlannedEntry], crcs: list[int], offset: int) -> Iterator[bytes]:
    """The central directory (and ZIP64 end records if needed) and the end
    record, written by zipstream-ng's ``ZipStream.footer()``, the directory
    starting at ``offset``: the entries go in as ``_filelist``, the offset as
    ``_pos`` (the two private names; see this module's docstring)."""
    stream = ZipStream(sized=False)
    stream._filelist = _CentralDirectory(entries, crcs)
    stream._pos = offset
    return iter(stream.footer())
