import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

from export_service.aio.streaming import OffloadedChunks


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
