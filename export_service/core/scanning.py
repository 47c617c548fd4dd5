"""Finding run folders and listing their files.

Plain blocking functions: callers run a whole lookup and scan off the event
loop in one hop. Nothing here ever yields a path outside its root: run folders
are matched only against names listed in the root, and a symbolic link is
followed only when its real target lies inside the root's real path.

Entries may be swapped for links, removed or renamed while they are looked
at; every path resolution here treats such a race as the entry not being
there (never as an error to report to a client).
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

from ..errors import ExportTooLarge, raise_if_out_of_descriptors
from .safe_files import (
    CHILD_FOLDER_FLAGS,
    fd_real_path,
    is_within,
    open_folder_inside,
    proc_fd_path,
    resolved,
)

log = logging.getLogger("export_service.scanning")  # obs/logs.py: LOGGER_NAMES


class ScanStopped(Exception):
    """The scan's stop flag was set (its client hung up, the service is
    stopping): it ended at its next folder, its descriptors closed."""


class TooManyFolders(ExportTooLarge):
    """More folders than the scan's ``max_folders``."""


# A folder's listing checks the stop flag once per this many entries (a run
# folder may hold hundreds of thousands directly).
_STOP_CHECK_EVERY = 1024


def _folder_inside(root_real: str, path: str) -> str | None:
    """The resolved path of ``path`` when it is a folder inside the root."""
    real = resolved(path)
    if real is None or not is_within(root_real, real):
        return None
    try:
        return real if stat.S_ISDIR(os.stat(real).st_mode) else None
    except OSError:
        return None


def run_folder_names(root: str) -> list[str] | None:
    """Names directly inside ``root``; None when it cannot be listed (the
    export that misses the root says why: exports.root_problem)."""
    try:
        with os.scandir(root) as entries:
            return [entry.name for entry in entries]
    except OSError as error:
        raise_if_out_of_descriptors(error)
        return None


def root_problem(root: str) -> OSError | None:
    """Why ``root`` cannot be searched for run folders (it cannot be listed,
    or paths inside it cannot be reached: a folder of mode 0700 that another
    user owns), or None. Two system calls."""
    try:
        os.close(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        os.stat(os.path.join(root, "."))  # needs search (x) permission
    except OSError as error:
        raise_if_out_of_descriptors(error)
        # Absent (server.require_roots = false; /readyz says so): no run yet.
        return None if error.errno in _GONE else error
    return None


class RunFolderIndex:
    """The names in one root, listed again only when the root changes.

    A root of 100,000 run folders takes tens of milliseconds to list; the
    index answers a lookup with a stat of the root and a binary search. Names
    are kept reversed and sorted, so "ends with ``_<id>``" is a prefix search.
    Creating or removing a run folder changes the root's mtime; the listing
    is keyed on the root's device, inode and mtime, so a root swapped for
    another folder (a mount, a rename) with the same mtime is listed again.
    A listing taken within a second of that mtime is not trusted (file
    systems with coarse timestamps could hide a change made in the same tick).
    """

    _SETTLE_NS = 1_000_000_000

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None  # (st_dev, st_ino, st_mtime_ns)
        self._trusted = False
        self._names: frozenset[str] = frozenset()
        self._reversed: list[str] = []

    def _refresh(self) -> None:
        try:
            info = os.stat(self.root)
            key: tuple[int, int, int] | None = (info.st_dev, info.st_ino, info.st_mtime_ns)
        except OSError:
            key = None
        with self._lock:
            if self._trusted and key == self._key:
                return
            listed = run_folder_names(self.root) if key is not None else None
            names = listed or []
            self._names = frozenset(names)
            self._reversed = sorted(name[::-1] for name in names)
            self._key = key
            # A listing that failed is not kept: a chmod that makes the root
            # readable again leaves its mtime as it was.
            self._trusted = (
                listed is not None and key is not None and time.time_ns() - key[2] > self._SETTLE_NS
            )

    def candidates(self, run_id: str) -> list[str]:
        """Names that are ``run_id`` or end with ``_<run_id>``, newest first."""
        self._refresh()
        names, reversed_names = self._names, self._reversed
        key = ("_" + run_id)[::-1]
        found = [run_id] if run_id in names else []
        start = bisect.bisect_left(reversed_names, key)
        for candidate in reversed_names[start:]:
            if not candidate.startswith(key):
                break
            found.append(candidate[::-1])
        return sorted(found, reverse=True)

    def newest(self, run_id: str) -> str | None:
        """The greatest matching name that is a folder inside the root."""
        root_real = resolved(self.root)
        if root_real is None:
            return None
        for name in self.candidates(run_id):
            if _folder_inside(root_real, os.path.join(self.root, name)) is not None:
                return name
        return None


def exact_run_folder(root: str, run_id: str) -> str | None:
    """``run_id`` when ``<root>/<run_id>`` is a folder inside the root.

    ``run_id`` must already be validated (no separators, not ``.``/``..``).
    """
    root_real = resolved(root)
    if root_real is None:
        return None
    return run_id if _folder_inside(root_real, os.path.join(root, run_id)) else None


def display_name(segment: str) -> str:
    """A file name as valid Unicode text: undecodable bytes become U+FFFD."""
    if segment.isascii():
        return segment
    return os.fsencode(segment).decode("utf-8", "replace")


# Why a path below a run folder could not be listed (the ``reason`` of the
# unlisted count); any other error counts as "error". (Out of descriptors is
# not a path's problem: that is OutOfDescriptors, a 503.)
UNLISTED_REASONS = {
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.ENAMETOOLONG: "name_too_long",
}
# A path that is gone, or is no longer what the listing saw (a folder swapped
# for a link or a file): not there, nothing to report.
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


class ScannedFolder(NamedTuple):
    real: str  # its real path (built from its parent's: it may exceed PATH_MAX)
    parts: tuple[str, ...]  # its path inside the run folder, as named on disk


# One scanned file, kept compact: an exact tuple of strings and ints, which the
# garbage collector stops tracking (a NamedTuple it tracks for good; a million
# of those made every full collection hold the GIL for a second).
# (folder index, name on disk, size or None, mtime_ns, ctime_ns, dev, ino,
# the real path of a link's target or None); the ctime is the inode's last
# change, which no one can set (zip/plan.py: a file's snapshot).
FileRecord = tuple[int, str, int | None, int, int, int, int, str | None]


@dataclass(slots=True)
class FolderScan:
    """What one scan of a run folder found: its folders, its files (in the
    order of their ``/``-joined display paths, as the manifest lists them),
    and how many paths below it could not be listed, by reason."""

    folders: list[ScannedFolder] = field(default_factory=list)
    records: list[FileRecord] = field(default_factory=list)
    unlisted: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.records)

    def path(self, record: FileRecord) -> str:
        """The real path a record's file is read from."""
        folder, name, *_, target = record
        return target or f"{self.folders[folder].real}/{name}"


