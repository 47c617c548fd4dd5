"""The manifest's URLs and back: a file-system name as a URL path segment,
and a URL path below a prefix as file-system names."""

from __future__ import annotations

import os
import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

from ..errors import NotFound

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


def content_disposition(disposition: str, filename: str, *, ascii_only: bool = True) -> str:
    """A ``Content-Disposition`` value (RFC 6266) naming ``filename``: a
    ``filename`` with quotes, backslashes and control characters as ``_``
    (and, when ``ascii_only``, every other non-ASCII character too) and,
    where that is not the exact name, the exact one as ``filename*``
    (UTF-8, percent-encoded; left out for a name that is not UTF-8 on disk).

    ``ascii_only=False`` keeps the name's other characters in ``filename``,
    as UTF-8 (which RFC 6266 allows, as octets, in a quoted string): curl
    and wget read only ``filename`` (``curl -OJ`` then saves "café.wav", not
    "caf_.wav"); browsers take ``filename*`` when it is there.
    """
    fallback = "".join(
        "_"
        if char in '"\\'
        or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")
        or (ascii_only and not " " <= char <= "~")
        else char
        for char in filename
    )
    value = f'{disposition}; filename="{fallback}"'
    if fallback != filename or not filename.isascii():
        try:
            encoded = filename.encode("utf-8")
        except UnicodeEncodeError:  # surrogate escapes: bytes that are not UTF-8
            return value
        value += f"; filename*=UTF-8''{quote(encoded, safe='')}"
    return value
