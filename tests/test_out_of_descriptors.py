"""Out of descriptors: the headroom (the soft limit minus what is open), and at
its limit the service answers a JSON 503 and /readyz says so, instead of a 200
with an empty manifest or ZIP, or a 404 for a file that is there."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.core.descriptors import descriptor_headroom, require_descriptors
from export_service.errors import OutOfDescriptors
from tests.helpers import AirTree, ClientFactory, content_length, degraded, write
from tests.zips import read_zip


@contextlib.contextmanager
def no_descriptor_left(spare: int = 0) -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE to its lowest free descriptor
    number (plus ``spare``), so the next open (after ``spare`` more) fails
    with EMFILE; restored on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


Get = Callable[[str], Awaitable[tuple[int, bytes]]]


@contextlib.asynccontextmanager
async def connection(client: TestClient[Any, Any]) -> AsyncIterator[Get]:
    """One kept-alive connection (opened while descriptors are free): GET a
    path on it, (status, body)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)

    async def get(path: str) -> tuple[int, bytes]:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        return int(head.split()[1]), await reader.readexactly(content_length(head))

    try:
        yield get
    finally:
        writer.close()
        await writer.wait_closed()


async def test_requests_get_a_json_503_and_readyz_says_why(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "mix.wav", b"x" * 1000)
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    async with connection(client) as get:
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
        status, body = answers["/readyz"]  # 200: the service goes on, refusing what it must
        assert status == 200 and "descriptors: none left" in degraded(json.loads(body))
        assert answers["/healthz"][0] == 200
        # and all is well again once descriptors are free
        assert (await get("/api/air/export/zip/r"))[0] == 200
        assert (await get("/readyz"))[0] == 200


async def test_a_zip_short_of_descriptors_is_a_503_not_an_empty_200(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    for index in range(20):
        write(tree.render / "r" / f"take{index}" / "mix.wav", os.urandom(5000))
    async with connection(client) as get:
        assert (await get("/api/air/export/zip/r"))[0] == 200
        with no_descriptor_left(spare=9):  # enough to plan the ZIP, not to stream it
            zip_status, zip_body = await get("/api/air/export/zip/r")
            ready_status, ready_body = await get("/readyz")
            manifest_status, _ = await get("/api/air/export/list/r")
        assert zip_status == 503, zip_body[:200]
        detail = json.loads(zip_body)["detail"]
        assert detail["error"] == "out_of_descriptors" and "needed" in detail["message"]
        assert ready_status == 200
        assert "fewer than limits.descriptor_reserve (32)" in degraded(json.loads(ready_body))
        assert manifest_status == 200  # what can still be served is
        assert (await get("/api/air/export/zip/r"))[0] == 200


async def test_readiness_wants_the_configured_reserve(
    tree: AirTree, make_client: ClientFactory
) -> None:
    free, _ = descriptor_headroom()
    client = await make_client(limits={"descriptor_reserve": free + 100})
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert "fewer than limits.descriptor_reserve" in degraded(await ready.json())
    client = await make_client(limits={"descriptor_reserve": 0})
    assert await (await client.get("/readyz")).json() == {"status": "ready"}


async def test_planning_holds_a_few_folders_open_not_one_per_folder(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """A run of 40 folders plans and streams with 12 descriptors to spare:
    the plan's readability check shares the download's few open folders
    (it once kept every folder open, and with too few descriptors left the
    files beyond them out of the ZIP)."""
    for index in range(40):
        write(tree.render / "r" / f"take{index:02d}" / "mix.wav", b"%d" % index)
    async with connection(client) as get:
        assert (await get("/api/air/export/zip/r"))[0] == 200  # warm: nothing left to open lazily
        with no_descriptor_left(spare=12):
            status, body = await get("/api/air/export/zip/r")
    assert status == 200
    assert read_zip(body) == {
        f"render/r/take{index:02d}/mix.wav": b"%d" % index for index in range(40)
    }


def test_the_headroom_counts_open_descriptors() -> None:
    free, limit = descriptor_headroom()
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        assert descriptor_headroom() == (free - 5, limit)
    finally:
        for fd in opened:
            os.close(fd)
    assert descriptor_headroom() == (free, limit)


def test_at_the_limit_there_is_no_headroom_and_nothing_is_required() -> None:
    with no_descriptor_left():
        assert descriptor_headroom()[0] == 0
        with pytest.raises(OutOfDescriptors) as error:
            require_descriptors(1)
    assert error.value.status == 503 and "0 free" in error.value.message
    require_descriptors(1)
