"""app: the application factory, its middlewares (request ids, the bearer
token, every error as JSON), what runs while it serves, and its typed state:
every key has a value of its type once the app has started (a key added without
a value fails here, not in a handler)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest.mock import ANY

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from export_service.aio.download_slots import DownloadSlots
from export_service.config import Settings
from export_service.errors import NotFound
from export_service.exports import Services
from export_service.http import keys
from export_service.http.access import runner_options
from export_service.http.app import GC_FULL_COLLECTION_EVERY, create_app
from export_service.http.keys import METRICS
from export_service.http.shutdown import RequestsInFlight
from export_service.obs.metrics import Metrics
from export_service.zip.crcs import CrcCache
from tests.helpers import (
    AirTree,
    ClientFactory,
    error_detail,
    pipelined,
    split_responses,
    wait_until,
    write,
)


async def test_full_collections_are_rarer_while_the_app_runs(tree: AirTree) -> None:
    """bench/huge_runs.py: at Python's default, full collections over the
    planned entries of big ZIPs held /healthz for 300-500 ms."""
    before = gc.get_threshold()
    assert before[2] < GC_FULL_COLLECTION_EVERY
    server = TestServer(create_app(tree.settings()))
    await server.start_server(**runner_options(server.app))
    try:
        assert gc.get_threshold() == (*before[:2], GC_FULL_COLLECTION_EVERY)
    finally:
        await server.close()
    assert gc.get_threshold() == before


async def test_request_ids_are_taken_or_made_and_echoed(client: TestClient[Any, Any]) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123"
    made = await client.get("/api/air/export/list/r")
    assert len(made.headers["X-Request-ID"]) == 32
    hostile = await client.get("/healthz", headers={"X-Request-ID": "a b\tc" * 50})
    assert hostile.headers["X-Request-ID"] != "a b\tc" * 50
    error = await client.get("/nope", headers={"X-Request-ID": "err-1"})
    assert error.headers["X-Request-ID"] == "err-1"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/air/export/list/r", 200),
        ("/api/air/export/zip/r", 200),
        ("/api/audio/r/a.wav", 200),
        ("/api/air/export/links/r", 404),  # no link for r
        ("/api/air/export/openapi.json", 200),
        ("/nope", 404),
    ],
)
async def test_auth_token_guards_everything_but_health_and_metrics(
    tree: AirTree, make_client: ClientFactory, path: str, status: int
) -> None:
    write(tree.render / "r" / "a.wav", b"a")
    client = await make_client(auth={"token": "s3cret"})
    denied = await client.get(path)
    assert denied.status == 401
    assert denied.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await denied.json())["detail"]["error"] == "unauthorized"
    wrong = await client.get(path, headers={"Authorization": "Bearer s3cre"})
    assert wrong.status == 401
    allowed = await client.get(path, headers={"Authorization": "Bearer s3cret"})
    assert allowed.status == status
    for open_path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(open_path)).status == 200


async def test_the_event_loop_lag_is_measured_while_the_app_runs(
    client: TestClient[Any, Any],
) -> None:
    assert client.app is not None
    registry = client.app[METRICS].registry
    await wait_until(
        lambda: (registry.get_sample_value("export_event_loop_lag_seconds_count") or 0) >= 3
    )


async def test_unknown_route_is_json_404(client: TestClient[Any, Any]) -> None:
    detail = await error_detail(client, "GET", "/nope", 404)
    assert detail["error"] == "not_found"


async def test_wrong_method_is_json_405_with_allow(client: TestClient[Any, Any]) -> None:
    response = await client.post("/api/air/export/zip/r")
    assert response.status == 405
    assert response.headers["Allow"] == "GET,HEAD"
    assert (await response.json())["detail"]["error"] == "method_not_allowed"


async def test_error_body_is_compact_like_the_original(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/air/export/list/%20")
    assert response.status == 422
    assert await response.read() == (
        b'{"detail":{"error":"invalid_run_id",'
        b'"message":"render_run_id must not be empty or blank"}}'
    )


@pytest.mark.parametrize("failure", [RuntimeError("a bug"), NotFound("gone meanwhile")])
async def test_an_error_raised_after_the_headers_aborts_instead_of_a_second_response(
    tree: AirTree, aiohttp_client: Any, caplog: pytest.LogCaptureFixture, failure: Exception
) -> None:
    """Whatever a handler raises once its status line is out (an unexpected
    error or one of the service's own) cannot become a JSON answer: it would
    land inside the body, and a pipelined request's answer after it."""

    async def fails_midway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100"})
        await response.prepare(request)
        await response.write(b"x" * 10)
        raise failure

    app = create_app(tree.settings())
    app.router.add_get("/fails", fails_midway)
    server = TestServer(app)
    await server.start_server(**runner_options(app))
    client: TestClient[Any, Any] = await aiohttp_client(server)
    caplog.set_level(logging.INFO)
    data = await pipelined(
        client,
        b"GET /fails HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    assert split_responses(data) == [(200, ANY, b"x" * 10)]
    lines = [r.getMessage() for r in caplog.records if r.name == "export_service.access"]
    assert lines == ["GET /fails 500 10 error"]
    (record,) = [r for r in caplog.records if r.name == "export_service.app"]
    assert record.getMessage() == (
        "GET /fails failed after its headers went out: the connection is aborted"
    )
    assert record.exc_info is not None and record.exc_info[1] is failure


# Each key with the type its value must have. aiohttp keeps the type a key
# was made with only in a private attribute (AppKey._t), so it is said again
# here; a key that keys.py adds fails test_each_key_has_its_type_here until
# it is listed.
KEY_TYPES: dict[web.AppKey[Any], Any] = {
    keys.SETTINGS: Settings,
    keys.SERVICES: Services,
    keys.IO_EXECUTOR: ThreadPoolExecutor,
    keys.ZIP_EXECUTOR: ThreadPoolExecutor,
    keys.SCAN_EXECUTOR: ThreadPoolExecutor,
    keys.METRICS: Metrics,
    keys.ZIP_SLOTS: DownloadSlots,
    keys.CRC_CACHE: CrcCache,
    keys.SHUTTING_DOWN: asyncio.Event,
    keys.IN_FLIGHT: RequestsInFlight,
    keys.CLOCK: Callable,
}


def _app_keys() -> list[web.AppKey[Any]]:
    return [value for value in vars(keys).values() if isinstance(value, web.AppKey)]


def test_each_key_has_its_type_here() -> None:
    assert keys.SETTINGS in _app_keys() and keys.IO_EXECUTOR in _app_keys()
    assert sorted(map(repr, KEY_TYPES)) == sorted(map(repr, _app_keys()))


async def test_a_started_app_holds_a_value_of_each_keys_type(
    client: TestClient[Any, Any],
) -> None:
    app = client.app
    assert app is not None
    for key, kind in KEY_TYPES.items():
        assert key in app, key
        assert isinstance(app[key], kind), key
