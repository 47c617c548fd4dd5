import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.errors import NotFound, SourceChanged
from export_service.safe_files import FolderFiles, is_within, open_root_file
from tests.conftest import (
    CANARY,
    AirTree,
    ClientFactory,
    open_paths_under,
    raw_get,
    wait_until,
    write,
)

NAMES = ["mix.wav", "a b.wav", "#1.mp3", "100%.json", "naïve ü.mid", "stems/deep/x.wav", "?q=1"]


def _populate(tree: AirTree) -> dict[str, bytes]:
    contents = {}
    for index, name in enumerate(NAMES):
        content = os.urandom(1000 + index)
        write(tree.render / "r" / name, content)
        contents[f"r/{name}"] = content
    raw = tree.render / "r" / "raw\udcff.wav"  # not UTF-8 on disk
    raw.write_bytes(b"raw")
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    write(tree.param / "20261101_p" / "params.json", b"{}")
    tree.link({"r": {"param_run_id": "p"}})
    return contents


async def test_every_manifest_url_serves_its_file(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _populate(tree)
    manifest = await (await client.get("/api/air/export/list/r")).json()
    assert len(manifest["files"]) == len(NAMES) + 3
    roots = {"render": tree.render, "midi_generation": tree.midi, "param_generation": tree.param}
    for item in manifest["files"]:
        status, body = await raw_get(client, item["url"])
        assert status == 200, item
        if "\ufffd" in item["rel_path"]:
            assert body == b"raw"
        else:
            assert body == (roots[item["step"]] / item["rel_path"]).read_bytes(), item
        assert len(body) == item["bytes"]


async def test_range_etag_last_modified_and_head(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    content = os.urandom(5000)
    write(tree.render / "r" / "mix.wav", content, mtime=1_700_000_000)
    response = await client.get("/api/audio/r/mix.wav", headers={"Range": "bytes=0-99"})
    assert response.status == 206
    assert await response.read() == content[:100]
    assert response.headers["Content-Range"] == "bytes 0-99/5000"
    assert response.headers["Content-Type"] == "audio/wav"
    etag = response.headers["ETag"]
    assert response.headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"

    tail = await client.get("/api/audio/r/mix.wav", headers={"Range": "bytes=-10"})
    assert await tail.read() == content[-10:]
    cached = await client.get("/api/audio/r/mix.wav", headers={"If-None-Match": etag})
    assert cached.status == 304
    head = await client.head("/api/audio/r/mix.wav")
    assert head.status == 200 and head.headers["Content-Length"] == "5000"


@pytest.mark.parametrize(
    "path",
    [
        "/api/audio/r/../../secret.txt",
        "/api/audio/..%2f..%2fsecret.txt",
        "/api/audio/%2e%2e/%2e%2e/secret.txt",
        "/api/audio/r/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/api/audio/r/..%5c..%5csecret.txt",
        "/api/audio/%252e%252e/secret.txt",
        "/api/audio/r/leak.txt",
        "/api/audio/r/leak_dir/secret.txt",
        "/api/audio/escape/secret.txt",
        "/api/audio//etc/passwd",
        "/api/audio/r/mix.wav%00.txt",
        "/api/audio/r",
        "/api/audio/r/",
        "/api/audio/r/sub",
        "/api/audio/r/pipe",
        "/api/midi-generation/output/../render/output/r/mix.wav",
        "/api/param-generation/output/%2fetc%2fpasswd",
    ],
)
async def test_hostile_file_paths_are_json_404s(
    tree: AirTree, client: TestClient[Any, Any], path: str
) -> None:
    write(tree.render / "r" / "mix.wav", b"ok")
    (tree.render / "r" / "sub").mkdir()
    os.mkfifo(tree.render / "r" / "pipe")
    (tree.render / "r" / "leak.txt").symlink_to(tree.canary)
    (tree.render / "r" / "leak_dir").symlink_to(tree.base)
    (tree.render / "escape").symlink_to(tree.base)
    status, body = await raw_get(client, path)
    assert status == 404, (status, body)
    assert body.startswith(b'{"detail":{"error":')
    assert CANARY not in body


async def test_links_inside_the_root_are_served(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "other" / "shared.wav", b"shared")
    write(tree.render / "r" / "own.wav", b"own")
    (tree.render / "r" / "shared.wav").symlink_to(tree.render / "other" / "shared.wav")
    response = await client.get("/api/audio/r/shared.wav")
    assert await response.read() == b"shared"


async def test_configured_prefixes_serve_their_manifest_urls(
    tree: AirTree, make_client: ClientFactory
) -> None:
    write(tree.render / "r" / "a b.wav", b"ab")
    client = await make_client(urls={"render": "/files/render"})
    manifest = await (await client.get("/api/air/export/list/r")).json()
    assert manifest["files"][0]["url"] == "/files/render/r/a%20b.wav"
    assert await (await client.get(manifest["files"][0]["url"])).read() == b"ab"
    assert (await client.get("/api/audio/r/a%20b.wav")).status == 404


def test_is_within_is_strict() -> None:
    assert is_within("/data/root", "/data/root/a")
    assert not is_within("/data/root", "/data/root")
    assert not is_within("/data/root", "/data/rootless/a")
    assert is_within("/", "/etc")


def test_open_root_file_refuses_what_is_not_a_file_inside(tree: AirTree) -> None:
    write(tree.render / "r" / "a.wav", b"a")
    opened = open_root_file(str(tree.render), "r/a.wav")
    assert opened.file.read() == b"a"
    assert opened.info.st_size == 1
    opened.close()
    assert opened.real_path == str((tree.render / "r" / "a.wav").resolve())
    (tree.render / "r" / "out").symlink_to(tree.canary)
    for tail in ["r/out", "r", "r/missing.wav"]:
        with pytest.raises(NotFound):
            open_root_file(str(tree.render), tail)


def test_no_descriptor_is_left_open(tree: AirTree, tmp_path: Path) -> None:
    write(tree.render / "r" / "a.wav", b"a")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(NotFound):
            open_root_file(str(tree.render), "r/a.wav/x")
    assert len(os.listdir("/proc/self/fd")) == before


async def test_served_files_leave_no_descriptor_open(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "a.wav", os.urandom(300_000))
    etag = (await client.get("/api/audio/r/a.wav")).headers["ETag"]
    for headers in (
        {},
        {"Range": "bytes=5-9"},
        {"If-None-Match": etag},
        {"Range": "bytes=9999999-"},
    ):
        response = await client.get("/api/audio/r/a.wav", headers=headers)
        await response.read()
        await client.head("/api/audio/r/a.wav", headers=headers)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /api/audio/r/a.wav HTTP/1.1\r\nHost: t\r\n\r\n")
    await reader.read(1000)
    writer.close()  # gone mid-body
    await wait_until(lambda: not open_paths_under(tree.base))
    assert open_paths_under(tree.base) == []


def _read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_folder_files_open_by_folder_and_keep_only_a_few_folders_open(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    for index in range(5):
        write(root / "run" / f"d{index}" / "a.wav", bytes([index]))
    write(root / "top.wav", b"top")  # a link target may lie right in the root
    with FolderFiles(keep_open=2) as files:
        for index in range(5):
            fd, info = files.open(str(root / "run" / f"d{index}" / "a.wav"), str(root))
            assert info.st_size == 1
            assert _read_all(fd) == bytes([index])
            assert len(open_paths_under(root)) <= 2
        fd, _ = files.open(str(root / "top.wav"), str(root))
        assert _read_all(fd) == b"top"
    assert open_paths_under(root) == []


def test_folder_files_refuse_what_leads_outside_or_is_no_file(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    write(tmp_path / "outside" / "a.wav", CANARY)
    (root / "run").mkdir(parents=True)
    (root / "run" / "out").symlink_to(tmp_path / "outside")
    (root / "run" / "link.wav").symlink_to(tmp_path / "outside" / "a.wav")
    (root / "run" / "sub").mkdir()
    os.mkfifo(root / "run" / "fifo.wav")
    with FolderFiles() as files:
        with pytest.raises(SourceChanged, match="outside"):
            files.open(str(root / "run" / "out" / "a.wav"), str(root))
        with pytest.raises(OSError) as link:  # a link is not followed
            files.open(str(root / "run" / "link.wav"), str(root))
        assert link.value.errno == errno.ELOOP
        for not_a_file in ("sub", "fifo.wav"):
            with pytest.raises(SourceChanged, match="not a regular file"):
                files.open(str(root / "run" / not_a_file), str(root))
    assert open_paths_under(tmp_path) == []
