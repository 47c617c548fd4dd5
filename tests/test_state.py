"""The hop that opens something closes it when its awaiter is gone."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from export_service.state import IO_EXECUTOR, open_off_loop
from tests.conftest import wait_until


class Opened:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def request_with_pool() -> web.Request:
    app = web.Application()
    app[IO_EXECUTOR] = ThreadPoolExecutor(max_workers=1)
    return make_mocked_request("GET", "/", app=app)


async def test_what_a_thread_opens_after_its_awaiter_was_cancelled_is_closed(
    request_with_pool: web.Request,
) -> None:
    opening, may_finish = threading.Event(), threading.Event()
    opened = Opened()

    def slow_open() -> Opened:
        opening.set()
        may_finish.wait(10)
        return opened

    task = asyncio.create_task(open_off_loop(request_with_pool, slow_open))
    await asyncio.to_thread(opening.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not opened.closed  # the thread is still opening
    may_finish.set()
    request_with_pool.app[IO_EXECUTOR].shutdown(wait=True)
    assert opened.closed


async def test_a_call_still_queued_when_cancelled_never_runs(
    request_with_pool: web.Request,
) -> None:
    pool = request_with_pool.app[IO_EXECUTOR]
    busy = threading.Event()
    pool.submit(busy.wait, 10)  # the one thread is taken
    ran: list[Opened] = []

    def open_it() -> Opened:
        ran.append(Opened())
        return ran[-1]

    task = asyncio.create_task(open_off_loop(request_with_pool, open_it))
    await wait_until(lambda: pool._work_queue.qsize() == 1)  # queued behind busy.wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    busy.set()
    pool.shutdown(wait=True)
    assert ran == []


async def test_a_result_is_handed_over_and_not_closed(request_with_pool: web.Request) -> None:
    opened = await open_off_loop(request_with_pool, Opened)
    assert not opened.closed
    request_with_pool.app[IO_EXECUTOR].shutdown(wait=True)
