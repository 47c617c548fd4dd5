"""Writing the links file: under a flock, through a temp file, renamed into place.

Writes lock a file beside the real file (the configured path with its
symbolic links resolved, so every writer of one file shares one lock whatever
path reached it), read, modify, write a temp file beside the real file, fsync
it, rename it over the old one and fsync the folder: several processes
writing at once lose nothing, and a crash leaves the old content. A temp
file's name carries its writer's host and process id; a writer removes
only the temp files of dead processes of its own host (one that died before
its rename), never another writer's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .regular_files import open_regular


def lock_path(target: Path) -> Path:
    """The lock file of the real links file ``target``."""
    return target.with_name(target.name + ".lock")


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[Path]:
    """Held by one writer of the real file of ``path`` at a time; yields that
    file's path. The lock file lies beside the real file, whatever chain of
    symbolic links led there: writers configured with different paths to
    one file share it. flock locks belong to an open file description,
    and each writer opens the lock file itself, so threads of one process
    exclude each other as other processes do. The path is resolved again
    once the lock is held: a link retargeted meanwhile is followed to the
    file it now names, under that file's lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = Path(os.path.realpath(path))
        lock = open_regular(lock_path(target), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if Path(os.path.realpath(path)) == target:
                    yield target
                    return
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            os.close(lock)


def replace(target: Path, content: bytes) -> None:
    """Write ``content`` to a temp file beside ``target`` and rename it
    over ``target`` (a regular file: the path's symbolic links are
    already resolved, so they keep pointing to it). Called under
    :func:`exclusive`."""
    _remove_dead_writers_temp_files(target)
    folder = target.parent
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    handle, temp_name = tempfile.mkstemp(prefix=_temp_prefix(target, f"{os.getpid()}."), dir=folder)
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(content)
            temp.flush()
            os.fchmod(temp.fileno(), mode)
            os.fsync(temp.fileno())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    folder_handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder_handle)
    finally:
        os.close(folder_handle)


def _remove_dead_writers_temp_files(target: Path) -> None:
    """The temp files left by writers of this host that died before their
    rename. A temp file is named for its writer's host and process: one
    of another host (another container sharing the folder), of a live
    process, or named otherwise is never touched, so a writer that holds
    another lock (an older version, another path to the file) keeps its
    temp file."""
    own_prefix = _temp_prefix(target, "")
    for leftover in target.parent.iterdir():
        if not leftover.name.startswith(own_prefix):
            continue
        pid_text, _, _ = leftover.name.removeprefix(own_prefix).partition(".")
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def _temp_prefix(target: Path, pid: str) -> str:
    """The start of a temp file's name: the target's, this host's and
    ``pid``'s (a host name is letters, digits, '-' and '.')."""
    return f".{target.name}.tmp-{socket.gethostname()}-{pid}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def nearest_existing(folder: Path) -> Path:
    """``folder``, or its closest ancestor that exists (where a write's mkdir
    starts)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder
