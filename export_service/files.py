"""Opening files of the roots safely, for the ZIP and for single-file URLs.

Blocking functions. A file is opened without following a final link and
without blocking (a FIFO swapped in must not hang a reader), and then the open
descriptor itself is asked where it lies (``/proc/self/fd``), so no link
swapped in after a check can lead outside the root. A ZIP opens many files of
few folders, so :class:`FolderFiles` asks once per folder instead.
"""

from __future__ import annotations

import io
import mimetypes
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .errors import NotFound, SourceChanged, raise_if_out_of_descriptors
from .scanning import fd_real_path, is_within, open_folder_inside, resolved

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# What the AIR steps write; mimetypes covers the rest.
_CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".mid": "audio/midi",
    ".midi": "audio/midi",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".json": "application/json",
}


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


def content_type(name: str) -> str:
    extension = os.path.splitext(name)[1].lower()
    guessed = _CONTENT_TYPES.get(extension) or mimetypes.guess_type(name)[0]
    return guessed or "application/octet-stream"


def url_path_segments(raw_tail: str) -> list[str]:
    """The file-system names of a percent-encoded URL path below a prefix.

    Decoded once, from bytes (so a name that is not UTF-8 still matches);
    empty, ``.`` and ``..`` segments and encoded ``/`` or NUL are refused.
    """
    segments = []
    for raw in raw_tail.split("/"):
        name = unquote_to_bytes(raw)
        if name in {b"", b".", b".."} or b"/" in name or b"\0" in name:
            raise NotFound("no such file")
        segments.append(os.fsdecode(name))
    return segments


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
