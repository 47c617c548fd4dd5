"""HTTP byte ranges (RFC 9110 section 14) for the ZIP and the file URLs: one
range, ``If-Range``, 416.

Only a single range is served; a request for several gets the whole
representation (RFC 9110 allows ignoring Range), as does a Range header that
does not parse or names another unit. Pure functions of header values; no
input makes them fail but a range outside the body (416).

aiohttp's ``request.http_range`` and ``request.if_range`` are not used: they
answer some requests otherwise (tests/test_ranges.py checks the cases
of every version, and fails once aiohttp agrees):

- ``bytes=-0`` (the last zero bytes: 416 here) and ``bytes=0-`` (the whole
  body) give the same ``slice(0, None)``;
- a position of more digits than Python converts (over 4,300) is a
  ValueError, like a header that does not parse: the whole body, where here
  a start that far is a 416 and an end that far is the end of the body;
- aiohttp 3.11 takes the unit case-sensitively (``BYTES=1-2`` is no range;
  RFC 9110 14.1 says it is one) and any Unicode digit (Arabic-Indic ones
  make a range);
- ``if_range`` is a date or None: it cannot carry the strong ETag that is
  the only validator of a range here (:func:`requested_range`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from ..errors import RangeNotSatisfiable

_SINGLE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)
# Longer than any HTTP date; a longer value is not one.
_MAX_DATE_LENGTH = 64
# A position with more digits than this lies beyond any file; it is not
# converted (Python refuses to convert more than 4,300 digits at all).
_MAX_DIGITS = 30
_BEYOND_ANY_SIZE = 10**_MAX_DIGITS


def http_date(value: str | None) -> datetime | None:
    """An HTTP date as an aware UTC datetime; None when absent or not a date."""
    if value is None or len(value) > _MAX_DATE_LENGTH:
        return None
    try:
        date = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return date.replace(tzinfo=UTC) if date.tzinfo is None else date


def _position(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= _MAX_DIGITS else _BEYOND_ANY_SIZE


def requested_range(
    range_header: str | None,
    if_range: str | None,
    size: int,
    etag: str,
    what: str = "the ZIP",
) -> tuple[int, int] | None:
    """The (first, last) byte to send, inclusive, or None for the whole body.

    ``If-Range`` validates the range only with the current strong ETag. A
    date never does: RFC 9110 13.1.5 allows one only where Last-Modified is a
    strong validator (8.8.2.2), and none of this service's is. The ZIP's (its
    newest file's mtime) stays as it was when a file of the run is renamed or
    deleted, and a file's mtime can be restored after a rewrite (``cp -p``,
    ``rsync -t``, ``touch -d``): either would splice two versions into one
    resumed download. The ETags hold each file's ctime, which no one can set.

    :class:`RangeNotSatisfiable` when the one range asked for lies outside it
    (``what`` names the body in its message).
    """
    if range_header is None or not _if_range_holds(if_range, etag):
        return None
    match = _SINGLE_RANGE.fullmatch(range_header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise _unsatisfiable(size, what)
        return max(0, size - suffix), size - 1
    start = _position(first)
    if last and _position(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise _unsatisfiable(size, what)
    end = min(_position(last), size - 1) if last else size - 1
    return start, end


def _if_range_holds(if_range: str | None, etag: str) -> bool:
    """No If-Range, or one that names the current version by its strong ETag
    (weak tags never match for ranges; a date never validates, see above)."""
    return if_range is None or if_range.strip() == etag


def _unsatisfiable(size: int, what: str) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"{what} has {size} bytes; the range asked for lies outside it",
        headers={"Content-Range": f"bytes */{size}"},
    )
