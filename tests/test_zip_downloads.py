"""zip_response: how a planned ZIP is answered (headers, body, HEAD, how a
download ends). What the ZIP route refuses before it sends: test_export_api.py."""

import asyncio
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

import export_service.zip.records as records_module
from export_service.core.selection import Selection
from export_service.errors import SourceChanged
from export_service.http.keys import METRICS
from export_service.http.zip_response import ZipResponse, content_disposition
from tests.helpers import (
    DEEP,
    AirTree,
    ClientFactory,
    FailingDisk,
    link_beyond_path_max,
    logged,
    make_deep,
    open_paths_under,
    pipelined,
    raw_exchange,
    remove_deep,
    split_responses,
    wait_until,
    write,
)
from tests.zips import read_zip, unzip_test

SMALL_BATCHES = {"limits": {"read_chunk_bytes": 65536, "batch_bytes": 65536}}


def _cut_short(client: TestClient[Any, Any], reason: str) -> float:
    assert client.app is not None
    registry = client.app[METRICS].registry
    value = registry.get_sample_value("export_zip_downloads_cut_short_total", {"reason": reason})
    return value or 0.0


async def test_zip_download_headers_and_body(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    write(tree.render / "r" / "mix.wav", os.urandom(300_000), mtime=1_700_000_000)
    write(tree.render / "r" / "stems" / "bass.wav", b"bass", mtime=1_600_000_000)
    write(tree.param / "20261101_p1" / "params.json", b"{}", mtime=1_500_000_000)
    tree.link({"r": {"param_run_id": "p1", "updated_at": 1.0}})
    response = await client.get("/api/air/export/zip/r")
    body = await response.read()
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert int(response.headers["Content-Length"]) == len(body)
    assert response.headers["Content-Disposition"] == 'attachment; filename="export_r.zip"'
    assert response.headers["Last-Modified"] == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert list(read_zip(body)) == [
        "param_generation/20261101_p1/params.json",
        "render/r/mix.wav",
        "render/r/stems/bass.wav",
    ]
    assert read_zip(body)["render/r/mix.wav"] == (tree.render / "r" / "mix.wav").read_bytes()
    unzip_test(body, tmp_path)


async def test_zip_of_a_run_with_nothing_is_an_empty_valid_zip(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/api/air/export/zip/nothing_here")
    body = await response.read()
    assert response.status == 200
    assert read_zip(body) == {}
    assert "Last-Modified" not in response.headers


async def test_head_sends_the_headers_of_get_and_no_body(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "mix.wav", b"m" * 100_000)
    get = await client.get("/api/air/export/zip/r")
    await get.read()
    head, body = await raw_exchange(
        client, b"HEAD /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b""
    assert f"Content-Length: {get.headers['Content-Length']}".encode() in head
    assert b"Content-Type: application/zip" in head


def test_content_disposition_for_non_ascii_ids() -> None:
    assert content_disposition("r1") == 'attachment; filename="export_r1.zip"'
    assert content_disposition("nuta_é") == (
        "attachment; filename=\"export_nuta__.zip\"; filename*=UTF-8''export_nuta_%C3%A9.zip"
    )
    assert content_disposition('a"b') == (
        "attachment; filename=\"export_a_b.zip\"; filename*=UTF-8''export_a%22b.zip"
    )


def test_content_disposition_of_a_selection_keeps_the_rfc_6266_fallback() -> None:
    stems = Selection.parse(["render"], ["stems"])
    assert content_disposition("r1", stems) == 'attachment; filename="export_r1_render_stems.zip"'
    accented = Selection.parse([], ["café/a b"])
    assert content_disposition("nuta_é", accented) == (
        'attachment; filename="export_nuta___caf_-a b.zip"; '
        "filename*=UTF-8''export_nuta_%C3%A9_caf%C3%A9-a%20b.zip"
    )
    assert content_disposition("r1", None) == content_disposition("r1")


async def test_first_bytes_leave_before_the_last_file_is_read_and_a_late_change_cuts_the_download(
    tree: AirTree, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="export_service.routes")
    write(tree.render / "r" / "a.wav", os.urandom(256 * 1024))
    last = write(tree.render / "r" / "z.wav", os.urandom(32 * 1024 * 1024))
    client = await make_client(**SMALL_BATCHES)
    response = await client.get("/api/air/export/zip/r")
    expected = int(response.headers["Content-Length"])
    first = await response.content.readexactly(1024)
    assert first.startswith(b"PK\x03\x04")
    os.truncate(last, 1024)  # the last file has not been read yet: its change must show
    received = len(first)
    with pytest.raises(aiohttp.ClientPayloadError):
        while chunk := await response.content.read(1 << 20):
            received += len(chunk)
    assert received < expected
    assert _cut_short(client, "source_changed") == 1
    (record,) = [r for r in caplog.records if r.name == "export_service.routes"]
    assert record.levelname == "ERROR"
    assert record.getMessage() == "ZIP of r cut short: r/z.wav: was replaced or modified"


# How a download ended, told under the logger these lines had when routes.py
# wrote them: log queries select on it, so moving the code must not change it.
@pytest.mark.parametrize(
    ("ending", "level", "message"),
    [
        (TimeoutError(), "INFO", "ZIP of r cut: no byte left for the client in 7.0 s"),
        (
            SourceChanged("r/a.wav: was replaced or modified"),
            "ERROR",
            "ZIP of r cut short: r/a.wav: was replaced or modified",
        ),
        (
            aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
            "INFO",
            "ZIP of r: the client went away",
        ),
        (None, "INFO", "ZIP of r cancelled (client_gone)"),  # the client hangs up
    ],
)
async def test_each_way_a_download_ends_is_logged_under_the_routes_logger(
    tree: AirTree,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    ending: BaseException | None,
    level: str,
    message: str,
) -> None:
    async def send_body(self: ZipResponse, progress: Any) -> None:
        if ending is not None:
            raise ending
        await asyncio.Event().wait()  # until aiohttp cancels the handler

    monkeypatch.setattr(ZipResponse, "_send_body", send_body)
    caplog.set_level(logging.INFO)
    write(tree.render / "r" / "a.wav", b"a" * 1000)
    client = await make_client(limits={"send_timeout_seconds": 7.0})
    response = await client.get("/api/air/export/zip/r")
    assert response.status == 200
    if ending is None:
        response.close()
    await wait_until(lambda: bool(logged(caplog, "ZIP of")))
    response.close()
    assert logged(caplog, "ZIP of") == [("export_service.routes", level, message)]


async def test_clients_that_hang_up_leave_no_file_open(
    tree: AirTree, make_client: ClientFactory
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(16 * 1024 * 1024))
    client = await make_client(**SMALL_BATCHES)
    for _ in range(5):
        sock = socket.create_connection((client.server.host, client.server.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\n\r\n")
        await reader.readexactly(256 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # RST: the client is gone mid-download
    await wait_until(lambda: not open_paths_under(tree.base))
    assert open_paths_under(tree.base) == []
    await wait_until(lambda: _cut_short(client, "client_gone") == 5)
    assert _cut_short(client, "client_gone") == 5
    assert _cut_short(client, "source_changed") == _cut_short(client, "stalled") == 0
    # ...and the service answers the next request at once.
    response = await client.get("/api/air/export/list/r")
    assert response.status == 200


@pytest.mark.slow
async def test_folders_1000_levels_deep_zip(tree: AirTree, client: TestClient[Any, Any]) -> None:
    write(tree.render / "r" / "top.wav", b"top")
    levels = [Path(tree.render / "r", *["d"] * depth) for depth in range(1, 1001)]
    for folder in levels:  # one by one: pathlib's mkdir(parents=True) recurses
        folder.mkdir()
    (levels[-1] / "bottom.wav").write_bytes(b"deep")
    try:
        response = await client.get("/api/air/export/zip/r")
        assert response.status == 200
        assert read_zip(await response.read()) == {
            "render/r/" + "d/" * 1000 + "bottom.wav": b"deep",
            "render/r/top.wav": b"top",
        }
    finally:  # bottom-up: pytest's recursive clean-up would not reach that deep
        (levels[-1] / "bottom.wav").unlink()
        for folder in reversed(levels):
            folder.rmdir()


@pytest.mark.slow
async def test_the_zip_counts_what_could_not_be_listed(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "own.wav", b"o")
    link_beyond_path_max(tree.render / "r" / "into_deep", tree.render / "elsewhere")
    try:
        head = await client.head("/api/air/export/zip/r")
        response = await client.get("/api/air/export/zip/r")
        body = await response.read()
    finally:
        remove_deep(tree.render / "elsewhere")
    for answer in (head, response):
        assert answer.headers["X-Export-Unlisted-Paths"] == "1"
        assert answer.headers["X-Export-Skipped-Files"] == "0"
    assert read_zip(body) == {"render/r/own.wav": b"o"}


@pytest.mark.slow
async def test_a_zip_holds_a_file_1100_folders_deep(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """Its folder's path (9,900 bytes) is beyond PATH_MAX, so the reader opens
    it one folder at a time from the root."""
    write(tree.render / "r" / "top.wav", b"t")
    make_deep(tree.render / "r", 1100)
    try:
        response = await client.get("/api/air/export/zip/r")
        body = await response.read()
        assert open_paths_under(tree.base) == []
    finally:
        remove_deep(tree.render / "r")
    assert response.status == 200
    assert (response.headers["X-Export-Files"], response.headers["X-Export-Skipped-Files"]) == (
        "2",
        "0",
    )
    deep = "render/r/" + "/".join([DEEP] * 1100) + "/deep.wav"
    assert read_zip(body) == {"render/r/top.wav": b"t", deep: b"deep"}


def _access_lines(caplog: pytest.LogCaptureFixture, path: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "export_service.access" and record.getMessage().startswith(f"GET {path} ")
    ]


ZIP_THEN_HEALTH = (
    b"GET /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
)


async def test_a_failure_after_the_headers_aborts_the_connection(
    tree: AirTree,
    make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """zipstream-ng failing on the second entry's header (as it did with
    struct.error on a name too long for a ZIP): the client has the 200's
    headers and the first entry, then the connection ends; no in-band 500,
    and the request pipelined behind it is not answered inside the ZIP."""
    write(tree.render / "r" / "a.wav", b"a" * 200_000)  # a batch of its own
    write(tree.render / "r" / "b.wav", b"b" * 1000)
    client = await make_client(**SMALL_BATCHES)
    real_header = records_module.Records.local_header

    def header(self: Any, entry: Any, crc: int) -> bytes:
        if entry.arcname.endswith("b.wav"):
            raise struct.error("'H' format requires 0 <= number <= 65535")
        return real_header(self, entry, crc)

    monkeypatch.setattr(records_module.Records, "local_header", header)
    caplog.set_level(logging.INFO)
    ((status, headers, body),) = split_responses(await pipelined(client, *ZIP_THEN_HEALTH))
    assert status == 200 and len(body) < int(headers["Content-Length"])
    assert body.startswith(b"PK\x03\x04") and b"HTTP/1.1" not in body
    assert _access_lines(caplog, "/api/air/export/zip/r") == [
        f"GET /api/air/export/zip/r 500 {len(body)} error"
    ]
    assert logged(caplog, "ZIP of r") == [
        (
            "export_service.routes",
            "ERROR",
            "ZIP of r failed after its headers went out: the connection is aborted",
        )
    ]
    assert _cut_short(client, "error") == 1


async def test_a_disk_read_error_cuts_the_zip_short(
    failing_disk: FailingDisk, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """EIO from a real (loop) device in the middle of a ZIP's file: a short
    transfer, the connection closed, no second response in the body."""
    caplog.set_level(logging.INFO)
    ((status, headers, body),) = split_responses(await pipelined(client, *ZIP_THEN_HEALTH))
    assert status == 200 and len(body) < int(headers["Content-Length"])
    assert b"HTTP/1.1" not in body
    (line,) = _access_lines(caplog, "/api/air/export/zip/r")
    assert line.endswith(f" {len(body)} cut_short")
    (message,) = [m for _, _, m in logged(caplog, "ZIP of r")]
    assert message == "ZIP of r cut short: r/big.wav: read failed (Input/output error)"
    await wait_until(lambda: not open_paths_under(failing_disk.big.parent))


@pytest.mark.slow
async def test_a_name_longer_than_a_zip_can_hold_is_left_out_when_planned(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """260 folders of 255-byte names: an entry name of 66,560 bytes, which no
    ZIP header can hold. The file is left out when the download is planned,
    so HEAD and GET agree, the ZIP is whole, and a request pipelined behind
    it gets its own answer."""
    caplog.set_level(logging.WARNING)
    write(tree.render / "r" / "top.wav", b"top")
    make_deep(tree.render / "r" / "long", 260, name="n" * 255)
    try:
        head = await client.head("/api/air/export/zip/r")
        (zip_answer, health) = split_responses(await pipelined(client, *ZIP_THEN_HEALTH))
    finally:
        remove_deep(tree.render / "r" / "long")
    status, headers, body = zip_answer
    assert status == 200 and headers["Content-Length"] == head.headers["Content-Length"]
    assert headers["X-Export-Skipped-Files"] == head.headers["X-Export-Skipped-Files"] == "1"
    assert read_zip(body) == {"render/r/top.wav": b"top"}
    assert health[0] == 200 and health[2].startswith(b'{"status"')
    messages = [m for _, _, m in logged(caplog, "leaving render/r/long/")]
    assert len(messages) == 2  # planned for the HEAD, and for the GET
    assert messages[1].endswith(
        "out of the ZIP: its entry name has 66582 bytes, more than the 65535 a ZIP can hold"
    )


async def _headers_of(client: TestClient[Any, Any], path: str) -> socket.socket:
    """A GET of ``path`` whose client reads the head and then nothing."""
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


async def test_crc_passes_share_the_threads_and_stop_when_their_clients_hang_up(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """Two clients ask for a run holding a 32 GiB sparse file: each download
    starts with a pass over it for its CRC (~10 s each here). Meanwhile
    another run's ZIP is served as usual (before: it waited for both passes,
    which held both ZIP threads, 20-60 s); when the two hang up, both passes
    stop and the file is closed (before: it stayed open until the passes
    ended)."""
    huge = tree.render / "huge" / "huge.wav"
    huge.parent.mkdir()
    with huge.open("wb") as file:
        file.truncate(32 << 30)
    content = os.urandom(8 * 1024 * 1024)
    write(tree.render / "r" / "mix.wav", content)
    hanging = [await _headers_of(client, "/api/air/export/zip/huge") for _ in range(2)]
    try:
        await wait_until(lambda: len(open_paths_under(huge)) == 2)  # both passes run
        response = await asyncio.wait_for(client.get("/api/air/export/zip/r"), 10)
        assert read_zip(await asyncio.wait_for(response.read(), 10)) == {
            "render/r/mix.wav": content
        }
        assert len(open_paths_under(huge)) == 2  # the passes were still running
    finally:
        for sock in hanging:
            sock.close()
    await wait_until(lambda: not open_paths_under(huge.parent), seconds=5)
    await wait_until(lambda: _cut_short(client, "client_gone") == 2, seconds=5)
