"""The application's typed state, and the one visible hop off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

from aiohttp import web

from .archive import CrcCache
from .config import Settings
from .manifest import ExportSources
from .metrics import Metrics
from .shutdown import RequestsInFlight


class DownloadSlots:
    """How many ZIPs stream at once; one beyond the limit is refused, not queued
    (a queued download would hold its client's connection without progress)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1


SETTINGS = web.AppKey("settings", Settings)
SOURCES = web.AppKey("sources", ExportSources)
IO_EXECUTOR = web.AppKey("io_executor", ThreadPoolExecutor)
ZIP_EXECUTOR = web.AppKey("zip_executor", ThreadPoolExecutor)
METRICS = web.AppKey("metrics", Metrics)
ZIP_SLOTS = web.AppKey("zip_slots", DownloadSlots)
CRC_CACHE = web.AppKey("crc_cache", CrcCache)
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
IN_FLIGHT = web.AppKey("in_flight", RequestsInFlight)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Closable(Protocol):
    def close(self) -> None: ...


_C = TypeVar("_C", bound=Closable)


def _in_context(
    function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> Callable[[], _T]:
    """The call, to run in a worker thread in the current context (so its
    log lines carry the request id)."""
    return functools.partial(contextvars.copy_context().run, function, *args, **kwargs)


async def run_blocking(
    request: web.Request, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run a blocking function in the I/O pool, as one hop."""
    call = _in_context(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(request.app[IO_EXECUTOR], call)


async def open_off_loop(
    request: web.Request, function: Callable[_P, _C], *args: _P.args, **kwargs: _P.kwargs
) -> _C:
    """Run a blocking function that opens something in the I/O pool, as one hop.

    If the awaiting request is cancelled (its client hung up), the thread
    may still be opening: whatever it returns is closed as soon as it does,
    so an abandoned request leaves no descriptor behind. (A function that is
    still queued is not run at all.)
    """
    future = request.app[IO_EXECUTOR].submit(_in_context(function, *args, **kwargs))
    try:
        return await asyncio.wrap_future(future)
    except BaseException:
        future.add_done_callback(_close_result)
        raise


def _close_result(future: Future[_C]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
