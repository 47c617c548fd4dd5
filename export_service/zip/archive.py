"""The bytes of a planned download: :class:`ExportArchive`, all of them or one
range, and :func:`plan_archive`, which makes one.

Blocking code, run off the event loop by the caller. The archive is stored
(no compression), every entry with its CRC-32 and sizes in its local header
and no data descriptor, so its exact length is known before the first byte
(plan.py lays it out) and readers that stream it front to back can.
zipstream-ng writes every ZIP record (records.py); the archive feeds the data
itself, through checked reads (checked_reads.py), and learns or checks each
file's CRC (crcs.py). A run of 10,000 small files is mostly per-file
overhead, so that path is kept short: one generator per file, one folder
check per folder, one read per small file.
"""

from __future__ import annotations

import hashlib
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from importlib.metadata import version

from ..core.etags import hashed_etag
from ..core.manifest import ListedFile, Step
from ..core.safe_files import FolderFiles
from .checked_reads import read_planned, read_whole
from .crcs import CrcCache, check_sent, crc32, known_crc
from .plan import PlannedEntry, footer_size, plan_entries
from .records import Records, footer


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
    entry's offsets, the total size) is computed at planning, so a range
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
        self.size = self._central_offset + footer_size(entries, self._central_offset)
        # Computed here, in the planning hop, not on the event loop.
        self.etag = self._etag()
        self.last_modified = (
            datetime.fromtimestamp(max(e.mtime_ns for e in entries) // 1_000_000_000, UTC)
            if entries
            else None
        )

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

    def _entry(
        self,
        entry: PlannedEntry,
        files: FolderFiles,
        records: Records,
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
            check_sent(self._crcs, entry, sent, cached)
            if self._crcs is not None:
                self._crcs.put(entry.snapshot, sent)
            return sent
        crc = yield from known_crc(self._crcs, entry, files, self._chunk_bytes, cancelled)
        yield from _cut(iter((records.local_header(entry, crc),)), entry.header_offset, start, end)
        if stop > 0:
            sent = yield from self._data(entry, files, 0, stop)
            if sent is not None:
                check_sent(self._crcs, entry, sent, crc)
        return crc

    def _data(
        self, entry: PlannedEntry, files: FolderFiles, first: int, stop: int
    ) -> Generator[bytes, None, int | None]:
        """Bytes ``first`` to ``stop`` of an entry's file; returns their CRC-32
        when they are all of it (a part needs none)."""
        chunks = read_planned(entry, files, self._chunk_bytes, first, stop)
        if first or stop != entry.size:
            yield from chunks
            return None
        crc = 0
        for chunk in chunks:
            crc = crc32(chunk, crc)
            yield chunk
        return crc

    def chunks(
        self, start: int = 0, end: int | None = None, cancelled: threading.Event | None = None
    ) -> Generator[bytes, None, None]:
        """The archive's bytes from ``start`` to ``end`` (inclusive; default:
        all). Blocking. Only the entries the range touches are read, each from
        where the range starts in it; the CRCs of the entries before the range
        (for the central directory) come from the cache or one pass each, once
        the range reaches the directory. Closing it closes any open file.

        A pass that reads a file only for its CRC yields ``crcs.PASS_STEP``
        (no bytes) every ``crcs.PASS_SLICE`` bytes, so that whoever drives it
        can share the thread between downloads; it stops with
        ``crcs.PassCancelled`` between two chunks once ``cancelled`` is set."""
        end = self.size - 1 if end is None else end
        crcs: list[int | None] = [None] * len(self.entries)
        files = FolderFiles()
        records = Records()
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
                    data = read_whole(entry, files)
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
                    learned = crcs[index] = yield from known_crc(
                        self._crcs, entry, files, self._chunk_bytes, cancelled
                    )
                known.append(learned)
            yield from _cut(
                footer(self.entries, known, self._central_offset),
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
    """Name every file of the export and lay out the ZIP (blocking): plan.py's
    :func:`~.plan.plan_entries`, as one download."""
    entries, skipped = plan_entries(files, root_reals)
    return ExportArchive(entries, skipped, chunk_bytes, crcs, selection_key)
