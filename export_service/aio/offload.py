"""The one visible hop off the event loop: a blocking call run in a thread pool.

Handlers pass the pool (``request.app[IO_EXECUTOR]``, ``SCAN_EXECUTOR``);
nothing here knows about HTTP, so the hop reads the same from any caller.
Each hop carries the caller's context (so worker threads' log lines carry
the request id). Two kinds of hop:

- **Plain values** (:func:`run_blocking`, :func:`run_stoppable`): the scans
  of the roots for a manifest or a ZIP plan, the links file's reads and
  writes, readiness, /metrics. A cancelled awaiter may drop the result:
  nothing in it needs closing. These go through aiofiles
  (``aiofiles.os.wrap(fn)(executor=...)``), one ``run_in_executor`` on the
  service's own pool, exactly one hop, as before.
- **Hops that need the concurrent future** (:func:`open_off_loop`; the ZIP
  batches of ``streaming.py``): whatever a cancelled hop opens must still
  be closed when the thread returns, and a batch generator closed once its
  running batch ends. aiofiles awaits ``run_in_executor`` and hides that
  future (a cancelled hop's result would be dropped unclosed), and its file
  objects make one hop per read where the service makes one per step: these
  stay on ``concurrent.futures`` directly.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import aiofiles.os

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
    """Run a blocking function that returns a plain value (nothing to close)
    in ``executor``, as one hop (aiofiles' wrap: ``run_in_executor``)."""
    return await aiofiles.os.wrap(_in_context(function, *args, **kwargs))(executor=executor)


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
