"""Pulling a blocking byte iterator off the event loop, about 1 MiB per hop.

One thread hop per 64 KiB chunk costs as much as the data, so chunks are
gathered into batches in the worker thread. Runs of small chunks (a ZIP's
headers and descriptors, small files) are joined there too, so the loop makes
one write for them instead of one ``send()`` each; large chunks pass through
without a copy.

One batch is read ahead: while the loop sends batch N, a worker thread
gathers batch N+1, so reading and sending overlap (on two cores, a ZIP of
many small files is bound by the worker, a ZIP of big files by both).
Closing releases the iterator at once: right away when no batch is in
flight, else as soon as the running batch returns (a running generator cannot
be closed from outside).

An empty chunk is a step of work with nothing to send (archive.py's CRC
pass over a big file yields one every few MiB read): the batch ends there,
so a long pass is many short hops, queued behind the other downloads'
batches, and never holds a thread for the whole file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Generator
from concurrent.futures import Executor

SMALL_CHUNK = 64 * 1024


def _next_batch(chunks: Generator[bytes, None, None], batch_bytes: int) -> list[bytes]:
    batch: list[bytes] = []
    small: list[bytes] = []
    gathered = 0
    for chunk in chunks:
        if not chunk:  # a step of work with nothing to send (a CRC pass): give the thread up
            if not batch and not small:
                return [chunk]  # not the end: an empty list is
            break
        if len(chunk) < SMALL_CHUNK:
            small.append(chunk)
        else:
            if small:
                batch.append(b"".join(small))
                small = []
            batch.append(chunk)
        gathered += len(chunk)
        if gathered >= batch_bytes:
            break
    if small:
        batch.append(b"".join(small))
    return batch


class OffloadedChunks:
    def __init__(
        self, chunks: Generator[bytes, None, None], executor: Executor, batch_bytes: int
    ) -> None:
        self._chunks = chunks
        self._executor = executor
        self._batch_bytes = batch_bytes
        self._in_flight: concurrent.futures.Future[list[bytes]] | None = None
        self._closed = False

    def _submit(self) -> concurrent.futures.Future[list[bytes]]:
        self._in_flight = self._executor.submit(_next_batch, self._chunks, self._batch_bytes)
        return self._in_flight

    async def next_batch(self) -> list[bytes]:
        """The next chunks, about ``batch_bytes`` together; empty at the end.
        The batch after it starts being gathered before this returns."""
        batch = await asyncio.wrap_future(self._in_flight or self._submit())
        self._in_flight = None
        if batch and not self._closed:
            self._submit()
        return batch

    def close(self) -> None:
        self._closed = True
        in_flight = self._in_flight
        if in_flight is not None and not in_flight.done():
            in_flight.add_done_callback(lambda _: self._chunks.close())
        else:
            self._chunks.close()
