"""Opening files of the roots safely, for the ZIP and for single-file URLs.

Blocking functions. A file is opened without following a final link and
without blocking (a FIFO swapped in must not hang a reader), and then the open
descriptor itself is asked where it lies (``/proc/self/fd``), so no link
swapped in after a check can lead outside the root.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from urllib.parse import unquote_to_bytes

from .errors import NotFound, SourceChanged
from .scanning import is_within

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_PROC_FD = "/proc/self/fd"

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


def fd_within(fd: int, root_real: str, fallback_path: str) -> bool:
    """Whether the open file's real path lies inside the (resolved) root."""
    try:
        real = os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        real = os.path.realpath(fallback_path)
    return is_within(root_real, real)


def open_checked(path: str, root_real: str) -> tuple[int, os.stat_result]:
    """Open a regular file inside the root read-only; :class:`SourceChanged`
    when it is something else, OSError when it cannot be opened."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceChanged("is not a regular file")
        if not fd_within(fd, root_real, path):
            raise SourceChanged("resolves outside its root")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def reopenable_path(fd: int, fallback_path: str) -> str:
    """A path that opens exactly the file behind ``fd`` (``/proc/self/fd/N``)."""
    path = f"{_PROC_FD}/{fd}"
    return path if os.path.exists(path) else fallback_path


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


def open_root_file(root: str, raw_tail: str) -> tuple[int, str, str]:
    """Open the file a manifest URL names below ``root``: (fd, a path that
    opens exactly that file, its real path).

    :class:`NotFound` for anything that is not a regular file inside the root.
    """
    root_real = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_real, *url_path_segments(raw_tail)))
    if not is_within(root_real, path):
        raise NotFound("no such file")
    try:
        fd, _ = open_checked(path, root_real)
    except (OSError, SourceChanged):
        raise NotFound("no such file") from None
    return fd, reopenable_path(fd, path), path
