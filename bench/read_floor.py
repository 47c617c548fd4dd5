"""The floor under the small-file target: the least a CPython aiohttp
service built like this one does to send a folder of small files, with no
ZIP at all. bench/small_files.py runs it beside the service and nginx.

It lists the folder (scandir and a stat per file, in a worker thread, as
the scan before a plan does), then reads every file (opened by the folder's
descriptor, read whole, fstat, closed) into ~1 MiB batches in that worker
thread, which the event loop writes as they come, one batch read ahead: the
service's own loop. No entry names, readability checks, headers, CRC-32s,
central directory or checks against the scan. Whatever a ZIP costs on top of
that must fit between this floor's time and the target's.

    python -m bench.read_floor FOLDER PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

BATCH_BYTES = 1024 * 1024
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def listing(folder: str) -> list[tuple[str, int]]:
    """The folder's files (name, size), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((entry.name, entry.stat(follow_symlinks=False).st_size) for entry in entries)


def read_batch(folder_fd: int, files: list[tuple[str, int]], start: int) -> tuple[bytes, int]:
    """Files from ``start`` on, read whole and joined, about BATCH_BYTES;
    the index of the next file."""
    pieces = []
    gathered = 0
    index = start
    while index < len(files) and gathered < BATCH_BYTES:
        name, size = files[index]
        fd = os.open(name, _READ_FLAGS, dir_fd=folder_fd)
        try:
            pieces.append(os.read(fd, size))
            os.fstat(fd)
        finally:
            os.close(fd)
        gathered += size
        index += 1
    return b"".join(pieces), index


def make_app(folder: str) -> web.Application:
    executor = ThreadPoolExecutor(1)

    async def send_all(request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        files = await loop.run_in_executor(executor, listing, folder)
        response = web.StreamResponse()
        response.content_length = sum(size for _, size in files)
        await response.prepare(request)
        folder_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            ahead = loop.run_in_executor(executor, read_batch, folder_fd, files, 0)
            while True:
                batch, index = await ahead
                if not batch:
                    break
                ahead = loop.run_in_executor(executor, read_batch, folder_fd, files, index)
                await response.write(batch)
        finally:
            await asyncio.shield(ahead)  # the worker may still use the descriptor
            os.close(folder_fd)
        await response.write_eof()
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stop_executor(_: web.Application) -> None:
        executor.shutdown()

    app = web.Application()
    app.router.add_get("/files", send_all)
    app.router.add_get("/healthz", healthz)
    app.on_cleanup.append(stop_executor)
    return app


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])
    web.run_app(make_app(folder), host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
