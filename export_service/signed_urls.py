"""Signed, expiring URLs: minted by the AIR backend, checked by the service.

A signed URL is any GET URL of the service with two query pairs appended:
``expires`` (unix seconds) and ``signature`` (base64url HMAC-SHA256, no
padding). The HMAC is taken over one canonical form of the request, made by
:func:`canonical_request` for the signer and the verifier alike::

    v1
    GET                 the method class: GET covers GET and HEAD
    /api/air/export/zip/r1
    expires=1767225600&param_run_id=p1&steps=render

The path is percent-decoded and re-encoded with one fixed rule (every byte
but ``A-Z a-z 0-9 - . _ ~ /`` as ``%XX``); the query is split into decoded
``(key, value)`` pairs (blank values kept, ``+`` read as a space, as the
service reads it), every pair but ``signature`` kept, sorted and re-encoded
the same way (``/`` encoded too). So a client or proxy that re-encodes ``%7E`` as ``~`` or
reorders the query still verifies, while a changed path, a changed, added or
removed query pair (``param_run_id``, a step, a prefix) or a changed expiry
does not. The host is not signed: the service may be reached under several
names (nginx, a Kubernetes Service). The path signed must be the one the
service sees.

This module needs only the standard library (and ``errors``): the AIR
backend imports :func:`sign_url` from the light install.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from collections.abc import Sequence

from .errors import InvalidSignature, UrlExpired

EXPIRES = "expires"
SIGNATURE = "signature"
RESERVED_PARAMETERS = (EXPIRES, SIGNATURE)
VERSION = "v1"
MIN_SECRET_LENGTH = 32
DEFAULT_MAX_SECONDS = 7 * 24 * 3600
# A base64url SHA-256 digest without padding is exactly this long.
SIGNATURE_LENGTH = 43
# The longest path and query a signed URL may have: the service (aiohttp)
# reads request lines of at most 8,190 bytes, method and version included,
# and nginx's default large_client_header_buffers are 8 KiB. A longer URL
# could be minted but never fetched.
MAX_TARGET_CHARS = 8000
# Unix seconds: ten digits until the year 2286; more is refused as malformed.
MAX_EXPIRES_DIGITS = 12
_SIGNED_METHODS = {"GET": "GET", "HEAD": "GET"}
_BASE64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _decoded_pairs(query: str) -> list[tuple[bytes, bytes]]:
    """The query's ``(key, value)`` pairs, percent-decoded to bytes; a pair
    without ``=`` has a blank value; empty pieces (``a=1&&b=2``) are none."""
    pairs = []
    for piece in query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        pairs.append(
            (
                urllib.parse.unquote_to_bytes(key.replace("+", " ")),
                urllib.parse.unquote_to_bytes(value.replace("+", " ")),
            )
        )
    return pairs


def canonical_request(method: str, path: str, query: str) -> bytes:
    """The bytes a signature covers, for a request of ``method`` on ``path``
    (as sent: percent-encoded, without ``?``) with the raw ``query`` string.

    **Raises:** :class:`~export_service.errors.InvalidSignature` for a method
    other than GET and HEAD.
    """
    return _canonical(method, path, _decoded_pairs(query))


def _canonical(method: str, path: str, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """:func:`canonical_request` from the query's pairs, already decoded."""
    method_class = _SIGNED_METHODS.get(method.upper())
    if method_class is None:
        raise InvalidSignature(f"a signed URL is good for GET and HEAD only, not {method}")
    canonical_path = urllib.parse.quote(urllib.parse.unquote_to_bytes(path), safe="/")
    signed = sorted((key, value) for key, value in pairs if key != SIGNATURE.encode())
    canonical_query = "&".join(
        urllib.parse.quote(key, safe="") + "=" + urllib.parse.quote(value, safe="")
        for key, value in signed
    )
    return "\n".join((VERSION, method_class, canonical_path, canonical_query)).encode("ascii")


