"""The CRC-32 of a planned file, which its local header must carry before its
data (streaming readers need it there): ISA-L's function, the cache of the
CRCs learned, the pass that reads a file only to learn its CRC, and the check
that the data sent had the CRC its header said.

A file read in one chunk is read before its header (archive.py); a bigger one
takes its CRC from the cache, else from one pass over it just before its
header. The pass that sends the data computes the CRC again and cuts the
download if it differs: the file was rewritten in between, even at the same
size and mtime.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Iterable

from isal import isal_zlib

from ..core.safe_files import FolderFiles
from ..errors import SourceChanged
from .checked_reads import read_planned
from .plan import PlannedEntry, Snapshot

# Every CRC-32 of the ZIP path: ISA-L's, about 6x zlib's (bench/crc32.py),
# which zipstream-ng would use.
crc32 = isal_zlib.crc32


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


# A pass that reads a file only to learn its CRC-32 yields this (no bytes)
# after every PASS_SLICE bytes read: the caller can stop there and let the
# thread do other work (streaming.py ends a batch at it), and a pass over a
# file of 32 GiB is many short steps, not one.
PASS_STEP = b""
PASS_SLICE = 8 * 1024 * 1024


class PassCancelled(Exception):
    """The download a CRC pass was for has ended (cut, or the service stops)."""


def file_crc(
    entry: PlannedEntry, files: FolderFiles, chunk_bytes: int, cancelled: threading.Event | None
) -> Generator[bytes, None, int]:
    """Read a planned file to learn its CRC-32 (it must still be the planned
    file); yields :data:`PASS_STEP` every :data:`PASS_SLICE` bytes, returns
    the CRC. :class:`PassCancelled` (the file closed) as soon as ``cancelled``
    is set, checked between chunks."""
    crc = 0
    since_step = 0
    for chunk in read_planned(entry, files, chunk_bytes):
        if cancelled is not None and cancelled.is_set():
            raise PassCancelled(f"{entry.rel_path}: its download ended during its CRC pass")
        crc = crc32(chunk, crc)
        since_step += len(chunk)
        if since_step >= PASS_SLICE:
            since_step = 0
            yield PASS_STEP
    return crc


def known_crc(
    cache: CrcCache | None,
    entry: PlannedEntry,
    files: FolderFiles,
    chunk_bytes: int,
    cancelled: threading.Event | None,
) -> Generator[bytes, None, int]:
    """An entry's CRC-32 from the cache, else from one pass over the file
    (yielding :data:`PASS_STEP` as it goes), which fills the cache."""
    crc = cache.get(entry.snapshot) if cache is not None else None
    if crc is None:
        crc = yield from file_crc(entry, files, chunk_bytes, cancelled)
        if cache is not None:
            cache.put(entry.snapshot, crc)
    return crc


def check_sent(cache: CrcCache | None, entry: PlannedEntry, sent: int, known: int | None) -> None:
    """The CRC-32 of the data just sent must be the one its header said
    (or the cache holds, when the range left the header out): else the file
    was rewritten in between, even at the same size and mtime, and the
    download is cut rather than end as a complete-looking, broken ZIP (the
    CRC is dropped from the cache: the next download learns the new one)."""
    if known is not None and sent != known:
        if cache is not None:
            cache.discard(entry.snapshot)
        raise SourceChanged(f"{entry.rel_path}: was rewritten (its CRC-32 changed)")
