"""The file URLs: file-system names as URL path segments and back, and over
HTTP every manifest URL served (links inside the root too, configured
prefixes), hostile paths 404, RFC 9110 ranges and preconditions, JSON errors,
and no descriptor left by a served or abandoned request."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import shutil
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.core.urls import content_disposition, url_path_segments, url_segment
from export_service.errors import NotFound
from export_service.http.file_responses import SENDFILE_PIECE, content_type
from tests.helpers import (
    CANARY,
    AirTree,
    ClientFactory,
    FailingDisk,
    logged,
    open_paths_under,
    pipelined,
    raw_exchange,
    raw_get,
    read_slowly,
    rewrite_in_place,
    split_responses,
    wait_until,
    write,
)

CONTENT = bytes(range(256)) * 40  # 10,240 bytes
MTIME = 1_700_000_000
LAST_MODIFIED = "Tue, 14 Nov 2023 22:13:20 GMT"
URL = "/api/audio/r/mix.wav"


@pytest.fixture
def mix(tree: AirTree) -> AirTree:
    write(tree.render / "r" / "mix.wav", CONTENT, mtime=MTIME)
    return tree


async def _get(client: TestClient[Any, Any], **headers: str) -> tuple[int, Any, bytes]:
    response = await client.get(URL, headers=headers)
    return response.status, response.headers, await response.read()


NAMES = ["mix.wav", "a b.wav", "#1.mp3", "100%.json", "naïve ü.mid", "stems/deep/x.wav", "?q=1"]


def _populate(tree: AirTree) -> None:
    for index, name in enumerate(NAMES):
        write(tree.render / "r" / name, os.urandom(1000 + index))
    raw = tree.render / "r" / "raw\udcff.wav"  # not UTF-8 on disk
    raw.write_bytes(b"raw")
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    write(tree.param / "20261101_p" / "params.json", b"{}")
    tree.link({"r": {"param_run_id": "p"}})


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


async def test_curl_saves_a_file_url_under_the_files_name(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    """``curl -OJ`` on the manifest's URL saved ``caf%C3%A9%20%E2%80%93%20lead.wav``
    (no Content-Disposition, so the URL's last segment). ``inline``: an
    ``<audio>`` element still plays it in place."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    name = "caf\u00e9 \u2013 lead.wav"
    write(tree.render / "r" / name, CONTENT)
    manifest = await (await client.get("/api/air/export/list/r")).json()
    (url,) = [item["url"] for item in manifest["files"]]
    response = await client.head(url)
    assert response.headers["Content-Disposition"] == (
        f"inline; filename=\"{name}\"; filename*=UTF-8''caf%C3%A9%20%E2%80%93%20lead.wav"
    )
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    curl = await asyncio.create_subprocess_exec(
        "curl", "-fsS", "-OJ", str(client.make_url(url)), cwd=downloads
    )
    assert await curl.wait() == 0
    assert [path.name for path in downloads.iterdir()] == [name]
    assert (downloads / name).read_bytes() == CONTENT


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
    mix: AirTree, client: TestClient[Any, Any], path: str
) -> None:
    (mix.render / "r" / "sub").mkdir()
    os.mkfifo(mix.render / "r" / "pipe")
    (mix.render / "r" / "leak.txt").symlink_to(mix.canary)
    (mix.render / "r" / "leak_dir").symlink_to(mix.base)
    (mix.render / "escape").symlink_to(mix.base)
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


async def test_if_range_serves_the_range_only_for_the_current_version(
    mix: AirTree, client: TestClient[Any, Any]
) -> None:
    status, headers, _ = await _get(client)
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('"')
    status, headers, body = await _get(client, Range="bytes=10-19", **{"If-Range": etag})
    assert (status, body) == (206, CONTENT[10:20])
    assert headers["Content-Range"] == f"bytes 10-19/{len(CONTENT)}"
    for if_range in (
        "W/" + etag,  # weak tags never match for ranges
        '"another"',
        LAST_MODIFIED,  # a date never validates (the next test)
        "Tue, 14 Nov 2023 22:13:19 GMT",  # an older date
        "Tue, 14 Nov 2023 22:13:21 GMT",  # a later one is no exact match either
        "not a date",
    ):
        status, headers, body = await _get(client, Range="bytes=10-19", **{"If-Range": if_range})
        assert (status, body) == (200, CONTENT), if_range
        assert "Content-Range" not in headers


