"""LinkStore: the links file of one path, read cached and written locked.

Reads take no lock. The parsed links are cached by the file's (mtime_ns, size,
inode); a change is parsed once, by the first reader to see it, while the
others wait for that parse (single-flight) instead of parsing it again.
Writes go through :mod:`.locked_writes` and :mod:`.splice`.

The service parses at most ``links.max_bytes`` of it: a larger file counts
as unusable (no link is used, readiness says why, a PUT is a 503
``links_file_too_large``) without being read, so neither the parse's memory
nor its hold on the GIL grows with whatever the file holds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..core.run_ids import run_id_problem
from ..errors import LinksFileCorrupt, LinksFileTooLarge, LinksFileUnwritable
from . import locked_writes
from .records import Links, StoredLink, Unusable, excerpt, parse_links
from .regular_files import NotARegularFile, open_regular
from .splice import with_link

log = logging.getLogger("export_service.links")  # obs/logs.py: LOGGER_NAMES

# The most of the links file the service parses (``links.max_bytes``).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_FileKey = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    key: _FileKey | None  # None: the file does not exist
    links: Links
    problem: str | None  # why the file is unusable, or None
    # The records that hold no link at all (not an object, no string
    # param_run_id), each with why: passed over, as the backend's helper does.
    unusable: Unusable = ()


_ABSENT = _Snapshot(None, {}, None)


class LinkStore:
    """The links file of one path: cached, single-flight reads; locked,
    atomic writes that keep every other record as it is.

    Safe to share between threads and with other processes writing the same
    file. The methods block (they read or write the file): the service calls
    them off the event loop. Reading never raises: a file that is missing
    holds no links, and one that cannot be used holds none either and says
    why in :meth:`problem`.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._snapshot = _ABSENT
        self._reported_key: _FileKey | None = None
        self._parsing = threading.Lock()

    # -- reading ---------------------------------------------------------

    def _current(self) -> _Snapshot:
        # One reader at a time checks the file and, after a change, parses it;
        # the others wait here and then find the new snapshot cached.
        with self._parsing:
            try:
                with open(open_regular(self.path), "rb") as handle:
                    info = os.fstat(handle.fileno())
                    key = (info.st_mtime_ns, info.st_size, info.st_ino)
                    if self._snapshot.key == key:
                        return self._snapshot
                    raw = self._read_bounded(handle, info.st_size)
                    too_large = self._too_large(max(info.st_size, len(raw)))
                    if too_large:
                        return self._remember_problem(key, too_large)
            except FileNotFoundError:
                self._snapshot = _ABSENT
                return _ABSENT
            except OSError as error:
                return _Snapshot(None, {}, f"cannot be read ({error.strerror})")
            return self._remember(key, raw)

    def _read_bounded(self, handle: BinaryIO, size: int) -> bytes:
        """The file's bytes, never more than one past ``max_bytes`` (nothing
        when its size is already over: a file growing meanwhile is caught by
        the length read)."""
        return b"" if size > self.max_bytes else handle.read(self.max_bytes + 1)

    def _too_large(self, size: int) -> str | None:
        if size <= self.max_bytes:
            return None
        return f"{size:,} bytes, over links.max_bytes ({self.max_bytes:,}); it is not read"

    def _remember_problem(self, key: _FileKey, problem: str) -> _Snapshot:
        snapshot = self._snapshot = _Snapshot(key, {}, problem)
        if self._reported_key != key:
            self._reported_key = key
            log.error("links file %s is unusable: %s; no links are used", self.path, problem)
        return snapshot

    def _remember(self, key: _FileKey, raw: bytes) -> _Snapshot:
        links, problem, unusable = parse_links(raw)
        if problem:
            return self._remember_problem(key, problem)
        snapshot = self._snapshot = _Snapshot(key, links, None, unusable)
        if self._reported_key != key:
            self._reported_key = key
            self._report_ignored(snapshot)
        return snapshot

    @staticmethod
    def _ignored(snapshot: _Snapshot) -> list[tuple[str, str]]:
        invalid = [
            (render_run_id, f"its param_run_id {excerpt(link.param_run_id)} {problem}")
            for render_run_id, link in snapshot.links.items()
            if (problem := run_id_problem(link.param_run_id)) is not None
        ]
        return [*snapshot.unusable, *invalid]

    def _report_ignored(self, snapshot: _Snapshot) -> None:
        """One warning per change of the file for the records it ignores (no
        object, no string param_run_id, or one that is not a valid run id):
        how many, and a few examples, cut short (a value may be megabytes
        long)."""
        ignored = self._ignored(snapshot)
        if ignored:
            examples = "; ".join(f"{excerpt(r)}: {why}" for r, why in ignored[:3])
            log.warning(
                "links file %s: ignoring %d record(s) that hold no usable link (e.g. %s)",
                self.path,
                len(ignored),
                examples,
            )

    def ignored(self) -> list[tuple[str, str]]:
        """Every record the service passes over, as (render_run_id, why): not
        an object, no string ``param_run_id``, or one that is not a valid run
        id. Empty when the file is missing or unusable."""
        return self._ignored(self._current())

    def problem(self) -> str | None:
        """Why the links file cannot be used (for readiness), or None."""
        return self._current().problem

    def all_stored_links(self) -> Links:
        """Every record as stored (a copy), whatever its param run id; empty
        when the file is missing or unusable (see :meth:`problem`)."""
        return dict(self._current().links)

    def stored_link(self, render_run_id: str) -> StoredLink | None:
        """The record of ``render_run_id`` as stored, whatever its param run
        id (the backend's helper returns it so); None when there is none (or
        the file is unusable)."""
        return self._current().links.get(render_run_id)

    def valid_link(self, render_run_id: str) -> StoredLink | None:
        """The link of ``render_run_id`` when its param run id is a valid run
        id, else None (what the service serves)."""
        link = self.stored_link(render_run_id)
        if link is None or run_id_problem(link.param_run_id) is not None:
            return None  # reported once when the file was read, not per request
        return link

    def valid_param_run_id(self, render_run_id: str) -> str | None:
        """The param run id linked to ``render_run_id`` when it is a valid run
        id, else None."""
        link = self.valid_link(render_run_id)
        return link.param_run_id if link else None

    def write_problem(self) -> str | None:
        """Why a write would fail now (for readiness), or None: the folders
        that would get the lock file and the temp file must be writable by
        this process, and the file system must have room."""
        target = Path(os.path.realpath(self.path))
        if self.path.is_symlink() and not target.parent.is_dir():
            return f"it is a symbolic link to {str(target)!r}, whose folder does not exist"
        for folder in dict.fromkeys((self.path.parent, target.parent)):
            existing = locked_writes.nearest_existing(folder)
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"folder {str(existing)!r} is not writable by this process"
            space = os.statvfs(existing)
            # File systems without fixed counts (btrfs has no inode count) report 0 totals.
            if (space.f_blocks and not space.f_bavail) or (space.f_files and not space.f_favail):
                return f"folder {str(existing)!r} is on a full file system"
        lock_path = locked_writes.lock_path(target)
        if lock_path.exists() and not lock_path.is_file():
            return f"lock file {str(lock_path)!r} is not a regular file"
        if lock_path.exists() and not os.access(lock_path, os.W_OK):
            return f"lock file {str(lock_path)!r} is not writable by this process"
        return None

    # -- writing ---------------------------------------------------------

    def write_link(self, render_run_id: str, param_run_id: str) -> StoredLink:
        """Set the link in the file, keeping the record's other keys and every
        other record; the link as written.

        :class:`LinksFileCorrupt` when the file is unusable (it is left as it
        is), :class:`LinksFileUnwritable` when it cannot be written (nothing
        is left behind).
        """
        try:
            with locked_writes.exclusive(self.path) as target:
                text = self._validated_text(target)
                link = StoredLink(param_run_id, time.time())
                try:
                    content = with_link(text, render_run_id, link)
                except RecursionError:
                    # The file was parsed (perhaps cached) from a shallower call
                    # stack than this writer's, e.g. a backend thread deep in
                    # its framework calling link_param_to_render.
                    raise LinksFileCorrupt(
                        "the links file nests too deeply to be rewritten from here;"
                        " it is left as it is"
                    ) from None
                locked_writes.replace(target, content.encode())
                return link
        except OSError as error:
            where = error.filename or self.path.parent
            raise LinksFileUnwritable(
                f"the links file cannot be written ({error.strerror}: {str(where)!r})"
            ) from None

    def _validated_text(self, target: Path) -> str:
        """The file's text, read under the lock; "{}" when it does not exist."""
        try:
            with open(open_regular(target), "rb") as handle:
                info = os.fstat(handle.fileno())
                raw = self._read_bounded(handle, info.st_size)
        except FileNotFoundError:
            return "{}"
        except NotARegularFile as error:
            raise LinksFileCorrupt(
                f"the links file is unusable ({error.strerror}); it is left as it is"
            ) from None
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        too_large = self._too_large(max(info.st_size, len(raw)))
        if too_large:
            with self._parsing:
                self._remember_problem(key, too_large)
            raise LinksFileTooLarge(
                f"the links file is unusable ({too_large}); it is left as it is"
            )
        with self._parsing:
            snapshot = self._snapshot if self._snapshot.key == key else self._remember(key, raw)
        if snapshot.problem:
            raise LinksFileCorrupt(
                f"the links file is unusable ({snapshot.problem}); it is left as it is"
            )
        return raw.decode("utf-8")
