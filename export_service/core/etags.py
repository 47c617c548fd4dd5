"""The service's entity tags, all strong, made in one place.

- the manifest's: a hash of its JSON bytes;
- the ZIP's: a hash of what its bytes are made of (each planned file's name,
  size, mtime, ctime and inode, and a selection);
- a file URL's: the file's mtime, ctime and size.

A hash is SHA-256, of which the tag keeps the first 160 bits (40 hex
digits). Every tag has a ctime in it, directly or hashed: the ctime cannot
be set by users and moves on every write, so a rewrite in place at the same
size that restores the mtime (``os.utime``, ``touch -d``) changes the tag.
"""

from __future__ import annotations

import os
from typing import Protocol

# Hex digits of the SHA-256 kept in a hashed tag.
_HASHED_DIGITS = 40


class _Hash(Protocol):
    def hexdigest(self) -> str: ...


def hashed_etag(digest: _Hash) -> str:
    """The tag of a representation from a SHA-256 ``digest`` of what it is made of."""
    return f'"{digest.hexdigest()[:_HASHED_DIGITS]}"'


def file_etag(info: os.stat_result) -> str:
    """A file's tag: its mtime, ctime (ns) and size, in hex."""
    return f'"{info.st_mtime_ns:x}-{info.st_ctime_ns:x}-{info.st_size:x}"'
