"""The application's typed state, and the one visible hop off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from aiohttp import web

from .config import Settings
from .links import LinkStore

SETTINGS = web.AppKey("settings", Settings)
LINKS = web.AppKey("links", LinkStore)
IO_EXECUTOR = web.AppKey("io_executor", ThreadPoolExecutor)

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def run_blocking(
    request: web.Request, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run a blocking function in the I/O pool, as one hop."""
    return await asyncio.get_running_loop().run_in_executor(
        request.app[IO_EXECUTOR], lambda: function(*args, **kwargs)
    )
