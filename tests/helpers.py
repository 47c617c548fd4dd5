"""What the tests share besides fixtures (those are in conftest.py): an AIR
output tree and the files in it, raw HTTP exchanges with a test client, waits
and the checks many tests make."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.config import Settings, settings_from_mapping
from export_service.obs.logs import JsonFormatter

CANARY = b"CANARY-outside-the-roots"


@dataclass
class AirTree:
    base: Path
    render: Path
    midi: Path
    param: Path
    links: Path
    canary: Path  # beside the roots: must never be served

    def settings(self, **sections: dict[str, Any]) -> Settings:
        data: dict[str, Any] = {
            "roots": {
                "render": str(self.render),
                "midi_generation": str(self.midi),
                "param_generation": str(self.param),
            },
            "links": {"file": str(self.links)},
        }
        data.update(sections)
        return settings_from_mapping(data)

    def link(self, records: dict[str, Any]) -> None:
        self.links.parent.mkdir(parents=True, exist_ok=True)
        self.links.write_text(json.dumps(records))


def write(path: Path, content: bytes = b"", mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def every_case(tree: AirTree) -> None:
    """A project with each case of the manifest's lookup: nested, empty,
    non-ASCII and backslashed render files; two MIDI runs of run_1 (the newer
    one is listed) beside look-alikes; two param runs; run_2 with no link; a
    link with a hostile value."""
    run = tree.render / "run_1"
    write(run / "mix.wav", b"RIFF")
    write(run / "empty.txt")
    write(run / "stems" / "deep" / "kick.wav", b"kkk")
    write(run / "a\\b.wav", b"x")
    write(run / "a" / "b.wav", b"yy")
    write(run / "naïve #1 100%.wav", b"nnnnn")
    write(tree.midi / "20261101_100000_run_1" / "old.mid", b"o")
    write(tree.midi / "20261102_090000_run_1" / "track.mid", b"MThd")
    write(tree.midi / "run_10" / "x.mid", b"x")
    write(tree.midi / "20261103_run_1x" / "y.mid", b"y")
    write(tree.param / "20261101_101200_prm_a" / "params.json", b"{}")
    write(tree.param / "20261101_101300_prm_b" / "params.json", b'{"b":1}')
    write(tree.render / "run_2" / "mix.wav", b"2")
    tree.link(
        {
            "run_1": {"param_run_id": "prm_a", "updated_at": 1.5, "note": "kept"},
            "run_bad": {"param_run_id": "../../etc", "updated_at": 1.0},
        }
    )


async def error_detail(client: TestClient[Any, Any], method: str, path: str, status: int) -> Any:
    """The ``detail`` of an error answer, checked to be the service's one
    JSON error shape with this status."""
    response = await client.request(method, path)
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"detail"}
    assert set(body["detail"]) == {"error", "message"}
    assert body["detail"]["message"]
    return body["detail"]


def degraded(body: Any) -> str:
    """The problems of a degraded /readyz body (a 200: the service goes on
    without what they name), joined; fails on any other body."""
    assert body["status"] == "degraded", body
    problems: list[str] = body["problems"]
    return "; ".join(problems)


def content_length(head: bytes) -> int:
    """The Content-Length of a raw response head."""
    return next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )


async def raw_exchange(client: TestClient[Any, Any], request: bytes) -> tuple[bytes, bytes]:
    """Send one raw HTTP/1.1 request (no client-side normalization of the path);
    (head, body) as received until the server closes."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(-1), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


async def raw_get(client: TestClient[Any, Any], path: str) -> tuple[int, bytes]:
    """GET exactly this path; (status, body)."""
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    head, body = await raw_exchange(client, request)
    return int(head.split()[1]), body


async def read_slowly(
    client: TestClient[Any, Any], request: bytes, piece: int = 32 * 1024, pause: float = 0.015
) -> tuple[bytes, bytes]:
    """(head, body) of one response read ``piece`` bytes at a time with a
    ``pause`` between reads: a slow but steady client, whose small receive
    window makes the service's kernel queue fill up as over a real network
    (the service's own socket keeps the kernel's default send buffer). The
    body may be short when the service cut the transfer."""
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.setblocking(False)
        await loop.sock_connect(sock, (client.server.host, client.server.port))
        await loop.sock_sendall(sock, request)
        received = bytearray()
        expected = None
        while expected is None or len(received) < expected:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, piece), 30)
            if not chunk:
                break
            received += chunk
            if expected is None and b"\r\n\r\n" in received:
                head = bytes(received).partition(b"\r\n\r\n")[0]
                expected = len(head) + 4 + content_length(head)
            await asyncio.sleep(pause)
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return head, body


