"""At its descriptor limit the service answers a JSON 503 and /readyz says so,
instead of a 200 with an empty manifest or ZIP, or a 404 for a file that is there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import Iterator
from typing import Any

from aiohttp.test_utils import TestClient

from tests.conftest import AirTree, write


@contextlib.contextmanager
def no_descriptor_left() -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE to its lowest free descriptor
    number, so the next open fails with EMFILE; restored on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_requests_get_a_json_503_and_readyz_says_why(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "mix.wav", b"x" * 1000)
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)

    async def get(path: str) -> tuple[int, bytes]:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return int(head.split()[1]), await reader.readexactly(length)

    assert (await get("/readyz"))[0] == 200  # the connection is accepted and kept
    with no_descriptor_left():
        answers = {
            path: await get(path)
            for path in (
                "/api/air/export/list/r",
                "/api/air/export/zip/r",
                "/api/audio/r/mix.wav",
                "/readyz",
                "/healthz",
            )
        }
    for path in ("/api/air/export/list/r", "/api/air/export/zip/r", "/api/audio/r/mix.wav"):
        status, body = answers[path]
        assert status == 503, (path, body)
        assert json.loads(body)["detail"]["error"] == "out_of_descriptors"
    status, body = answers["/readyz"]
    assert status == 503 and b"descriptors: none left" in body
    assert answers["/healthz"][0] == 200
    # and all is well again once descriptors are free
    assert (await get("/api/air/export/zip/r"))[0] == 200
    assert (await get("/readyz"))[0] == 200
    writer.close()
    await writer.wait_closed()
