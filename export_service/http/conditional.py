"""Conditional requests (RFC 9110 section 13) for every route that has a
validator: the file URLs, the ZIP and the manifest.

The preconditions are evaluated in the RFC's order (13.2.2): ``If-Match``
(else ``If-Unmodified-Since``) can fail with 412; then ``If-None-Match``
(else ``If-Modified-Since``) can answer 304 to a GET or HEAD. ``If-Range``
belongs to the ranges (byte_ranges.py). A header that does not parse counts
as absent, except an ``If-Match`` that names no entity tag: nothing matches
it, so it fails.

The headers are read here, not from aiohttp's parsed ``request.if_match``,
``if_none_match``, ``if_unmodified_since`` and ``if_modified_since``, because
these answer some requests otherwise (aiohttp 3.11.0 and 3.14 alike;
tests/test_preconditions.py checks each case, and fails once aiohttp agrees):

- an entity-tag list stops at the first thing that is not a tag
  (``junk, "v1"``, ``"v0" "v1"``, ``W/ "v1"``: aiohttp finds no ``"v1"``,
  so an ``If-Match`` naming the current version would fail), and an empty
  ``If-Match`` counts as absent where it fails here;
- a date whose year overflows (``Mon, 1 Jan 99999999999 00:00:00 GMT``)
  raises OverflowError from ``if_unmodified_since``: a 500.

``If-Modified-Since`` is not read at all: no date of this service shows that
nothing changed (see :func:`evaluate_preconditions`).
"""

from __future__ import annotations

import re
from datetime import datetime

from aiohttp import hdrs, web

from ..errors import PreconditionFailed
from .byte_ranges import http_date

# An entity tag: optional weak prefix, then a quoted opaque tag.
_ENTITY_TAG = re.compile(r'(W/)?("[^"]*")')


def _matches(header: str, etag: str, weak: bool) -> bool:
    """Whether a list of entity tags (or ``*``) names ``etag`` (strong).

    Strong comparison (``weak=False``) never matches a weak tag; weak
    comparison compares the opaque tags only.
    """
    if header.strip() == "*":
        return True
    return any(
        tag == etag and (weak or not weak_prefix)
        for weak_prefix, tag in _ENTITY_TAG.findall(header)
    )


def evaluate_preconditions(
    method: str,
    if_match: str | None,
    if_none_match: str | None,
    if_unmodified_since: str | None,
    etag: str,
    last_modified: datetime | None,
) -> bool:
    """Both outcomes of the preconditions: True when a GET or HEAD is to be
    answered 304 Not Modified, :class:`PreconditionFailed` (412) when ``If-Match`` or
    ``If-Unmodified-Since`` fails, or ``If-None-Match`` matches another method.
    ``last_modified``: None when the resource has no date (the manifest);
    the date conditions are then ignored (RFC 9110 13.1.3-4). Where it has
    one, the date is no strong validator (see :func:`.byte_ranges.requested_range`:
    a rename, or a rewrite that restores the mtime, keeps it), so it cannot
    show that nothing changed: ``If-Modified-Since`` never gives a 304 (the
    ETag does), and ``If-Unmodified-Since`` fails (a resume guarded by it
    must not splice two versions).
    """
    safe = method in (hdrs.METH_GET, hdrs.METH_HEAD)
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            raise PreconditionFailed(f"If-Match names no current version (the ETag is {etag})")
    elif http_date(if_unmodified_since) is not None and last_modified is not None:
        raise PreconditionFailed(
            "the date cannot tell whether this changed since If-Unmodified-Since "
            f"(a rename, or a rewrite that restores the mtime, keeps it); use If-Match: {etag}"
        )
    if if_none_match is not None:
        if not _matches(if_none_match, etag, weak=True):
            return False
        if safe:
            return True
        raise PreconditionFailed(f"If-None-Match names the current version ({etag})")
    return False  # If-Modified-Since: no date here shows that nothing changed


def precondition_response(
    request: web.BaseRequest, etag: str, last_modified: datetime | None
) -> web.Response | None:
    """The 304 to answer ``request`` with, or None to answer it in full;
    raises :class:`PreconditionFailed` for a failed precondition (412)
    (``last_modified``: as for :func:`evaluate_preconditions`).
    """
    headers = request.headers
    if not evaluate_preconditions(
        request.method,
        headers.get(hdrs.IF_MATCH),
        headers.get(hdrs.IF_NONE_MATCH),
        headers.get(hdrs.IF_UNMODIFIED_SINCE),
        etag,
        last_modified,
    ):
        return None
    response = web.Response(status=304, headers={hdrs.ETAG: etag})
    if last_modified is not None:
        response.last_modified = last_modified
    return response
