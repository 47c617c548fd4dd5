"""Reading a planned file, checked: it is reopened without following links,
relative to a descriptor of its folder that is checked once per folder to be
still inside its root (``FolderFiles``), it must still be the very version
that was planned (its snapshot, plan.py) when it is opened and once it has
been read, and it must not shrink meanwhile. Anything else is
:class:`SourceChanged`, which cuts the download rather than let it end as a
complete-looking ZIP of another file.

A run of 10,000 small files is mostly per-file overhead, so a small file is
one open, one read and one ``fstat`` (:func:`read_whole`), with no generator
of its own.
"""

from __future__ import annotations

import os
from collections.abc import Generator

from ..core.safe_files import FolderFiles
from ..errors import SourceChanged
from .plan import PlannedEntry, is_planned_file


def _open_planned(entry: PlannedEntry, files: FolderFiles) -> int:
    """A descriptor of the planned file; :class:`SourceChanged` when it is no
    longer the planned file (its snapshot) or cannot be opened."""
    try:
        fd, info = files.open(entry.path, entry.root_real)
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: cannot be opened ({error.strerror})") from error
    except SourceChanged as error:
        raise SourceChanged(f"{entry.rel_path}: {error.message}") from error
    if not is_planned_file(info, entry):
        os.close(fd)
        raise SourceChanged(f"{entry.rel_path}: was replaced or modified")
    return fd


def read_planned(
    entry: PlannedEntry, files: FolderFiles, chunk_bytes: int, start: int = 0, stop: int = -1
) -> Generator[bytes, None, None]:
    """Bytes ``start`` to ``stop`` (default: the end) of a planned file;
    :class:`SourceChanged` when it is no longer the planned file, cannot be
    read, or is modified while it is read. Closing it closes the file."""
    fd = _open_planned(entry, files)
    try:
        if start:
            os.lseek(fd, start, os.SEEK_SET)
        remaining = (entry.size if stop < 0 else stop) - start
        while remaining:
            chunk = os.read(fd, min(chunk_bytes, remaining))
            if not chunk:
                raise SourceChanged(f"{entry.rel_path}: shrank while being read")
            remaining -= len(chunk)
            yield chunk
        if not is_planned_file(os.fstat(fd), entry):
            raise SourceChanged(f"{entry.rel_path}: was modified while being read")
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: read failed ({error.strerror})") from error
    finally:
        os.close(fd)


def read_whole(entry: PlannedEntry, files: FolderFiles) -> bytes:
    """All of a small planned file in one read, checked as :func:`read_planned` does."""
    fd = _open_planned(entry, files)
    try:
        data = os.read(fd, entry.size) if entry.size else b""
        if len(data) != entry.size:
            raise SourceChanged(f"{entry.rel_path}: shrank while being read")
        if not is_planned_file(os.fstat(fd), entry):
            raise SourceChanged(f"{entry.rel_path}: was modified while being read")
        return data
    except OSError as error:
        raise SourceChanged(f"{entry.rel_path}: read failed ({error.strerror})") from error
    finally:
        os.close(fd)
