import threading
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor

from export_service.streaming import OffloadedChunks


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
