"""The application's typed state: one ``web.AppKey`` per thing ``create_app`` keeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from aiohttp import web

from ..aio.download_slots import DownloadSlots
from ..config import Settings
from ..exports import Services
from ..obs.metrics import Metrics
from ..zip.crcs import CrcCache
from .shutdown import RequestsInFlight

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
IO_EXECUTOR = web.AppKey("io_executor", ThreadPoolExecutor)
ZIP_EXECUTOR = web.AppKey("zip_executor", ThreadPoolExecutor)
SCAN_EXECUTOR = web.AppKey("scan_executor", ThreadPoolExecutor)
METRICS = web.AppKey("metrics", Metrics)
ZIP_SLOTS = web.AppKey("zip_slots", DownloadSlots)
CRC_CACHE = web.AppKey("crc_cache", CrcCache)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
IN_FLIGHT = web.AppKey("in_flight", RequestsInFlight)
# Unix seconds now: what signed URLs' expiries are compared with (time.time).
CLOCK = web.AppKey("clock", cast("type[Callable[[], float]]", Callable))
