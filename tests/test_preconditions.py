"""Conditional requests: the RFC 9110 evaluation, and 304/412 on the manifest and the ZIP."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request

from export_service.errors import PreconditionFailed
from export_service.http.conditional import evaluate_preconditions
from tests.helpers import AirTree, write

ETAG = '"abc"'
WHEN = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
AT = "Tue, 14 Nov 2023 22:13:20 GMT"
BEFORE = "Tue, 14 Nov 2023 22:13:19 GMT"


def _check(method: str = "GET", **headers: str) -> bool:
    """A resource with an ETag and a date (the ZIP, a file URL)."""
    return evaluate_preconditions(
        method,
        headers.get("if_match"),
        headers.get("if_none_match"),
        headers.get("if_unmodified_since"),
        ETAG,
        WHEN,
    )


def test_the_rfc_9110_order() -> None:
    assert _check() is False
    assert _check(if_none_match=ETAG) is True
    assert _check("HEAD", if_none_match='W/"abc"') is True
    assert _check(if_none_match='"x", "abc"') is True
    assert _check(if_none_match='"x"') is False
    assert _check(if_match=ETAG, if_none_match=ETAG) is True
    # If-Match is evaluated instead of If-Unmodified-Since
    assert _check(if_match=ETAG, if_unmodified_since=BEFORE) is False
    assert _check(if_unmodified_since="not a date") is False
    for failing in (
        {"if_match": '"x"'},
        {"if_match": 'W/"abc"'},
        {"if_match": ""},
        {"if_unmodified_since": BEFORE},
    ):
        with pytest.raises(PreconditionFailed):
            _check(**failing)
    with pytest.raises(PreconditionFailed):
        _check("PUT", if_none_match="*")


@pytest.mark.parametrize(
    "value",
    [
        "Mon, 1 Jan 99999999999 00:00:00 GMT",
        "Tue, 14 Nov 2023 22:13:20 -0000",  # a naive result
        "Tue, 99 Nov 2023 99:99:99 GMT",
        "9" * 5000,
        "\udcff",
        "",
    ],
)
def test_any_date_value_is_a_date_or_ignored(value: str) -> None:
    """Dates that overflow, are naive or are no dates fail no request (500):
    If-Unmodified-Since fails (412) for a date and is ignored otherwise."""
    with pytest.raises(PreconditionFailed) if value.endswith("-0000") else contextlib.nullcontext():
        _check(if_unmodified_since=value.replace("22:13:20", "22:13:19"))


@pytest.fixture
def run(tree: AirTree) -> AirTree:
    write(tree.render / "r" / "mix.wav", os.urandom(1000), mtime=1_700_000_000)
    return tree


@pytest.mark.parametrize("path", ["/api/air/export/list/r", "/api/air/export/zip/r"])
async def test_304_and_412_on_the_manifest_and_the_zip(
    run: AirTree, client: TestClient[Any, Any], path: str
) -> None:
    full = await client.get(path)
    etag = full.headers["ETag"]
    assert etag.startswith('"') and len(etag) > 10
    body = await full.read()
    cached = await client.get(path, headers={"If-None-Match": etag})
    assert cached.status == 304 and await cached.read() == b""
    assert cached.headers["ETag"] == etag
    failed = await client.get(path, headers={"If-Match": '"old"'})
    assert failed.status == 412
    error = await failed.read()
    assert json.loads(error)["detail"]["error"] == "precondition_failed"
    assert failed.headers["Content-Length"] == str(len(error))
    matching = await client.get(path, headers={"If-Match": etag})
    assert matching.status == 200 and await matching.read() == body
    head = await client.head(path)
    assert head.status == 200 and head.headers["ETag"] == etag
    assert head.headers["Content-Length"] == str(len(body))
    write(run.render / "r" / "new.wav", b"new")
    changed = await client.get(path, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag


def test_a_date_shows_nothing_unchanged() -> None:
    """No date of this service is a strong validator (a rename keeps the
    ZIP's, a restored mtime a file's): only the ETag can give a 304, and
    If-Unmodified-Since cannot hold, whatever the date (If-Modified-Since is
    not even read: test_the_zips_date_validates_nothing)."""
    for date in (AT, BEFORE, "Wed, 15 Nov 2023 00:00:00 GMT"):
        with pytest.raises(PreconditionFailed, match="If-Match"):
            _check(if_unmodified_since=date)
    assert _check(if_match=ETAG, if_unmodified_since=AT) is False
    # a resource with no date at all (the manifest) ignores both (RFC 9110 13.1.3-4)
    assert not evaluate_preconditions("GET", None, None, AT, ETAG, None)


async def test_the_zips_date_validates_nothing(run: AirTree, client: TestClient[Any, Any]) -> None:
    """A rename or a deletion in a run changes the ZIP but not its newest
    mtime: a date never gives a 304 for it, and If-Unmodified-Since fails."""
    path = "/api/air/export/zip/r"
    full = await client.get(path)
    body, last_modified = await full.read(), full.headers["Last-Modified"]
    assert last_modified == AT
    (run.render / "r" / "mix.wav").rename(run.render / "r" / "renamed.wav")
    for headers in ({"If-Modified-Since": AT}, {"If-Modified-Since": last_modified}):
        answer = await client.get(path, headers=headers)
        assert answer.status == 200 and await answer.read() != body
    refused = await client.get(path, headers={"If-Unmodified-Since": AT})
    assert refused.status == 412
    assert json.loads(await refused.read())["detail"]["error"] == "precondition_failed"


async def test_tag_lists_are_read_past_what_is_not_a_tag(
    run: AirTree, client: TestClient[Any, Any]
) -> None:
    """Why If-Match and If-None-Match are read here (conditional's
    docstring): aiohttp's ``if_match`` stops at the first thing that is not
    an entity tag and takes an empty If-Match for none. This fails once
    aiohttp's parsed headers give these answers."""
    path = "/api/air/export/zip/r"
    etag = (await client.head(path)).headers["ETag"]
    for value in (f"junk, {etag}", f'"v0" {etag}', f"W/ {etag}"):
        assert (await client.get(path, headers={"If-None-Match": value})).status == 304
        matching = await client.get(path, headers={"If-Match": value})
        assert matching.status == 200
        await matching.read()
        parsed = make_mocked_request("GET", path, headers={"If-Match": value}).if_match
        assert parsed is not None and etag.strip('"') not in [tag.value for tag in parsed]
    assert (await client.get(path, headers={"If-Match": ""})).status == 412
    assert make_mocked_request("GET", path, headers={"If-Match": ""}).if_match is None


def test_aiohttps_parsed_date_overflows() -> None:
    """Why If-Unmodified-Since is read here: aiohttp's parse of a date whose
    year overflows raises (a 500); here it is no date (ignored)."""
    value = "Mon, 1 Jan 99999999999 00:00:00 GMT"
    request = make_mocked_request("GET", "/", headers={"If-Unmodified-Since": value})
    with pytest.raises(OverflowError):
        _ = request.if_unmodified_since
    assert _check(if_unmodified_since=value) is False
