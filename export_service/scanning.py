"""Finding run folders and listing their files.

Plain blocking functions: callers run a whole lookup and scan off the event
loop in one hop. Nothing here ever yields a path outside its root: run folders
are matched only against names listed in the root, and a symbolic link is
followed only when its real target lies inside the root's real path.
"""

from __future__ import annotations

import bisect
import logging
import os
import stat
import threading
import time
from typing import NamedTuple

from .errors import raise_if_out_of_descriptors

log = logging.getLogger(__name__)


class ScannedFile(NamedTuple):
    """One regular file of a run folder, as seen when it was scanned (a
    NamedTuple: a run of 10,000 files makes 10,000 of them)."""

    path: str  # resolved absolute path; never leaves the service
    parts: tuple[str, ...]  # its path inside the run folder, as named on disk
    size: int | None  # None when the file could not be stat'ed
    mtime_ns: int
    dev: int
    ino: int


def is_within(root_real: str, path_real: str) -> bool:
    """True when ``path_real`` lies strictly below ``root_real`` (both resolved)."""
    prefix = root_real if root_real.endswith(os.sep) else root_real + os.sep
    return path_real.startswith(prefix)


def _folder_inside(root_real: str, path: str) -> str | None:
    """The resolved path of ``path`` when it is a folder inside the root."""
    resolved = os.path.realpath(path)
    if not is_within(root_real, resolved):
        return None
    try:
        return resolved if stat.S_ISDIR(os.stat(resolved).st_mode) else None
    except OSError:
        return None


def run_folder_names(root: str) -> list[str]:
    """Names directly inside ``root``; empty when it cannot be listed."""
    try:
        with os.scandir(root) as entries:
            return [entry.name for entry in entries]
    except OSError as error:
        raise_if_out_of_descriptors(error)
        log.warning("cannot list root %s: %s", root, error.strerror)
        return []


class RunFolderIndex:
    """The names in one root, listed again only when the root's mtime changes.

    A root of 100,000 run folders takes tens of milliseconds to list; the
    index answers a lookup with a stat of the root and a binary search. Names
    are kept reversed and sorted, so "ends with ``_<id>``" is a prefix search.
    Creating or removing a run folder changes the root's mtime; a listing
    taken within a second of that mtime is not trusted (file systems with
    coarse timestamps could hide a change made in the same tick).
    """

    _SETTLE_NS = 1_000_000_000

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._mtime_ns: int | None = None
        self._trusted = False
        self._names: frozenset[str] = frozenset()
        self._reversed: list[str] = []

    def _refresh(self) -> None:
        try:
            mtime_ns = os.stat(self.root).st_mtime_ns
        except OSError:
            mtime_ns = None
        with self._lock:
            if self._trusted and mtime_ns == self._mtime_ns:
                return
            names = run_folder_names(self.root) if mtime_ns is not None else []
            self._names = frozenset(names)
            self._reversed = sorted(name[::-1] for name in names)
            self._mtime_ns = mtime_ns
            self._trusted = mtime_ns is not None and time.time_ns() - mtime_ns > self._SETTLE_NS

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
        root_real = os.path.realpath(self.root)
        for name in self.candidates(run_id):
            if _folder_inside(root_real, os.path.join(self.root, name)) is not None:
                return name
        return None


def exact_run_folder(root: str, run_id: str) -> str | None:
    """``run_id`` when ``<root>/<run_id>`` is a folder inside the root.

    ``run_id`` must already be validated (no separators, not ``.``/``..``).
    """
    root_real = os.path.realpath(root)
    return run_id if _folder_inside(root_real, os.path.join(root, run_id)) else None


FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
PROC_FD = "/proc/self/fd"
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def fd_real_path(fd: int, fallback_path: str) -> str:
    """Where the open file or folder really is (from ``/proc``; without it,
    the resolved ``fallback_path``)."""
    try:
        return os.readlink(f"{PROC_FD}/{fd}")
    except OSError:
        return os.path.realpath(fallback_path)


def open_folder_inside(path: str, root_real: str) -> tuple[int, str] | None:
    """A descriptor of the folder at ``path`` and its real path, when what was
    opened really is the root or lies inside it (checked on the descriptor, so
    a link swapped in for any folder on the way is caught); None otherwise.
    OSError when it cannot be opened."""
    fd = os.open(path, FOLDER_FLAGS)
    real = fd_real_path(fd, path)
    if real == root_real or is_within(root_real, real):
        return fd, real
    os.close(fd)
    return None


def _link_target(link_path: str, root_real: str) -> tuple[str, os.stat_result] | None:
    """The real path and stat of what a link points to, when it lies inside
    the root. Taken from an ``O_PATH`` descriptor of the target (no read
    permission needed, a FIFO does not block), so the stat is of the checked
    file itself."""
    target = os.path.realpath(link_path)
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


def _scan_folder(
    fd: int,
    folder_real: str,
    folder_parts: tuple[str, ...],
    root_real: str,
    visited: set[tuple[int, int]],
    pending: list[tuple[str, tuple[str, ...]]],
    files: list[ScannedFile],
) -> None:
    """List one open folder: its regular files go to ``files``, its folders
    not seen yet to ``pending``. Entries are stat'ed relative to ``fd``."""
    try:
        with os.scandir(fd) as listing:
            entries = list(listing)
    except OSError as error:
        raise_if_out_of_descriptors(error)
        log.warning("cannot list %s: %s", folder_real, error.strerror)
        return
    for entry in entries:
        parts = (*folder_parts, entry.name)
        path = f"{folder_real}/{entry.name}"
        try:
            if entry.is_symlink():
                target = _link_target(path, root_real)
                if target is None:
                    continue
                path, info = target
            else:
                info = entry.stat(follow_symlinks=False)
        except OSError as error:
            raise_if_out_of_descriptors(error)
            if entry.is_file(follow_symlinks=False):
                files.append(ScannedFile(path, parts, None, 0, 0, 0))
            continue
        if stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key not in visited:
                visited.add(key)
                pending.append((path, parts))
        elif stat.S_ISREG(info.st_mode):
            files.append(
                ScannedFile(path, parts, info.st_size, info.st_mtime_ns, info.st_dev, info.st_ino)
            )


def scan_run_folder(root: str, folder: str) -> list[ScannedFile]:
    """Every regular file below ``<root>/<folder>``, recursively, in no set order.

    Symbolic links (to files or folders) are followed only into the root;
    folder cycles are cut; FIFOs, sockets and devices are left out. Each
    folder is listed through a descriptor whose real path is checked, and its
    entries are stat'ed relative to it, so a folder swapped for a link during
    the scan cannot bring in a name or size from outside the root.
    """
    root_real = os.path.realpath(root)
    top = _folder_inside(root_real, os.path.join(root, folder))
    if top is None:
        return []
    top_stat = os.stat(top)
    visited = {(top_stat.st_dev, top_stat.st_ino)}
    pending: list[tuple[str, tuple[str, ...]]] = [(top, ())]
    files: list[ScannedFile] = []
    while pending:
        folder_path, folder_parts = pending.pop()
        try:
            opened = open_folder_inside(folder_path, root_real)
        except OSError as error:
            raise_if_out_of_descriptors(error)
            log.warning("cannot list %s: %s", folder_path, error.strerror)
            continue
        if opened is None:
            log.warning("skipping %s: it now resolves outside the root", folder_path)
            continue
        fd, folder_real = opened
        try:
            _scan_folder(fd, folder_real, folder_parts, root_real, visited, pending, files)
        finally:
            os.close(fd)
    return files