async def test_a_resume_after_the_file_was_rewritten_restarts_instead_of_splicing(
    mix: AirTree, client: TestClient[Any, Any]
) -> None:
    _, headers, _ = await _get(client)
    old_etag = headers["ETag"]
    new_content = os.urandom(len(CONTENT))
    write(mix.render / "r" / "mix.wav", new_content, mtime=MTIME + 60)
    status, headers, body = await _get(client, Range="bytes=5000-", **{"If-Range": old_etag})
    assert status == 200 and body == new_content
    assert headers["ETag"] != old_etag


async def test_a_date_never_validates_even_when_the_mtime_is_restored(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """Issue 22 (the tester's case): a file rewritten with its mtime set back
    into the same second (``cp -p``, ``rsync -t``, ``tar x``, ``touch -d``)
    keeps its HTTP date, so a resume by date spliced two versions (206) and
    ``If-Modified-Since`` answered 304. The date is sent, never trusted."""
    path = write(tree.render / "r" / "mix.wav", b"A" * 240_000)
    second = 1_767_225_600 * 1_000_000_000  # 2026-01-01 00:00:00 UTC
    os.utime(path, ns=(second + 100_000_000, second + 100_000_000))
    status, headers, body = await _get(client, Range="bytes=0-119999")
    assert (status, body) == (206, b"A" * 120_000)
    date = headers["Last-Modified"]
    assert date == "Thu, 01 Jan 2026 00:00:00 GMT"
    path.write_bytes(b"B" * 240_000)
    os.utime(path, ns=(second + 900_000_000, second + 900_000_000))
    for conditions in (
        {"Range": "bytes=120000-", "If-Range": date},
        {"If-Modified-Since": date},
        {"If-Modified-Since": "Fri, 01 Jan 2027 00:00:00 GMT"},
        {"If-None-Match": '"old"', "If-Modified-Since": date},
    ):
        status, got_headers, body = await _get(client, **conditions)
        assert (status, body) == (200, b"B" * 240_000), conditions
        assert got_headers["Last-Modified"] == date
    status, _, body = await _get(client, **{"If-Unmodified-Since": date})
    assert status == 412 and b"If-Match" in body


async def test_a_rewrite_in_place_that_restores_the_exact_mtime_changes_the_etag(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """Issue 22: the ETag was mtime and size, so a file rewritten in place at
    the same size with its exact mtime (ns) restored kept it, and a resume
    with ``If-Range: <ETag>`` spliced two versions. The ctime, which no one
    can set, is in the tag."""
    path = write(tree.render / "r" / "mix.wav", b"A" * 240_000, mtime=MTIME)
    status, headers, body = await _get(client, Range="bytes=0-119999")
    assert (status, body) == (206, b"A" * 120_000)
    old_etag = headers["ETag"]
    rewrite_in_place(path, b"B" * 240_000)
    status, headers, body = await _get(client, Range="bytes=120000-", **{"If-Range": old_etag})
    assert (status, body) == (200, b"B" * 240_000)
    assert headers["ETag"] != old_etag
    status, _, body = await _get(client, **{"If-None-Match": old_etag})
    assert (status, body) == (200, b"B" * 240_000)
    assert (await _get(client, **{"If-Match": old_etag}))[0] == 412
    new_etag = headers["ETag"]
    assert (await _get(client, Range="bytes=120000-", **{"If-Range": new_etag}))[0] == 206


# One form of each answer: which form asks for what is tests/test_ranges.py's.
@pytest.mark.parametrize(
    ("range_header", "status", "first", "last"),
    [
        ("bytes=0-9", 206, 0, 9),
        ("bytes=-10", 206, 10230, 10239),
        ("bytes=10000-99999999", 206, 10000, 10239),
        ("bytes=10240-10240", 416, None, None),
        ("bytes=0-1,5-6", 200, 0, 10239),
    ],
)
async def test_range_forms(
    mix: AirTree,
    client: TestClient[Any, Any],
    range_header: str,
    status: int,
    first: int | None,
    last: int | None,
) -> None:
    got, headers, body = await _get(client, Range=range_header)
    assert got == status
    if status == 416:
        assert headers["Content-Range"] == f"bytes */{len(CONTENT)}"
        assert json.loads(body)["detail"]["error"] == "range_not_satisfiable"
        assert headers["Content-Length"] == str(len(body))
    else:
        assert first is not None and last is not None
        assert body == CONTENT[first : last + 1]
        assert headers["Content-Length"] == str(len(body))
        if status == 206:
            assert headers["Content-Range"] == f"bytes {first}-{last}/{len(CONTENT)}"


async def test_preconditions(mix: AirTree, client: TestClient[Any, Any]) -> None:
    _, headers, _ = await _get(client)
    etag = headers["ETag"]
    for condition in (
        {"If-None-Match": etag},
        {"If-None-Match": f'"x", W/{etag}'},  # weak comparison
        {"If-None-Match": "*"},
    ):
        status, headers, body = await _get(client, **condition)
        assert (status, body) == (304, b""), condition
        assert headers["ETag"] == etag
    for condition in (
        {"If-Match": '"another"'},
        {"If-Match": f"W/{etag}"},  # strong comparison
        {"If-Match": "garbage"},
        {"If-Unmodified-Since": "Tue, 14 Nov 2023 22:13:19 GMT"},
        {"If-Unmodified-Since": LAST_MODIFIED},  # a date cannot tell (see above)
    ):
        status, headers, body = await _get(client, **condition)
        assert status == 412, condition
        assert json.loads(body)["detail"]["error"] == "precondition_failed"
        assert headers["Content-Length"] == str(len(body))
    for condition in (
        {"If-Match": etag},
        {"If-Match": "*"},
        {"If-None-Match": '"another"'},
        {"If-Modified-Since": "Tue, 14 Nov 2023 22:13:19 GMT"},
        {"If-Modified-Since": "yesterday"},
        {"If-Modified-Since": LAST_MODIFIED},  # a date never validates
        {"If-Modified-Since": "Wed, 15 Nov 2023 00:00:00 GMT"},
        # If-None-Match wins over If-Modified-Since (RFC 9110 13.2.2)
        {"If-None-Match": '"another"', "If-Modified-Since": LAST_MODIFIED},
    ):
        status, _, body = await _get(client, **condition)
        assert (status, body) == (200, CONTENT), condition


async def test_head_sends_the_headers_of_the_get(
    mix: AirTree, client: TestClient[Any, Any]
) -> None:
    head = await client.head(URL, headers={"Range": "bytes=0-9"})
    assert head.status == 206 and head.headers["Content-Length"] == "10"
    assert head.headers["Content-Range"] == f"bytes 0-9/{len(CONTENT)}"
    assert await head.read() == b""
    _, get_headers, _ = await _get(client)
    head = await client.head(URL)
    assert head.status == 200
    for name, value in (
        ("Content-Length", str(len(CONTENT))),
        ("Content-Type", "audio/wav"),
        ("Last-Modified", LAST_MODIFIED),
        ("Accept-Ranges", "bytes"),
        ("ETag", get_headers["ETag"]),
    ):
        assert head.headers[name] == get_headers[name] == value, name


async def test_an_empty_file(tree: AirTree, client: TestClient[Any, Any]) -> None:
    write(tree.render / "r" / "empty.wav", b"")
    response = await client.get("/api/audio/r/empty.wav")
    assert response.status == 200 and await response.read() == b""
    assert (await client.get("/api/audio/r/empty.wav", headers={"Range": "bytes=0-"})).status == 416


async def test_names_with_newlines_and_controls_are_served_at_their_manifest_urls(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    names = ["two\nlines.wav", "cr\rname.wav", "tab\there.wav", "esc\x1b.wav", "del\x7f.wav"]
    for name in names:
        write(tree.render / "r" / "deep\nfolder" / name, name.encode())
    manifest = await (await client.get("/api/air/export/list/r")).json()
    assert len(manifest["files"]) == len(names)
    for item in manifest["files"]:
        assert "%0A" in item["url"]
        head, body = await raw_exchange(
            client, f"GET {item['url']} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        assert head.startswith(b"HTTP/1.1 200"), (item, head)
        assert body == item["rel_path"].split("/")[-1].encode()


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


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _abandon(client: TestClient[Any, Any], request: bytes) -> None:
    """Send a request and reset the connection at once (SO_LINGER 0), as an
    audio element does when the listener seeks."""
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.sendall(request)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await asyncio.sleep(0)


@pytest.mark.parametrize(
    "request_line",
    [
        f"GET {URL} HTTP/1.1\r\nHost: t\r\n\r\n",
        f"GET {URL} HTTP/1.1\r\nHost: t\r\nRange: bytes=100-200\r\n\r\n",
        "GET /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-\r\n\r\n",
    ],
)
@pytest.mark.slow
async def test_a_thousand_abandoned_requests_leave_no_descriptor(
    mix: AirTree, make_client: ClientFactory, request_line: str
) -> None:
    write(mix.render / "r" / "big.wav", os.urandom(2_000_000))
    client = await make_client(limits={"io_threads": 2})
    await (await client.get(URL)).read()  # warm: pool threads exist
    await (await client.get("/api/air/export/zip/r")).read()
    fds_before = _fd_count()
    for _ in range(1000):
        await _abandon(client, request_line.encode())
    await wait_until(lambda: _fd_count() <= fds_before and not open_paths_under(mix.base))
    assert open_paths_under(mix.base) == []
    assert _fd_count() <= fds_before
    assert (await client.get("/healthz")).status == 200


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_cut_and_its_file_closed(
    tree: AirTree, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(64 * 1024 * 1024))
    client = await make_client(limits={"send_timeout_seconds": 1.0})
    caplog.set_level("INFO", logger="export_service.access")
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /api/audio/r/big.wav HTTP/1.1\r\nHost: t\r\nX-Request-ID: stall\r\n\r\n")
    await reader.readexactly(100_000)  # then read nothing more
    await wait_until(lambda: not open_paths_under(tree.base), seconds=15)
    assert open_paths_under(tree.base) == []
    access = "export_service.access"
    await wait_until(lambda: any(r.name == access for r in caplog.records))
    (line,) = [getattr(r, "fields", {}) for r in caplog.records if r.name == access]
    assert line["ended"] == "cut_short" and line["status"] == 200
    assert 100_000 <= line["bytes"] < 64 * 1024 * 1024
    writer.close()


@pytest.mark.slow
async def test_a_slow_but_steady_reader_is_not_cut(
    tree: AirTree, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """As for the ZIP: a 1 MiB sendfile piece takes this client longer than
    the timeout, and the kernel holds megabytes ahead of it, yet it keeps
    taking bytes, so it gets the whole file."""
    content = os.urandom(10 * 1024 * 1024)
    write(tree.render / "r" / "big.wav", content)
    client = await make_client(limits={"send_timeout_seconds": 0.3})
    caplog.set_level("INFO", logger="export_service.access")
    request = b"GET /api/audio/r/big.wav HTTP/1.1\r\nHost: t\r\nX-Request-ID: slow\r\n\r\n"
    head, body = await read_slowly(client, request)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == content
    access = "export_service.access"
    await wait_until(lambda: any(r.name == access for r in caplog.records))
    (line,) = [getattr(r, "fields", {}) for r in caplog.records if r.name == access]
    assert line["ended"] == "complete" and line["bytes"] == len(content)


# How a send ended, told under the logger these lines had when file_urls.py
# wrote them: log queries select on it, so moving the code must not change it.
@pytest.mark.parametrize(
    ("ending", "level", "message"),
    [
        (TimeoutError(), "INFO", f"file {URL} cut: the client took nothing for 7.0 s"),
        (ConnectionResetError("gone"), "INFO", f"file {URL}: the client went away"),
        (None, "ERROR", f"file {URL} cut short: it shrank while being sent"),  # 0 bytes sent
    ],
)
async def test_each_way_a_send_is_cut_is_logged_under_the_file_urls_logger(
    mix: AirTree,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ending: Exception | None,
    level: str,
    message: str,
) -> None:
    async def sendfile(*_: Any) -> int:
        if ending is not None:
            raise ending
        return 0

    monkeypatch.setattr(asyncio.get_running_loop(), "sendfile", sendfile)
    caplog.set_level(logging.INFO)
    client = await make_client(limits={"send_timeout_seconds": 7.0})
    response = await client.get(URL)
    assert response.status == 200
    await wait_until(lambda: bool(logged(caplog, "file ")))
    response.close()
    assert logged(caplog, "file ") == [("export_service.file_urls", level, message)]


def test_content_types() -> None:
    assert content_type("a.WAV") == "audio/wav"
    assert content_type("a.mp3") == "audio/mpeg"
    assert content_type("a.mid") == "audio/midi"
    assert content_type("a.json") == "application/json"
    assert content_type("a.unknownext") == "application/octet-stream"


def _access_line(caplog: pytest.LogCaptureFixture, path: str) -> str:
    (line,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == "export_service.access" and r.getMessage().startswith(f"GET {path} ")
    ]
    return line


async def test_a_disk_read_error_after_the_headers_aborts_the_connection(
    failing_disk: FailingDisk,
    client: TestClient[Any, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EIO from a real (loop) device in the middle of a file: the client gets
    the 200's headers, fewer bytes than its Content-Length, and the end of
    the connection at once; never an in-band second response, and the
    request pipelined behind it gets no answer written into that body."""
    caplog.set_level(logging.INFO)
    path = "/api/audio/r/big.wav"
    data = await pipelined(
        client,
        f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    ((status, headers, body),) = split_responses(data)
    assert status == 200 and int(headers["Content-Length"]) == 8 * 1024 * 1024
    assert len(body) < failing_disk.readable + SENDFILE_PIECE
    assert b"HTTP/1.1" not in body
    assert _access_line(caplog, path) == f"GET {path} 500 {len(body)} error"
    assert logged(caplog, f"file {path} cut: it failed after the headers went out")
    # the small file on the same disk is served as before, and nothing stays open
    assert (await client.get("/api/audio/r/small.wav")).status == 200
    await wait_until(lambda: not open_paths_under(failing_disk.big.parent))


async def test_any_failure_after_the_headers_aborts_the_connection(
    mix: AirTree,
    client: TestClient[Any, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CI-safe form of the EIO test: the send fails with EIO after its
    first piece went out, wherever the disk is."""
    loop = asyncio.get_running_loop()
    real_sendfile = loop.sendfile

    async def fails_after_one_piece(transport: Any, file: Any, offset: int, count: int) -> int:
        if offset > 0:
            raise OSError(errno.EIO, "Input/output error")
        return await real_sendfile(transport, file, offset, 1000)

    monkeypatch.setattr(loop, "sendfile", fails_after_one_piece)
    caplog.set_level(logging.INFO)
    data = await pipelined(
        client,
        f"GET {URL} HTTP/1.1\r\nHost: t\r\n\r\n".encode(),
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    ((status, headers, body),) = split_responses(data)
    assert (status, int(headers["Content-Length"]), body) == (200, len(CONTENT), CONTENT[:1000])
    assert _access_line(caplog, URL) == f"GET {URL} 500 1000 error"
    assert logged(caplog, f"file {URL} cut") == [
        (
            "export_service.file_urls",
            "ERROR",
            f"file {URL} cut: it failed after the headers went out ([Errno 5] Input/output "
            "error); the connection is aborted",
        )
    ]


def test_url_segments_are_encoded_from_their_bytes() -> None:
    assert url_segment("mix-1_a.b~c.wav") == "mix-1_a.b~c.wav"
    assert url_segment("a b/#?%.wav") == "a%20b%2F%23%3F%25.wav"
    assert url_segment("ü") == "%C3%BC"
    assert url_segment("raw\udcff.wav") == "raw%FF.wav"  # not UTF-8 on disk


def test_url_segments_are_decoded_once_from_bytes() -> None:
    assert url_path_segments("r/a%20b/%C3%BC.wav") == ["r", "a b", "ü.wav"]
    assert url_path_segments("r/%FF.wav") == ["r", "\udcff.wav"]
    assert url_path_segments("r/%252e%252e") == ["r", "%2e%2e"]
    for bad in ["", "r/", "r//x", "r/.", "r/..", "r/%2e%2e", "r/a%2fb", "r/a%00"]:
        with pytest.raises(NotFound):
            url_path_segments(bad)


def test_an_encoded_name_decodes_to_itself() -> None:
    names = ["a b", "ü.wav", "raw\udcff.wav", "%2e%2e", "new\nline"]
    assert url_path_segments("/".join(map(url_segment, names))) == names


def test_content_disposition_names_the_file_exactly_and_safely() -> None:
    """RFC 6266: ``filename*`` holds the exact name whenever ``filename``
    cannot; quotes, backslashes and control characters never reach the
    quoted string (a newline would end the header)."""
    assert (
        content_disposition("attachment", "export_r.zip") == 'attachment; filename="export_r.zip"'
    )
    assert content_disposition("attachment", "caf\u00e9 \u2013 lead.wav") == (
        'attachment; filename="caf_ _ lead.wav"; '
        "filename*=UTF-8''caf%C3%A9%20%E2%80%93%20lead.wav"
    )
    # File URLs keep the name's letters in filename too: curl -OJ and wget
    # read nothing else.
    assert content_disposition("inline", "caf\u00e9 \u2013 lead.wav", ascii_only=False) == (
        'inline; filename="caf\u00e9 \u2013 lead.wav"; '
        "filename*=UTF-8''caf%C3%A9%20%E2%80%93%20lead.wav"
    )
    for ascii_only in (True, False):
        assert content_disposition("inline", 'a"b\\c\n\u202e.wav', ascii_only=ascii_only) == (
            "inline; filename=\"a_b_c__.wav\"; filename*=UTF-8''a%22b%5Cc%0A%E2%80%AE.wav"
        )
        # Not UTF-8 on disk: no filename* can say it.
        assert content_disposition("inline", "raw\udcff.wav", ascii_only=ascii_only) == (
            'inline; filename="raw_.wav"'
        )
