"""Signed URLs' domain module: the canonical form, signing, and every way a
URL fails to verify (a 403, never anything else, however malformed)."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from export_service.errors import InvalidSignature, UrlExpired
from export_service.signed_urls import canonical_request, is_signed, sign_url, verify

SECRET = "s" * 32
OLD_SECRET = "o" * 40
NOW = 1_800_000_000


def _verify(url: str, method: str = "GET", now: float = NOW, **kwargs: object) -> int:
    parts = urllib.parse.urlsplit(url)
    secrets = kwargs.pop("secrets", (SECRET,))
    return verify(method, parts.path, parts.query, secrets, now=now, **kwargs)  # type: ignore[arg-type]


def test_a_signed_url_appends_expires_and_signature_and_verifies() -> None:
    url = sign_url("/api/air/export/zip/r1?param_run_id=p1", 600, SECRET, now=NOW)
    start, _, signature = url.rpartition("&signature=")
    assert start == f"/api/air/export/zip/r1?param_run_id=p1&expires={NOW + 600}"
    assert len(signature) == 43 and "=" not in signature
    assert _verify(url) == NOW + 600
    assert _verify(url, "HEAD") == NOW + 600


def test_an_absolute_url_keeps_its_host_and_signs_only_path_and_query() -> None:
    url = sign_url("https://export.example.com/api/audio/r1/mix.wav", 60, SECRET, now=NOW)
    assert url.startswith("https://export.example.com/api/audio/r1/mix.wav?expires=")
    assert _verify(url.removeprefix("https://export.example.com")) == NOW + 60


def test_reencoding_and_reordering_still_verify() -> None:
    url = sign_url(
        "/api/audio/r%7E1/a%20b.wav?steps=render&prefix=x%2Fy&prefix=", 60, SECRET, now=NOW
    )
    parts = urllib.parse.urlsplit(url)
    pairs = parts.query.split("&")
    assert _verify("/api/audio/r~1/a%20b.wav?" + "&".join(reversed(pairs))) == NOW + 60
    assert _verify(parts.path + "?" + parts.query.replace("x%2Fy", "x/y")) == NOW + 60
    assert _verify(parts.path + "?" + parts.query.replace("prefix=&", "prefix&")) == NOW + 60
    assert canonical_request("GET", "/a%7e", "b=1&a=2") == canonical_request(
        "HEAD", "/a~", "a=2&b=1"
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/zip/r1", "/zip/r2"),  # another run
        ("/zip/", "/list/"),  # another route
        ("param_run_id=p1", "param_run_id=p2"),
        ("steps=render", "steps=midi_generation"),
        ("steps=render", "steps=render&steps=midi_generation"),  # an added pair
        ("&steps=render", ""),  # a removed pair
        ("prefix=stems", "prefix=stems&prefix="),  # an added blank pair
        ("prefix=stems", "prefix=stem"),
        (f"expires={NOW + 60}", f"expires={NOW + 61}"),
    ],
)
def test_any_change_of_path_query_or_expiry_fails(old: str, new: str) -> None:
    url = sign_url(
        "/api/air/export/zip/r1?param_run_id=p1&steps=render&prefix=stems", 60, SECRET, now=NOW
    )
    assert _verify(url) == NOW + 60
    tampered = url.replace(old, new, 1)
    assert tampered != url
    with pytest.raises(InvalidSignature, match="does not match"):
        _verify(tampered)


def test_a_tampered_signature_and_another_secret_fail() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, SECRET, now=NOW)
    last = url[-1]
    with pytest.raises(InvalidSignature, match="does not match"):
        _verify(url[:-1] + ("A" if last != "A" else "B"))
    with pytest.raises(InvalidSignature, match="does not match"):
        _verify(url, secrets=("t" * 32,))


@pytest.mark.parametrize("method", ["PUT", "POST", "DELETE", "OPTIONS"])
def test_only_get_and_head(method: str) -> None:
    url = sign_url("/api/air/export/links/r1", 60, SECRET, now=NOW)
    with pytest.raises(InvalidSignature, match="GET and HEAD only"):
        _verify(url, method)


def test_the_previous_secret_verifies_during_a_rotation_and_not_after() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, OLD_SECRET, now=NOW)
    assert _verify(url, secrets=(SECRET, OLD_SECRET)) == NOW + 60
    with pytest.raises(InvalidSignature):
        _verify(url, secrets=(SECRET, ""))


def test_no_secret_means_signed_urls_are_off() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, SECRET, now=NOW)
    with pytest.raises(InvalidSignature, match="not enabled"):
        _verify(url, secrets=("", ""))


def test_good_until_the_second_it_names_then_expired_signature_checked_first() -> None:
    url = sign_url("/api/air/export/zip/r1", 60, SECRET, now=NOW)
    assert _verify(url, now=NOW + 60) == NOW + 60
    with pytest.raises(UrlExpired):
        _verify(url, now=NOW + 60.5)
    # An expired URL with a wrong signature is a 403, not a 410.
    with pytest.raises(InvalidSignature):
        _verify(url.replace("/r1", "/r2"), now=NOW + 3600)


def test_an_expiry_beyond_the_maximum_is_refused() -> None:
    url = sign_url("/api/air/export/zip/r1", 3601, SECRET, now=NOW)
    with pytest.raises(InvalidSignature, match="more than 3600 seconds"):
        _verify(url, max_seconds=3600)
    assert _verify(url, now=NOW + 1, max_seconds=3600) == NOW + 3601


@pytest.mark.parametrize(
    "query",
    [
        "expires=1900000000",  # no signature
        "signature=" + "A" * 43,  # no expiry
        "expires=1900000000&expires=1900000000&signature=" + "A" * 43,
        "expires=1900000000&signature=" + "A" * 43 + "&signature=" + "A" * 43,
        "expires=&signature=" + "A" * 43,
        "expires=-5&signature=" + "A" * 43,
        "expires=1e9&signature=" + "A" * 43,
        "expires=%EF%BC%91&signature=" + "A" * 43,  # a full-width digit
        "expires=" + "9" * 13 + "&signature=" + "A" * 43,  # too long
        "expires=1900000000&signature=" + "A" * 42,
        "expires=1900000000&signature=" + "A" * 44,
        "expires=1900000000&signature=" + "A" * 42 + "=",
        "expires=1900000000&signature=" + "A" * 42 + "%FF",
        "expires=1900000000&signature=",
    ],
)
def test_malformed_values_are_invalid_signatures(query: str) -> None:
    assert is_signed(query)
    with pytest.raises(InvalidSignature):
        verify("GET", "/api/air/export/zip/r1", query, (SECRET,), now=NOW)


@given(st.text(max_size=60), st.text(max_size=60))
def test_any_query_is_a_403_or_verifies_never_another_error(path: str, query: str) -> None:
    try:
        verify("GET", "/" + path, query, (SECRET,), now=NOW)
    except InvalidSignature:
        pass


def test_is_signed_sees_either_parameter_decoded() -> None:
    assert not is_signed("")
    assert not is_signed("param_run_id=p&expiresx=1")
    assert is_signed("%65xpires=1")
    assert is_signed("signature")


@pytest.mark.parametrize("expires_in", [0, -1, 1.5, True])
def test_sign_url_refuses_a_bad_lifetime(expires_in: object) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        sign_url("/a", expires_in, SECRET)  # type: ignore[arg-type]


def test_sign_url_refuses_a_short_secret_and_a_url_already_signed() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        sign_url("/a", 60, "s" * 31)
    with pytest.raises(ValueError, match="'expires'"):
        sign_url("/a?expires=5", 60, SECRET)
    with pytest.raises(ValueError, match="'signature'"):
        sign_url("/a?x=1&signature=5", 60, SECRET)