def _signature(secret: str, canonical: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def sign_url(url: str, expires_in: int, secret: str, *, now: float | None = None) -> str:
    """``url`` with ``expires`` and ``signature`` appended to its query: good
    for GET and HEAD until ``expires_in`` seconds from ``now`` (default: the
    clock), and for nothing else.

    **Parameters:**

    - ``url``: a path with an optional query (``/api/air/export/zip/r1?steps=render``)
      or an absolute URL (``https://export.example.com/api/...``; its host is not signed).
      Its existing query is kept as written.
    - ``expires_in``: seconds the URL stays good, at least 1. The service
      refuses a URL whose expiry lies more than its ``auth.max_signed_url_seconds``
      (7 days by default) ahead.
    - ``secret``: the service's ``auth.signing_secret`` (32 characters or more).
    - ``now``: unix seconds to count from (for tests); the expiry is rounded down.

    **Raises:** ``ValueError`` for an ``expires_in`` below 1, a secret under 32
    characters, a ``url`` that already has ``expires`` or ``signature``, or a
    signed path and query longer than :data:`MAX_TARGET_CHARS` (no request line
    the service reads could carry it).
    """
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
        raise ValueError(f"expires_in must be a whole number of seconds >= 1, got {expires_in!r}")
    if len(secret) < MIN_SECRET_LENGTH:
        raise ValueError(f"the signing secret must be at least {MIN_SECRET_LENGTH} characters")
    parts = urllib.parse.urlsplit(url)
    keys = {key for key, _ in _decoded_pairs(parts.query)}
    for name in RESERVED_PARAMETERS:
        if name.encode() in keys:
            raise ValueError(f"the URL already has a {name!r} query parameter")
    expires = int(time.time() if now is None else now) + expires_in
    query = f"{parts.query}&{EXPIRES}={expires}" if parts.query else f"{EXPIRES}={expires}"
    signature = _signature(secret, canonical_request("GET", parts.path or "/", query))
    target = len(parts.path or "/") + len(f"?{query}&{SIGNATURE}={signature}")
    if target > MAX_TARGET_CHARS:
        raise ValueError(
            f"the signed URL's path and query would be {target:,} characters, more than the "
            f"{MAX_TARGET_CHARS:,} a request line to the service may carry; select less"
        )
    return urllib.parse.urlunsplit(
        parts._replace(query=f"{query}&{SIGNATURE}={signature}", fragment="")
    )


def is_signed(query: str) -> bool:
    """Whether a raw query string carries ``expires`` or ``signature``: then
    the request is a signed-URL request, checked by :func:`verify`."""
    return any(key in (b"expires", b"signature") for key, _ in _decoded_pairs(query))


def verify(
    method: str,
    path: str,
    query: str,
    secrets: Sequence[str],
    *,
    now: float,
    max_seconds: int = DEFAULT_MAX_SECONDS,
) -> int:
    """Check a signed-URL request; its expiry (unix seconds) when it is good.

    ``path`` and ``query`` as sent (raw); ``secrets``: the current secret and
    the previous one (during a rotation), blanks ignored. The signature is
    checked first, in constant time against each secret, then the expiry:
    a URL is good up to and including the second ``expires`` names.

    **Raises:** :class:`~export_service.errors.InvalidSignature` (403) when
    ``expires`` or ``signature`` is missing, repeated or malformed, the
    signature matches no secret, no secret is configured, the method is not
    GET or HEAD, or the expiry lies more than ``max_seconds`` ahead of
    ``now``; :class:`~export_service.errors.UrlExpired` (410) when the
    signature is good but ``now`` is past the expiry.
    """
    pairs = _decoded_pairs(query)  # once: the checks and the canonical form
    keys = [key for key, _ in pairs]
    values = dict(pairs)
    usable = [secret for secret in secrets if secret]
    if not usable:
        raise InvalidSignature("signed URLs are not enabled on this service")
    if any(keys.count(name.encode()) != 1 for name in RESERVED_PARAMETERS):
        raise InvalidSignature(
            "a signed URL needs exactly one 'expires' and one 'signature' query parameter"
        )
    given_expires = values[EXPIRES.encode()]
    given_signature = values[SIGNATURE.encode()]
    if not (given_expires.isdigit() and len(given_expires) <= MAX_EXPIRES_DIGITS):
        raise InvalidSignature("'expires' must be unix seconds (digits only)")
    if len(given_signature) != SIGNATURE_LENGTH or not set(given_signature) <= _BASE64URL:
        raise InvalidSignature("the signature is malformed")
    canonical = _canonical(method, path, pairs)
    matched = False
    for secret in usable:
        expected = _signature(secret, canonical).encode("ascii")
        matched |= hmac.compare_digest(expected, given_signature)
    if not matched:
        raise InvalidSignature(
            "the signature does not match this URL (it is good only for the path, query"
            " and method it was made for)"
        )
    expires = int(given_expires)
    if int(now) > expires:  # whole seconds: good through the second it names
        raise UrlExpired("this signed URL has expired; ask for a new one")
    if expires - now > max_seconds:
        raise InvalidSignature(
            f"this signed URL expires more than {max_seconds} seconds ahead"
            " (auth.max_signed_url_seconds)"
        )
    return expires
