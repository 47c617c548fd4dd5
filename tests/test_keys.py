"""Every key of the application's typed state has a value of its type once the
app has started (a key added without a value fails here, not in a handler)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from export_service.aio.download_slots import DownloadSlots
from export_service.config import Settings
from export_service.exports import Services
from export_service.http import keys
from export_service.http.shutdown import RequestsInFlight
from export_service.obs.metrics import Metrics
from export_service.zip.crcs import CrcCache

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
