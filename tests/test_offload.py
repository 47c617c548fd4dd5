"""The hop off the loop: it carries the caller's context, and what it opens is
closed when its awaiter is gone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import pytest

from export_service.aio.offload import open_off_loop, run_blocking, run_stoppable
from tests.helpers import wait_until


class Opened:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-pool")
    yield executor
    executor.shutdown(wait=True)


async def test_a_blocking_call_runs_in_the_pool_in_the_callers_context(
    pool: ThreadPoolExecutor,
) -> None:
    tag: ContextVar[str] = ContextVar("tag", default="none")
    tag.set("caller")

    def where() -> tuple[str, str]:
        return threading.current_thread().name, tag.get()

    thread, seen = await run_blocking(pool, where)
    assert thread.startswith("test-pool") and seen == "caller"


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_a_plain_value_hop_is_one_call_on_the_given_pool() -> None:
    """run_blocking and run_stoppable (aiofiles' wrap) make one hop each,
    on the service's pool, never on the loop's default executor."""
    with CountingPool() as pool:
        assert await run_blocking(pool, sum, [1, 2]) == 3
        assert pool.submitted == 1
        assert await run_stoppable(pool, lambda stop, value: value, "v") == "v"
        assert pool.submitted == 2


async def test_what_a_thread_opens_after_its_awaiter_was_cancelled_is_closed(
    pool: ThreadPoolExecutor,
) -> None:
    opening, may_finish = threading.Event(), threading.Event()
    opened = Opened()

    def slow_open() -> Opened:
        opening.set()
        may_finish.wait(10)
        return opened

    task = asyncio.create_task(open_off_loop(pool, slow_open))
    await asyncio.to_thread(opening.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not opened.closed  # the thread is still opening
    may_finish.set()
    pool.shutdown(wait=True)
    assert opened.closed


async def test_a_call_still_queued_when_cancelled_never_runs(
    pool: ThreadPoolExecutor,
) -> None:
    busy = threading.Event()
    pool.submit(busy.wait, 10)  # the one thread is taken
    ran: list[Opened] = []

    def open_it() -> Opened:
        ran.append(Opened())
        return ran[-1]

    task = asyncio.create_task(open_off_loop(pool, open_it))
    await wait_until(lambda: pool._work_queue.qsize() == 1)  # queued behind busy.wait
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    busy.set()
    pool.shutdown(wait=True)
    assert ran == []


async def test_a_result_is_handed_over_and_not_closed(pool: ThreadPoolExecutor) -> None:
    opened = await open_off_loop(pool, Opened)
    assert not opened.closed
    pool.shutdown(wait=True)


async def test_a_stoppable_call_has_its_flag_set_when_its_awaiter_is_cancelled(
    pool: ThreadPoolExecutor,
) -> None:
    started, ended = threading.Event(), threading.Event()

    def until_stopped(stop: threading.Event, label: str) -> str:
        started.set()
        assert stop.wait(30), "never stopped"
        ended.set()
        return label

    call = asyncio.create_task(run_stoppable(pool, until_stopped, "x"))
    await wait_until(started.is_set)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(ended.is_set)  # the thread is free again


async def test_a_stoppable_call_that_ends_returns_its_result(pool: ThreadPoolExecutor) -> None:
    def answer(stop: threading.Event, value: int) -> tuple[bool, int]:
        return stop.is_set(), value

    assert await run_stoppable(pool, answer, 4) == (False, 4)
