"""The manifest's URLs and back: a file-system name as a URL path segment,
and a URL path below a prefix as file-system names."""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote_to_bytes

from .errors import NotFound

_URL_SAFE = re.compile(r"[A-Za-z0-9_.~-]*\Z")


def url_segment(segment: str) -> str:
    """One path segment, percent-encoded from its bytes (as on disk)."""
    if _URL_SAFE.match(segment):
        return segment
    return quote(os.fsencode(segment), safe="")


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
