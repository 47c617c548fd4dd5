"""Opening the links file and its lock file: without blocking, regular files only.

The file, its symbolic link's target and the lock file are opened without
blocking and must be regular files: a FIFO, a device or a folder there makes
the file unusable (readiness says why, manifests go on without a link, a PUT
is a 503), never a request that waits for a writer that never comes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
}


class NotARegularFile(OSError):
    """The path names a FIFO, a device, a folder or a socket."""


def open_regular(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``path`` (links followed), opened without blocking and
    checked to be a regular file. Opening a FIFO for reading waits for a
    writer: one such open would hold the parse lock, and every request
    queued behind it, for good; reading a device may never end."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "something else")
            raise NotARegularFile(errno.EINVAL, f"not a regular file but {kind}", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd
