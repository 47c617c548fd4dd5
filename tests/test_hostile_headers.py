"""Header and URL values no client library would send, sent as raw bytes:
never a 500, errors in the JSON shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import AirTree, ClientFactory, raw_exchange, write

TOKEN = "s3cret"
ROUTES = [
    b"/api/audio/r/mix.wav",
    b"/api/air/export/zip/r",
    b"/api/air/export/list/r",
    b"/api/air/export/links/r",
]
HOSTILE_HEADERS = [
    b"Range: bytes=" + b"9" * 5000 + b"-",
    b"Range: bytes=0-" + b"9" * 5000,
    b"Range: bytes=-" + b"9" * 5000,
    b"Range: bytes=" + b"9" * 5000 + b"-" + b"9" * 5001,
    b"Range: bytes=\xff-",
    b"Range: \xff",
    b"If-Range: Mon, 1 Jan 99999999999 00:00:00 GMT",
    b"If-Range: \xff\xfe",
    b"If-Range: W/\xff",
    b"If-Modified-Since: Mon, 1 Jan 99999999999 00:00:00 GMT",
    b"If-Modified-Since: " + b"9" * 5000,
    b"If-Unmodified-Since: Tue, 99 Nov 2023 99:99:99 -9999",
    b"If-Unmodified-Since: \xff",
    b"If-None-Match: \xff",
    b'If-None-Match: "\xff"',
    b"If-Match: \xff",
    b"X-Request-ID: \xff\xfe",
    b"X-Request-ID: " + b"a" * 10_000,
    b"Accept-Encoding: \xff",
]


async def _status(
    client: TestClient[Any, Any], target: bytes, *headers: bytes
) -> tuple[int, bytes]:
    request = b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    request += b"".join(header + b"\r\n" for header in headers) + b"\r\n"
    head, body = await raw_exchange(client, request)
    return int(head.split()[1]), body


def _check(status: int, body: bytes, what: object) -> None:
    """Never a 500; an error is JSON, unless aiohttp's parser refused the
    request before the application saw it (a plain-text 400: a byte not
    allowed in a URL or header, a line over 8,190 bytes)."""
    assert status != 500, what
    if status >= 400 and not (status == 400 and body.startswith((b"Invalid", b"Got more"))):
        assert json.loads(body)["detail"]["error"], what


@pytest.fixture
def populated(tree: AirTree) -> AirTree:
    write(tree.render / "r" / "mix.wav", b"x" * 1000)
    tree.link({"r": {"param_run_id": "p"}})
    return tree


@pytest.mark.parametrize("header", HOSTILE_HEADERS, ids=lambda h: h[:40].decode("latin-1"))
async def test_hostile_header_values_on_every_route(
    populated: AirTree, client: TestClient[Any, Any], header: bytes
) -> None:
    for route in ROUTES:
        status, body = await _status(client, route, header)
        _check(status, body, (route, header))


async def test_a_hostile_request_id_is_replaced(
    populated: AirTree, client: TestClient[Any, Any]
) -> None:
    for value in (b"\xff\xfe", b"a b", b"a" * 200):
        request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-ID: "
        head, _ = await raw_exchange(client, request + value + b"\r\n\r\n")
        echoed = next(line for line in head.split(b"\r\n") if line.startswith(b"X-Request-ID"))
        assert len(echoed.split(b": ")[1]) == 32  # a new id, not the value


@pytest.mark.parametrize(
    "target",
    [
        b"/api/air/export/list/r?param_run_id=%FF",
        b"/api/air/export/list/r?param_run_id=%00",
        b"/api/air/export/list/r?param_run_id=%ZZ",
        b"/api/air/export/list/r?param_run_id=" + b"p" * 5000,
        b"/api/air/export/list/r?param_run_id=a&param_run_id=b",
        b"/api/air/export/list/r?param_run_id=\xff",
        b"/api/air/export/zip/r?param_run_id=%C0%AE%C0%AE",
        b"/api/air/export/zip/%FF",
        b"/api/air/export/zip/%00",
        b"/api/air/export/list/%ZZ",
        b"/api/air/export/list/\xff",
        b"/api/air/export/links/%0A",
        b"/api/audio/%ZZ",
        b"/api/audio/r/%FF%FE.wav",
        b"/api/audio/r/%C0%AE%C0%AE/mix.wav",
        b"/api/audio/r/mix.wav%",
        b"/api/audio/r/\xff.wav",
        b"/api/audio/" + b"%2e" * 3000,
        b"/api/audio/r/" + b"a" * 5000,
        b"/api/audio/r/" + b"a/" * 3000 + b"b",
    ],
)
async def test_hostile_queries_and_paths(
    populated: AirTree, client: TestClient[Any, Any], target: bytes
) -> None:
    status, body = await _status(client, target)
    _check(status, body, target)


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff", b"Bearer s3cret\xff", b"Bearer \xc3\xa9", b"\xff s3cret", b"Bearer", b""],
)
async def test_a_non_ascii_token_is_a_401(
    populated: AirTree, make_client: ClientFactory, authorization: bytes
) -> None:
    client = await make_client(auth={"token": TOKEN})
    status, body = await _status(
        client, b"/api/air/export/list/r", b"Authorization: " + authorization
    )
    assert status == 401
    assert json.loads(body)["detail"]["error"] == "unauthorized"
    status, _ = await _status(client, b"/api/air/export/list/r", b"Authorization: Bearer s3cret")
    assert status == 200