_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def _link_target(link_path: str, root_real: str) -> tuple[str, os.stat_result] | None:
    """The real path and stat of what a link points to, when it lies inside
    the root. Taken from an ``O_PATH`` descriptor of the target (no read
    permission needed, a FIFO does not block), so the stat is of the checked
    file itself. OSError when it cannot be resolved or opened."""
    target = resolved(link_path)
    if target is None:
        raise FileNotFoundError(errno.ENOENT, "changed while resolved", link_path)
    if not is_within(root_real, target):
        log.warning("skipping %s: its link points outside the root", link_path)
        return None
    fd = os.open(target, _PATH_FLAGS)
    try:
        real = fd_real_path(fd, target)
        if not is_within(root_real, real):
            log.warning("skipping %s: its target moved outside the root", link_path)
            return None
        return real, os.fstat(fd)
    finally:
        os.close(fd)


# What a listing holds until it is walked, sorted by its first field: a file
# (its display name, its record) or a folder (its display name and ``/``, its
# name, the real path of a link's target or None).
_FileItem = tuple[str, FileRecord]
_FolderItem = tuple[str, str, str | None]

# Which files of a folder a selective scan takes, given the folder's display
# parts inside the run: None for all, else the display names of those it takes.
FolderChoice = Callable[[tuple[str, ...]], "frozenset[str] | None"]


@dataclass(slots=True)
class _Frame:
    fd: int | None  # closed once its last subfolder is opened
    folder: int
    items: list[_FileItem | _FolderItem]  # reversed: the next one is last
    folders_left: int


