"""Safe access to the roots: resolving paths, opening folders and files only
where they lie inside their root, for the scan, the ZIP and single-file URLs.

Blocking functions. A file is opened without following a final link and
without blocking (a FIFO swapped in must not hang a reader), and then the open
descriptor itself is asked where it lies (``/proc/self/fd``), so no link
swapped in after a check can lead outside the root. A ZIP opens many files of
few folders, so :class:`FolderFiles` asks once per folder instead.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass

from ..errors import NotFound, SourceChanged, raise_if_out_of_descriptors
from .urls import url_path_segments


def is_within(root_real: str, path_real: str) -> bool:
    """True when ``path_real`` lies strictly below ``root_real`` (both resolved;
    an empty ``root_real``, a root that could not be resolved, holds nothing)."""
    if not root_real:
        return False
    prefix = root_real if root_real.endswith(os.sep) else root_real + os.sep
    return path_real.startswith(prefix)


def resolved(path: str) -> str | None:
    """``os.path.realpath``, or None when the path changes under it.

    realpath raises (EINVAL from ``readlink``) when a link it saw is swapped
    for a file or folder before it reads the link; ELOOP, ENAMETOOLONG and
    the like come the same way. For a caller that is the path not being there.
    """
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return None


FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
PROC_FD = "/proc/self/fd"
CHILD_FOLDER_FLAGS = FOLDER_FLAGS | os.O_NOFOLLOW


def proc_fd_path(fd: int) -> str | None:
    """Where the open file or folder ``fd`` really is, as the kernel names it
    in ``/proc/self/fd``; None where it cannot (no ``/proc``, or a path
    beyond ``PATH_MAX``)."""
    try:
        return os.readlink(f"{PROC_FD}/{fd}")
    except OSError:
        return None


def fd_real_path(fd: int, fallback_path: str) -> str:
    """Where the open file or folder really is (from ``/proc``; without it,
    the resolved ``fallback_path``); empty, which lies in no root, when
    neither can tell."""
    real = proc_fd_path(fd)
    return real if real is not None else resolved(fallback_path) or ""


def open_folder_inside(path: str, root_real: str) -> tuple[int, str] | None:
    """A descriptor of the folder at ``path`` and its real path, when what was
    opened really is the root or lies inside it (checked on the descriptor, so
    a link swapped in for any folder on the way is caught); None otherwise.
    OSError when it cannot be opened."""
    try:
        fd = os.open(path, FOLDER_FLAGS)
    except OSError as error:
        if error.errno != errno.ENAMETOOLONG or not is_within(root_real, path):
            raise
        return _open_folder_step_by_step(path, root_real)
    real = fd_real_path(fd, path)
    if real == root_real or is_within(root_real, real):
        return fd, real
    os.close(fd)
    return None


def _open_folder_step_by_step(path: str, root_real: str) -> tuple[int, str] | None:
    """:func:`open_folder_inside` for a folder whose path is longer than the
    kernel opens at once (and names in ``/proc``): one folder at a time from
    the checked root, never through a link, so what it reaches lies inside
    the root by construction."""
    opened = open_folder_inside(root_real, root_real)
    if opened is None:
        return None
    fd = opened[0]
    try:
        for name in path[len(root_real) + 1 :].split("/"):
            child = os.open(name, CHILD_FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, path


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _regular_file_stat(fd: int) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise SourceChanged("is not a regular file")
    return info


def open_checked(path: str, root_real: str) -> tuple[int, os.stat_result]:
    """Open a regular file inside the root read-only; :class:`SourceChanged`
    when it is something else, OSError when it cannot be opened."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = _regular_file_stat(fd)
        if not is_within(root_real, fd_real_path(fd, path)):
            raise SourceChanged("resolves outside its root")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


FOLDERS_KEPT_OPEN = 8
# What one ZIP download holds open at most: its folders, one more folder
# opened before the oldest is closed, and the file being read.
DESCRIPTORS_PER_DOWNLOAD = FOLDERS_KEPT_OPEN + 2


class FolderFiles:
    """Opens files by their folder's descriptor, for one download.

    Each folder is opened once and asked where it lies; a file is then opened
    by its bare name relative to that descriptor, without following a link,
    so it is a direct child of a checked folder and cannot lead outside the
    root. That saves a ``/proc/self/fd`` lookup per file (a third of the cost
    of opening a small one). The last few folders stay open: a run's files
    come folder by folder. Use as a context manager (closes them).
    """

    def __init__(self, keep_open: int = FOLDERS_KEPT_OPEN) -> None:
        self._keep_open = keep_open
        self._folders: OrderedDict[tuple[str, str], int] = OrderedDict()

    def _folder_fd(self, folder: str, root_real: str) -> int:
        key = (folder, root_real)
        fd = self._folders.get(key)
        if fd is not None:
            self._folders.move_to_end(key)
            return fd
        opened = open_folder_inside(folder, root_real)
        if opened is None:
            raise SourceChanged("resolves outside its root")
        fd = self._folders[key] = opened[0]
        if len(self._folders) > self._keep_open:
            os.close(self._folders.popitem(last=False)[1])
        return fd

    def readable(self, path: str, root_real: str) -> bool:
        """Whether this process may read the scanned file at ``path``, asked
        relative to its folder (``faccessat``): a check for planning, opening
        checks everything again. :class:`OutOfDescriptors` when no folder
        can be opened for want of descriptors."""
        folder, _, name = path.rpartition("/")
        try:
            return os.access(name, os.R_OK, dir_fd=self._folder_fd(folder or "/", root_real))
        except SourceChanged:
            return False
        except OSError as error:
            raise_if_out_of_descriptors(error)
            return False

    def open(self, path: str, root_real: str) -> tuple[int, os.stat_result]:
        """Like :func:`open_checked`, for the resolved ``path`` of a scanned file."""
        folder, _, name = path.rpartition("/")  # an absolute path: os.path.split's work
        fd = os.open(name, _OPEN_FLAGS, dir_fd=self._folder_fd(folder or "/", root_real))
        try:
            return fd, _regular_file_stat(fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        while self._folders:
            os.close(self._folders.popitem()[1])

    def __enter__(self) -> FolderFiles:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class RootFile:
    """A file of a root, open for reading, with the stat taken from its
    descriptor (the file being sent is the file checked). Close it."""

    file: io.FileIO
    info: os.stat_result
    real_path: str

    def close(self) -> None:
        self.file.close()


def open_root_file(root: str, raw_tail: str) -> RootFile:
    """Open the file a manifest URL names below ``root``.

    :class:`NotFound` for anything that is not a regular file inside the
    root; :class:`OutOfDescriptors` when there is no descriptor to open it with.
    """
    root_real = resolved(root)
    path = resolved(os.path.join(root_real or root, *url_path_segments(raw_tail)))
    if root_real is None or path is None or not is_within(root_real, path):
        raise NotFound("no such file")
    try:
        fd, info = open_checked(path, root_real)
    except OSError as error:
        raise_if_out_of_descriptors(error)
        raise NotFound("no such file") from None
    except SourceChanged:
        raise NotFound("no such file") from None
    return RootFile(io.FileIO(fd, "rb"), info, path)
