"""HTTP byte ranges for the ZIP endpoint: one range, ``If-Range``, 416.

Only a single range is served; a request for several gets the whole
representation (RFC 9110 allows ignoring Range), as does a Range header that
does not parse.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.utils import parsedate_to_datetime

from .errors import RangeNotSatisfiable

_SINGLE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def requested_range(
    range_header: str | None,
    if_range: str | None,
    size: int,
    etag: str,
    last_modified: datetime | None,
) -> tuple[int, int] | None:
    """The (first, last) byte to send, inclusive, or None for the whole body.

    :class:`RangeNotSatisfiable` when the one range asked for lies outside it.
    """
    if range_header is None or not _if_range_holds(if_range, etag, last_modified):
        return None
    match = _SINGLE_RANGE.fullmatch(range_header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _if_range_holds(if_range: str | None, etag: str, last_modified: datetime | None) -> bool:
    """No If-Range, or one that names the current version (strong ETag or date)."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == etag  # weak tags never match for ranges
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return False
    return last_modified is not None and date == last_modified


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"the ZIP has {size} bytes; the range asked for lies outside it",
        headers={"Content-Range": f"bytes */{size}"},
    )