class _Walk:
    """One scan: folders are listed through descriptors, each subfolder opened
    relative to its parent's descriptor without following links (so neither
    depth nor path length limits it), and walked in display-path order so the
    files come out sorted without one big sort."""

    def __init__(
        self,
        root_real: str,
        run_folder: str,
        max_files: int | None,
        max_folders: int | None = None,
        stop: threading.Event | None = None,
        choose: FolderChoice | None = None,
    ) -> None:
        self.root_real = root_real
        self.choose = choose
        self.run_folder = run_folder
        self.max_files = max_files
        self.max_folders = max_folders
        self.stop = stop
        self.listed_files = 0
        self.scan = FolderScan()
        self.visited: set[tuple[int, int]] = set()
        self.devs: dict[int, int] = {}  # one int object per device, shared by the records
        self.frames: list[_Frame] = []

    def unlisted(self, parts: tuple[str, ...], error: OSError) -> None:
        raise_if_out_of_descriptors(error)  # every later path would look unlisted too
        reason = UNLISTED_REASONS.get(error.errno or 0, "error")
        self.scan.unlisted[reason] += 1
        shown = "/".join(map(display_name, (self.run_folder, *parts)))
        log.warning("cannot list %s: %s (%s)", shown, error.strerror, reason)

    def count_folder(self) -> None:
        """One more folder listed (the run folder is the first: ``visited``
        holds it before the walk starts)."""
        if self.max_folders is not None and len(self.visited) > self.max_folders:
            raise TooManyFolders(f"more than {self.max_folders:,} folders")

    def count_file(self) -> None:
        self.listed_files += 1
        if self.max_files is not None and self.listed_files > self.max_files:
            raise ExportTooLarge(f"more than {self.max_files:,} files")

    def check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            log.info(
                "stopped scanning %s after %d folder(s): no one waits for it",
                display_name(self.run_folder),
                len(self.scan.folders),
            )
            raise ScanStopped(f"the scan of {display_name(self.run_folder)!r} was stopped")

    def record(
        self, folder: int, name: str, info: os.stat_result | None, target: str | None
    ) -> FileRecord:
        if info is None:
            return (folder, name, None, 0, 0, 0, 0, None)
        dev = self.devs.setdefault(info.st_dev, info.st_dev)
        return (
            folder,
            name,
            info.st_size,
            info.st_mtime_ns,
            info.st_ctime_ns,
            dev,
            info.st_ino,
            target,
        )

    def enter(self, fd: int, real: str, parts: tuple[str, ...]) -> None:
        """List the open folder ``fd`` and put it on top of the walk (takes
        ``fd``). :class:`TooManyFolders` past ``max_folders``,
        :class:`ScanStopped` once the stop flag is set."""
        index = len(self.scan.folders)
        self.scan.folders.append(ScannedFolder(real, parts))
        takes = None if self.choose is None else self.choose(tuple(map(display_name, parts)))
        frame = _Frame(fd, index, [], 0)
        self.frames.append(frame)
        self.check_stop()
        try:
            with os.scandir(fd) as listing:
                for count, entry in enumerate(listing, 1):
                    if count % _STOP_CHECK_EVERY == 0:
                        self.check_stop()
                    item = self.item(entry, index, real, parts, takes)
                    if item is not None:
                        frame.items.append(item)
                        frame.folders_left += len(item) == 3
        except OSError as error:
            self.unlisted(parts, error)
        frame.items.sort(key=itemgetter(0), reverse=True)

    def item(
        self,
        entry: os.DirEntry[str],
        folder: int,
        folder_real: str,
        folder_parts: tuple[str, ...],
        takes: frozenset[str] | None = None,
    ) -> _FileItem | _FolderItem | None:
        name = entry.name
        target = None
        taken = takes is None or display_name(name) in takes
        if not taken and not entry.is_dir(follow_symlinks=False) and not entry.is_symlink():
            return None  # a file outside the selection: not even stat'ed
        try:
            if entry.is_symlink():
                linked = _link_target(f"{folder_real}/{name}", self.root_real)
                if linked is None:
                    return None
                target, info = linked
            else:
                info = entry.stat(follow_symlinks=False)
        except OSError as error:
            raise_if_out_of_descriptors(error)
            if entry.is_file(follow_symlinks=False):
                if not taken:
                    return None
                self.count_file()  # listed with bytes null, as it always was
                return (display_name(name), self.record(folder, name, None, None))
            if error.errno not in _GONE:
                self.unlisted((*folder_parts, name), error)
            return None
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in self.visited:
                return None
            self.visited.add(key)
            self.count_folder()
            return (display_name(name) + "/", name, target)
        if stat.S_ISREG(info.st_mode) and taken:
            self.count_file()
            return (display_name(name), self.record(folder, name, info, target))
        return None

    def open_child(self, parent: _Frame, item: _FolderItem) -> None:
        _, name, target = item
        parent_folder = self.scan.folders[parent.folder]
        parts = (*parent_folder.parts, name)
        try:
            if target is not None:
                opened = open_folder_inside(target, self.root_real)
            else:
                assert parent.fd is not None
                fd = os.open(name, CHILD_FOLDER_FLAGS, dir_fd=parent.fd)
                opened = self.checked_child(fd, f"{parent_folder.real}/{name}")
        except OSError as error:
            if error.errno not in _GONE:
                self.unlisted(parts, error)
            return
        if opened is None:
            shown = "/".join(map(display_name, (self.run_folder, *parts)))
            log.warning("skipping %s: it now lies outside the root", shown)
            return
        self.enter(*opened, parts)

    def checked_child(self, fd: int, path: str) -> tuple[int, str] | None:
        """``fd`` and the real path of a folder just opened below its parent,
        when it is still inside the root (its parent may have been moved out
        meanwhile); closes ``fd`` and None otherwise. Beyond PATH_MAX the
        kernel cannot name it: then it is ``path``, its parent's child."""
        real = proc_fd_path(fd)
        if real is None:
            return fd, path
        if is_within(self.root_real, real):
            return fd, real
        os.close(fd)
        return None

    def run(self, top_fd: int, top_real: str) -> FolderScan:
        try:
            self.enter(top_fd, top_real, ())
            while self.frames:
                frame = self.frames[-1]
                if not frame.items:
                    self.close(self.frames.pop())
                    continue
                item = frame.items.pop()
                if len(item) == 2:
                    self.scan.records.append(item[1])
                    continue
                frame.folders_left -= 1
                self.open_child(frame, item)
                if frame.folders_left == 0:
                    self.close(frame)  # its last subfolder is open: no need of it
        finally:
            while self.frames:
                self.close(self.frames.pop())
        return self.scan

    @staticmethod
    def close(frame: _Frame) -> None:
        if frame.fd is not None:
            os.close(frame.fd)
            frame.fd = None