async def wait_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """Poll a state of the process (not an event) until it holds; fail the
    test, naming the condition, when it still does not after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"still not true after {seconds} s: {_source(condition)}")
        await asyncio.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture, prefix: str) -> list[tuple[str, str, str]]:
    """(logger, level, message) as the JSON log writes them, of each captured
    line whose message starts with ``prefix``, whichever logger wrote it."""
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    return [
        (line["logger"], line["level"], line["message"])
        for line in lines
        if line["message"].startswith(prefix)
    ]


def poll_until(condition: Callable[[], bool], seconds: float = 10) -> None:
    """:func:`wait_until` for a test that runs no event loop."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"still not true after {seconds} s: {_source(condition)}")
        time.sleep(0.02)


def _source(condition: Callable[[], bool]) -> str:
    """The line that wrote ``condition`` (a lambda's own text), else its name."""
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


def open_paths_under(folder: Path) -> list[str]:
    """Files below ``folder`` that this process holds open (from /proc/self/fd)."""
    prefix = str(folder.resolve())
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(prefix):
                found.append(target)
    return found


DEEP = "d" * 8  # 1,100 levels of it make a path of 9,900 bytes


def make_deep(folder: Path, levels: int, name: str = "") -> Path:
    """``levels`` nested folders ``DEEP/DEEP/...`` (or ``name/name/...``) below
    ``folder``, made through descriptors (their path is far beyond PATH_MAX);
    a file ``deep.wav`` at the bottom. Returns ``folder``."""
    name = name or DEEP
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open("deep.wav", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"deep")
        os.close(file_fd)
    finally:
        os.close(fd)
    return folder


def rewrite_in_place(path: Path, content: bytes) -> None:
    """New content, same inode, size and mtime (as ``cp -p``, ``rsync -t`` or
    ``touch -d`` leave it): only the ctime, which no one can set, tells."""
    before = path.stat()
    with path.open("r+b") as handle:
        handle.write(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    assert after.st_ctime_ns != before.st_ctime_ns


def remove_deep(folder: Path) -> None:
    """Remove what :func:`make_deep` made (shutil.rmtree would need the long paths)."""
    subprocess.run(["rm", "-rf", "--", str(folder)], check=True)


def link_beyond_path_max(link: Path, deep: Path) -> None:
    """A link at ``link`` to a folder below ``deep`` (made here, 1,100
    levels) whose real path is about 7,200 bytes long. A link holds at most
    PATH_MAX bytes: two links, each 400 levels down, make the long target."""
    make_deep(deep, 1100)
    steps = "/".join([DEEP] * 400)
    fd = os.open(deep / steps, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.symlink(steps, "jump", dir_fd=fd)
    finally:
        os.close(fd)
    link.symlink_to(f"{os.path.relpath(deep, link.parent)}/{steps}/jump")


def split_responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in what one connection received, each (status,
    headers, body) with its body cut at its Content-Length: a body short of
    it is the last one. Anything after the last body is one more response."""
    responses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines)
        length = int(headers.get("Content-Length", len(data)))
        responses.append((int(status_line.split()[1]), headers, data[:length]))
        data = data[length:]
    return responses


async def pipelined(client: TestClient[Any, Any], *requests: bytes) -> bytes:
    """Send ``requests`` at once on one connection; all that comes back until
    the service closes it (10 s at most: a connection left open fails)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"".join(requests))
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
        await writer.wait_closed()


@dataclass
class FailingDisk:
    """A file system on a loop device whose backing file was cut short:
    reading ``big`` past ``readable`` bytes fails with EIO, as a dying disk
    does. ``small`` reads fine."""

    big: Path
    small: Path
    readable: int


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def first_answer(client: TestClient[Any, Any], head: bytes) -> bytes:
    """The first status line the service sends for a request's head alone
    (its body withheld, as a client that expects 100 Continue does)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
