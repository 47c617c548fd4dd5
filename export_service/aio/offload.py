"""The one visible hop off the event loop: a blocking call run in a thread pool.

Handlers pass the pool (``request.app[IO_EXECUTOR]``); nothing here knows
about HTTP, so the hop reads the same from any caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Concatenate, ParamSpec, Protocol, TypeVar

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
    executor: Executor, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """Run a blocking function in ``executor``, as one hop."""
    call = _in_context(function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(executor, call)


async def run_stoppable(
    executor: Executor,
    function: Callable[Concatenate[threading.Event, _P], _T],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Run a blocking function in ``executor``, as one hop, passing it a stop
    flag first: when the awaiting task is cancelled (its client hung up, the
    service cut it at shutdown) the flag is set, and a function that checks
    it (a scan: at each folder) ends soon instead of running on for nobody.
    (A function that is still queued is not run at all.)"""
    stop = threading.Event()
    try:
        return await run_blocking(executor, function, stop, *args, **kwargs)
    except BaseException:
        stop.set()
        raise


async def open_off_loop(
    executor: Executor, function: Callable[_P, _C], *args: _P.args, **kwargs: _P.kwargs
) -> _C:
    """Run a blocking function that opens something in ``executor``, as one hop.

    If the awaiting task is cancelled (its client hung up), the thread
    may still be opening: whatever it returns is closed as soon as it does,
    so an abandoned request leaves no descriptor behind. (A function that is
    still queued is not run at all.)
    """
    future = executor.submit(_in_context(function, *args, **kwargs))
    try:
        return await asyncio.wrap_future(future)
    except BaseException:
        future.add_done_callback(_close_result)
        raise


def _close_result(future: Future[_C]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