def scan_run_folder(
    root: str,
    folder: str,
    max_files: int | None = None,
    max_folders: int | None = None,
    stop: threading.Event | None = None,
    choose: FolderChoice | None = None,
) -> FolderScan:
    """Every regular file below ``<root>/<folder>``, recursively, sorted by
    their display paths; with ``choose`` (a selective export's
    :meth:`.selection.Selection.folder_choice`), only the files it takes.

    Symbolic links (to files or folders) are followed only into the root;
    folder cycles are cut; FIFOs, sockets and devices are left out. The run
    folder is opened through a descriptor whose real path is checked; each
    folder below it is opened relative to its parent's descriptor without
    following a link, and its entries are stat'ed relative to it, so a
    folder swapped for a link during the scan cannot bring in a name or size
    from outside the root, and no depth is too deep. A path that cannot be
    listed (no permission, a link target too long) is logged and counted in
    ``unlisted``. :class:`ExportTooLarge` as soon as more than ``max_files``
    files are listed, :class:`TooManyFolders` (one) as soon as more than
    ``max_folders`` folders are listed (the run folder counts); :class:`ScanStopped`
    at the next folder (or 1,024 entries) once ``stop`` is set. Whichever
    way it ends, every folder it opened is closed.

    A selective scan still walks every folder (a folder reached by two paths,
    through a link, is listed under the first one the walk meets, so leaving
    a folder unwalked could change where another one is listed), but a file
    it does not take is neither stat'ed nor counted in ``max_files``: the
    result is the full scan's, filtered, on every tree.
    """
    scan = FolderScan()
    root_real = resolved(root)
    if root_real is None:
        return scan
    top = _folder_inside(root_real, os.path.join(root, folder))
    if top is None:
        return scan
    try:
        opened = open_folder_inside(top, root_real)
    except OSError as error:
        if error.errno in _GONE:
            return scan
        walk = _Walk(root_real, folder, max_files, max_folders, stop, choose)
        walk.unlisted((), error)
        return walk.scan
    if opened is None:
        log.warning("skipping %s: it now resolves outside the root", top)
        return scan
    fd, top_real = opened
    walk = _Walk(root_real, folder, max_files, max_folders, stop, choose)
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    walk.visited.add((info.st_dev, info.st_ino))
    try:
        walk.count_folder()  # the run folder itself (the steps before it may have used the rest)
    except TooManyFolders:
        os.close(fd)
        raise
    return walk.run(fd, top_real)
