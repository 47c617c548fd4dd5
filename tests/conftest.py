"""Shared fixtures: an AIR output tree under tmp_path, and a client for it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from export_service.config import Settings, settings_from_mapping
from export_service.http.access import runner_options
from export_service.http.app import create_app
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


@pytest.fixture(scope="session", autouse=True)
def temp_folder_left_empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The run's temporary files, its child processes' included (TMPDIR), go
    to one fresh folder, which must be empty when the run ends: a service
    killed before it removed its sample tree fails the run instead of
    leaving ``export-service-sample-*`` behind. A folder of the run's own,
    not the system's: other runs on the machine write there meanwhile."""
    tmp_path_factory.getbasetemp()  # tmp_path stays in pytest's own folder
    folder = Path(tempfile.mkdtemp(prefix="export-service-tests-"))
    folder.chmod(0o755)  # tests that run a child as nobody build its tree below
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        if saved[0] is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        left = sorted(path.name for path in folder.iterdir())
        shutil.rmtree(folder)
    assert left == [], f"the run left these in the temporary folder: {left}"


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


@pytest.fixture
def failing_disk(tree: AirTree, tmp_path: Path) -> Iterator[FailingDisk]:
    """An ext4 file system on a loop device mounted as the render run ``r``,
    holding ``small.wav`` (4 KiB) and ``big.wav`` (8 MiB) of which only the
    first ``readable`` bytes are still on the (truncated) backing file. Needs
    root, losetup, mkfs.ext4 and filefrag; skipped, saying why, without."""
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root")
    for tool in ("losetup", "mkfs.ext4", "filefrag", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    backing = tmp_path / "disk.img"
    with backing.open("wb") as image:
        image.truncate(64 * 1024 * 1024)
    made = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    mount_point = tree.render / "r"
    mount_point.mkdir()
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, capture_output=True)
        subprocess.run(["mount", device, str(mount_point)], check=True, capture_output=True)
        mounted = True
        small = write(mount_point / "small.wav", os.urandom(4096), mtime=1_700_000_000)
        big = write(mount_point / "big.wav", os.urandom(8 * 1024 * 1024), mtime=1_700_000_000)
        os.sync()
        for path in (small, big):  # read from the disk from now on, not the page cache
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        extents = subprocess.run(
            ["filefrag", "-e", "-b1", str(big)], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        first = extents[3].replace(":", " ").replace("..", " ").split()  # ext logical.. physical..
        physical, length = int(first[3]), int(first[5])
        readable = min(length, 3 * 1024 * 1024)
        with backing.open("r+b") as image:
            image.truncate(physical + readable)
        subprocess.run(["losetup", "--set-capacity", device], check=True)
        yield FailingDisk(big, small, readable)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)
        subprocess.run(["losetup", "-d", device], check=True)


@pytest.fixture
def tree(tmp_path: Path) -> AirTree:
    base = tmp_path / "air"
    render, midi, param = (
        base / step / "output" for step in ("render", "midi_generation", "param_generation")
    )
    for root in (render, midi, param):
        root.mkdir(parents=True)
    canary = write(base / "secret.txt", CANARY)
    links = base / "projects" / "output" / "step_links.json"
    return AirTree(base, render, midi, param, links, canary)


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client: Any, tree: AirTree) -> ClientFactory:
    async def factory(**sections: dict[str, Any]) -> TestClient[Any, Any]:
        # The runner options go to start_server (TestServer() would drop them),
        # so tests run with the production access log and its metrics
        # (TestServer cancels a handler whose client hangs up, as serve does).
        server = TestServer(create_app(tree.settings(**sections)))
        await server.start_server(**runner_options(server.app))
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()


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
