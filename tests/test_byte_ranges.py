"""byte_ranges: which bytes a Range header asks for, If-Range, HTTP dates.
(The routes' answers to them: tests/test_file_responses.py, tests/test_zip_ranges.py.)"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import make_mocked_request

from export_service.errors import RangeNotSatisfiable
from export_service.http.byte_ranges import http_date, requested_range

SIZE = 10_240
ETAG = '"v1"'
MODIFIED = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
MODIFIED_TEXT = "Tue, 14 Nov 2023 22:13:20 GMT"


def _range(header: str | None, if_range: str | None = None) -> tuple[int, int] | None:
    return requested_range(header, if_range, SIZE, ETAG)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=-10", (10230, 10239)),  # the last ten
        ("bytes=-99999", (0, 10239)),  # more than there is: all of it
        ("bytes=10000-", (10000, 10239)),
        ("bytes=10000-99999999", (10000, 10239)),  # the end is clipped
        ("bytes=10239-10239", (10239, 10239)),
        ("BYTES=1-2", (1, 2)),
        (" bytes=1-2 ", (1, 2)),
        ("bytes=0-" + "9" * 5000, (0, 10239)),  # no int of 5,000 digits is made
        ("bytes=-" + "9" * 5000, (0, 10239)),
        ("bytes=" + "0" * 5000 + "1-2", (1, 2)),
    ],
)
def test_one_range_is_its_first_and_last_byte(header: str, expected: tuple[int, int]) -> None:
    assert _range(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "items=0-1",  # another unit
        "bytes=0-1,5-6",  # several ranges: the whole body (RFC 9110 allows it)
        "bytes=5-1",  # last before first: invalid, ignored
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-2-3",
    ],
)
def test_what_is_no_single_byte_range_asks_for_the_whole_body(header: str | None) -> None:
    assert _range(header) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=10240-10240", SIZE),  # starts at the end
        ("bytes=99999-", SIZE),
        ("bytes=" + "9" * 5000 + "-", SIZE),
        ("bytes=-0", SIZE),  # the last zero bytes
        ("bytes=-5", 0),  # an empty body has no last bytes
        ("bytes=0-", 0),
    ],
)
def test_a_range_outside_the_body_is_416_with_its_size(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as error:
        requested_range(header, None, size, ETAG, what="the file")
    assert error.value.status == 416
    assert error.value.headers == {"Content-Range": f"bytes */{size}"}
    assert error.value.message == f"the file has {size} bytes; the range asked for lies outside it"


@pytest.mark.parametrize(
    ("if_range", "served"),
    [
        (ETAG, True),
        (f" {ETAG} ", True),
        ('"v0"', False),  # another version: the whole body, not a splice
        ('W/"v1"', False),  # weak tags never match for ranges
        (MODIFIED_TEXT, False),  # a date never validates: see the last test
        ("Tue, 14 Nov 2023 22:13:19 GMT", False),
        ("not a date", False),
    ],
)
def test_if_range_serves_the_range_only_for_the_current_version(
    if_range: str, served: bool
) -> None:
    assert _range("bytes=0-9", if_range) == ((0, 9) if served else None)


def test_if_range_that_fails_ignores_even_an_unsatisfiable_range() -> None:
    assert _range("bytes=99999-", '"v0"') is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (MODIFIED_TEXT, MODIFIED),
        ("Tuesday, 14-Nov-23 22:13:20 GMT", MODIFIED),  # RFC 850, obsolete but valid
        ("Tue Nov 14 22:13:20 2023", MODIFIED),  # asctime
        ("Tue, 14 Nov 2023 22:13:20 -0000", MODIFIED),  # naive: taken as UTC
        (
            "Tue, 14 Nov 2023 23:13:20 +0100",
            datetime(2023, 11, 14, 23, 13, 20, tzinfo=timezone(timedelta(hours=1))),
        ),
    ],
)
def test_http_dates_are_aware(value: str, expected: datetime) -> None:
    date = http_date(value)
    assert date == expected and date.tzinfo is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "not a date",
        "Tue, 99 Nov 2023 99:99:99 GMT",
        "Mon, 1 Jan 99999999999 00:00:00 GMT",  # overflows
        "9" * 5000,
        MODIFIED_TEXT + " " * 60,  # longer than any date
        "\udcff",
    ],
)
def test_what_is_no_http_date_is_none(value: str | None) -> None:
    assert http_date(value) is None


def test_a_date_never_validates_a_range() -> None:
    """RFC 9110 13.1.5: a date in If-Range only for a strong Last-Modified,
    which no Last-Modified of this service is (a rename keeps the ZIP's, a
    restored mtime a file's): the whole body, never a range of what may be
    other bytes, whatever date is sent; the strong ETag validates."""
    for date in (MODIFIED_TEXT, "Tuesday, 14-Nov-23 22:13:20 GMT", "Tue Nov 14 22:13:20 2023"):
        assert requested_range("bytes=0-9", date, SIZE, ETAG) is None
    assert requested_range("bytes=0-9", ETAG, SIZE, ETAG) == (0, 9)


def _aiohttps_range(header: str) -> slice:
    return make_mocked_request("GET", "/", headers={"Range": header}).http_range


def test_aiohttps_parsed_range_answers_otherwise() -> None:
    """Why Range and If-Range are read here (byte_ranges' docstring): this
    fails once aiohttp's ``http_range`` and ``if_range`` give these answers."""
    assert _aiohttps_range("bytes=-0") == _aiohttps_range("bytes=0-")
    with pytest.raises(RangeNotSatisfiable):
        _range("bytes=-0")
    assert _range("bytes=0-") == (0, SIZE - 1)
    huge = "9" * 5000
    for header, ours in ((f"bytes={huge}-", None), (f"bytes=0-{huge}", (0, SIZE - 1))):
        with pytest.raises(ValueError):
            _aiohttps_range(header)
        with pytest.raises(RangeNotSatisfiable) if ours is None else contextlib.nullcontext():
            assert _range(header) == ours
    assert make_mocked_request("GET", "/", headers={"If-Range": ETAG}).if_range is None
    assert _range("bytes=0-9", ETAG) == (0, 9)
