"""Work off the event loop: the hop carries the caller's context and what it
opens is closed when its awaiter is gone; a blocking byte iterator pulled in
batches; and the kernel's count of bytes a peer took, with the deadline that
moves with it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import pytest

from export_service.aio.offload import open_off_loop, run_blocking, run_stoppable
from export_service.aio.send_progress import SendProgress, bytes_acked
from export_service.aio.streaming import OffloadedChunks
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


def _numbered(count: int, size: int, log: list[str]) -> Generator[bytes, None, None]:
    try:
        for index in range(count):
            log.append(threading.current_thread().name)
            yield bytes([index]) * size
    finally:
        log.append("closed")


async def test_chunks_come_in_batches_of_about_batch_bytes_off_the_loop() -> None:
    log: list[str] = []
    with ThreadPoolExecutor(2, thread_name_prefix="io") as executor:
        chunks = OffloadedChunks(_numbered(10, 64 * 1024, log), executor, 256 * 1024)
        batches = []
        while batch := await chunks.next_batch():
            batches.append(batch)
        chunks.close()
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert all(name.startswith("io") for name in log[:-1])
    assert log[-1] == "closed"


async def test_close_with_a_batch_in_flight_closes_when_it_returns() -> None:
    release = threading.Event()
    log: list[str] = []

    def slow() -> Generator[bytes, None, None]:
        try:
            yield b"a"
            release.wait(5)
            yield b"b"
        finally:
            log.append("closed")

    with ThreadPoolExecutor(1) as executor:
        chunks = OffloadedChunks(slow(), executor, 1 << 20)
        pending = chunks.next_batch().__await__()
        next(pending)  # the batch is now running in the worker thread
        chunks.close()
        assert log == []  # a running generator cannot be closed from outside...
        release.set()
    assert log == ["closed"]  # ...so it is closed as soon as its batch returns
    pending.close()


async def test_the_next_batch_is_gathered_while_the_current_one_is_sent() -> None:
    second_batch_started = threading.Event()

    def chunks() -> Generator[bytes, None, None]:
        yield b"a" * 1024
        second_batch_started.set()
        yield b"b" * 1024

    with ThreadPoolExecutor(1) as executor:
        offloaded = OffloadedChunks(chunks(), executor, 1024)
        assert await offloaded.next_batch() == [b"a" * 1024]
        # Nobody asked for it yet, but the worker is already reading it.
        assert second_batch_started.wait(5)
        assert await offloaded.next_batch() == [b"b" * 1024]
        assert await offloaded.next_batch() == []
        offloaded.close()


async def test_nothing_is_read_ahead_after_close() -> None:
    pulled: list[int] = []

    def chunks() -> Generator[bytes, None, None]:
        for index in range(100):
            pulled.append(index)
            yield b"x" * 1024

    with ThreadPoolExecutor(1) as executor:
        offloaded = OffloadedChunks(chunks(), executor, 1024)
        await offloaded.next_batch()
        offloaded.close()
    # The batch read ahead was submitted before close() and runs (a running
    # generator cannot be closed from outside); nothing is started after it.
    assert pulled == [0, 1]


async def test_an_empty_chunk_ends_the_batch_without_ending_the_stream() -> None:
    """A CRC pass yields an empty chunk every few MiB it reads: the batch
    ends there (the thread is free for other downloads' batches), and a
    batch of only that step is not the end of the stream."""

    def pass_then_data() -> Generator[bytes, None, None]:
        yield b"a" * 10
        yield b""
        yield b""
        yield b"b" * 10

    with ThreadPoolExecutor(1) as executor:
        chunks = OffloadedChunks(pass_then_data(), executor, 1 << 20)
        batches = []
        while batch := await chunks.next_batch():
            batches.append(batch)
        chunks.close()
    assert batches == [[b"a" * 10], [b""], [b"b" * 10]]


def test_bytes_acked_counts_what_the_peer_took() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        sender, _ = server.accept()
        with sender:
            before = bytes_acked(sender)
            assert before is not None
            sender.sendall(b"x" * 100_000)
            received = 0
            while received < 100_000:
                received += len(client.recv(65536))
            deadline = time.monotonic() + 5  # the last ACK may trail the data a moment
            while (bytes_acked(sender) or 0) - before < 100_000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bytes_acked(sender) == before + 100_000


def test_bytes_acked_is_none_where_the_kernel_cannot_tell() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert bytes_acked(left) is None
    assert bytes_acked(None) is None


async def test_the_deadline_holds_while_a_send_waits_on_a_client_that_takes_nothing() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2) as deadline:
            progress = SendProgress(None, deadline, 0.2)
            try:
                with progress.sending():
                    await asyncio.sleep(2)  # a send that never ends: the time is the test
            finally:
                progress.stop()
    assert time.monotonic() - started < 1  # the first deadline, not a moved one


async def test_the_deadline_moves_while_the_response_waits_for_its_own_data() -> None:
    async with asyncio.timeout(0.2) as deadline:
        progress = SendProgress(None, deadline, 0.2)
        try:
            await asyncio.sleep(0.6)  # not sending (producing the next batch) past the deadline
        finally:
            progress.stop()
