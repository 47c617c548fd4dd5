"""The access log and request metrics: body bytes, cut requests, bad request lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from export_service.http.access import (
    _REFUSED_WRITE,
    ACCESS_FIELDS,
    ACCESS_LOGGER,
    ENDINGS,
    _without_queries,
)
from export_service.obs.logs import JsonFormatter, TextFormatter
from tests.helpers import (
    AirTree,
    ClientFactory,
    content_length,
    raw_exchange,
    wait_until,
    write,
)

ACCESS = "export_service.access"


def test_the_lines_go_to_the_access_logger_by_its_name() -> None:
    """Log pipelines select access lines by this logger name."""
    assert ACCESS_LOGGER.name == ACCESS


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [getattr(r, "fields", {}) for r in caplog.records if r.name == ACCESS]


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the series of ``name`` that carry these labels."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    total = 0.0
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "{") and wanted <= set(metric[len(name) + 1 : -1].split(",")):
            total += float(value)
    return total


async def test_bytes_is_the_body_sent_on_every_route(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    size = 2_600_000
    write(tree.render / "r" / "mix.wav", os.urandom(size))
    caplog.set_level(logging.INFO, logger=ACCESS)
    sizes = {}
    for method, path, headers in [
        ("GET", "/api/audio/r/mix.wav", {}),
        ("GET", "/api/audio/r/mix.wav", {"Range": "bytes=100-199"}),
        ("HEAD", "/api/audio/r/mix.wav", {}),
        ("GET", "/api/air/export/list/r", {}),
        ("HEAD", "/api/air/export/list/r", {}),
        ("GET", "/api/air/export/zip/r", {}),
        ("GET", "/api/air/export/zip/r", {"Range": "bytes=10-"}),
        ("GET", "/nope", {}),
        ("GET", "/healthz", {}),
    ]:
        response = await client.request(method, path, headers={**headers, "X-Request-ID": path})
        sizes[(method, path, str(headers))] = len(await response.read())
    await wait_until(lambda: len(_lines(caplog)) == len(sizes))
    lines = _lines(caplog)
    assert [line["bytes"] for line in lines] == list(sizes.values())
    assert lines[0]["bytes"] == size and lines[1]["bytes"] == 100 and lines[2]["bytes"] == 0
    assert all(line["ended"] == "complete" for line in lines)


async def _cut_zip(client: TestClient[Any, Any], after: int) -> None:
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"GET /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\nX-Request-ID: cut\r\n\r\n")
    await reader.readexactly(after)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def test_a_download_the_client_resets_gets_its_line_and_is_counted(
    tree: AirTree, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(32 * 1024 * 1024))
    client = await make_client(limits={"read_chunk_bytes": 65536, "batch_bytes": 65536})
    caplog.set_level(logging.INFO, logger=ACCESS)
    await _cut_zip(client, 1024 * 1024)
    await wait_until(lambda: any(line["request_id"] == "cut" for line in _lines(caplog)))
    (line,) = [line for line in _lines(caplog) if line["request_id"] == "cut"]
    assert line["status"] == 200
    # Which of two is a race no test controls: the reset reaches the handler
    # as a failed write (it returns: cut_short) or as its cancellation
    # (client_gone).
    assert line["ended"] in ("client_gone", "cut_short")
    assert 1024 * 1024 - 1000 < line["bytes"] < 32 * 1024 * 1024
    metrics = await (await client.get("/metrics")).text()
    route = "/api/air/export/zip/{render_run_id}"
    assert _metric(metrics, "export_http_requests_total", route=route, method="GET", status="200")
    assert (
        _metric(metrics, "export_http_requests_cut_short_total", route=route, ended=line["ended"])
        == 1
    )


async def test_a_request_abandoned_before_its_answer_gets_a_499_line(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    write(tree.render / "r" / "a.wav", b"a")
    caplog.set_level(logging.INFO, logger=ACCESS)
    for _ in range(200):
        sock = socket.create_connection((client.server.host, client.server.port))
        sock.sendall(b"GET /api/air/export/list/r HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await asyncio.sleep(0)
    await wait_until(lambda: len(_lines(caplog)) == 200)
    lines = _lines(caplog)
    assert len(lines) == 200
    # Each request ends as its reset meets it (before, during or after the
    # answer): a race per request, so the set of outcomes, not one of them.
    assert {line["ended"] for line in lines} <= {"client_gone", "complete", "cut_short"}
    gone = [line for line in lines if line["ended"] == "client_gone"]
    assert gone and all(line["status"] == 499 and line["bytes"] == 0 for line in gone)
    metrics = await (await client.get("/metrics")).text()
    route = "/api/air/export/list/{render_run_id}"
    counted = sum(
        _metric(metrics, "export_http_requests_total", route=route, method="GET", status=status)
        for status in ("200", "499")
    )
    assert counted == 200


@pytest.mark.slow
async def test_malformed_request_lines_are_one_plain_line_each_and_counted(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(1000):
        head, _ = await raw_exchange(client, b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n")
        assert head.split()[1] == b"400"
    await wait_until(lambda: len(_lines(caplog)) == 1000)
    lines = _lines(caplog)
    assert len(lines) == 1000
    assert all(line["status"] == 400 and line["ended"] == "rejected" for line in lines)
    assert lines[0]["path"] == "-" and lines[0]["error"] == "Invalid char in url path:"
    assert [r for r in caplog.records if r.name != ACCESS] == []
    assert all(r.exc_info is None for r in caplog.records)
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, "export_http_requests_total", route="unmatched", status="400") == 1000


async def test_a_refused_request_lines_query_is_not_logged(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp quotes the start of a request line it refuses (too long here);
    a signed URL's signature is in its query, and the log never holds one."""
    caplog.set_level(logging.INFO)
    secret = "s" * 43
    target = f"/api/air/export/zip/r?signature={secret}&expires=1" + "&" * 8200
    head, _ = await raw_exchange(client, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert head.split()[1] == b"400"
    await wait_until(lambda: len(_lines(caplog)) == 1)
    (line,) = _lines(caplog)
    assert line["ended"] == "rejected"
    assert all(secret not in record.getMessage() for record in caplog.records)
    # aiohttp quotes the line's start from 3.13.4 (before, its reason holds
    # no part of the line): then the path is kept, the query cut out.
    if "/api/air/export/zip/r" in line["error"]:
        assert "/api/air/export/zip/r?<query not logged>" in line["error"]


def test_a_reason_quoting_a_request_line_loses_its_query() -> None:
    """The reason aiohttp (3.13.4 and later) gives for an over-long request
    line, whatever aiohttp version runs the suite."""
    reason = (
        "Got more than 8190 bytes when reading: "
        "bytearray(b'/api/air/export/zip/r?signature=c2VjcmV0&expires=1&&&&...')."
    )
    assert _without_queries(reason) == (
        "Got more than 8190 bytes when reading: "
        "bytearray(b'/api/air/export/zip/r?<query not logged>')."
    )


async def test_text_lines_cannot_be_forged_through_the_path(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    forged = (
        "/x%0A2026-11-24%2000:00:00,000%20INFO%20export_service.access%20GET%20/admin%20200"
        "%0D%1B[2J"
    )
    await raw_exchange(
        client, f"GET {forged} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    await wait_until(lambda: len(_lines(caplog)) == 1)
    (record,) = [r for r in caplog.records if r.name == ACCESS]
    text = TextFormatter().format(record)
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "/x\\n2026-11-24 00:00:00,000 INFO" in text and "200\\r\\x1b[2J" in text


async def _get_and_reset(client: TestClient[Any, Any], path: str, delay: float) -> None:
    sock = socket.create_connection((client.server.host, client.server.port))
    sock.setblocking(False)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    await asyncio.sleep(delay)  # when the reset lands is what the callers vary
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_a_client_that_resets_as_the_headers_go_out_is_a_quiet_client_gone(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    write(tree.render / "r" / "mix.wav", os.urandom(200_000))
    caplog.set_level(logging.INFO)
    paths = ["/api/air/export/zip/r", "/api/audio/r/mix.wav", "/api/air/export/list/r"]
    count = 0
    for round_ in range(10):
        await asyncio.gather(
            *(
                _get_and_reset(client, paths[i % 3], (i % 4) / 1000)
                for i in range(round_, round_ + 30)
            )
        )
        count += 30
    await wait_until(lambda: len(_lines(caplog)) == count)
    lines = _lines(caplog)
    assert len(lines) == count
    # As above: where each reset lands is a race; what matters is that none
    # is loud and each gets its one line.
    assert {line["ended"] for line in lines} <= {"client_gone", "complete", "cut_short"}
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == [], [r.getMessage() for r in loud[:3]]


async def _read_all_then_close(client: TestClient[Any, Any], path: str) -> int:
    """What curl does: read the head and exactly Content-Length bytes, then close."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nX-Request-ID: whole\r\n\r\n".encode())
    length = content_length(await reader.readuntil(b"\r\n\r\n"))
    await reader.readexactly(length)
    writer.close()
    return length


@pytest.mark.parametrize("path", ["/api/air/export/zip/r", "/api/audio/r/mix.wav"])
async def test_a_download_read_to_its_end_is_complete_though_the_client_closes_at_once(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture, path: str
) -> None:
    write(tree.render / "r" / "mix.wav", os.urandom(3_000_000))
    caplog.set_level(logging.INFO)
    lengths = [await _read_all_then_close(client, path) for _ in range(20)]
    await wait_until(lambda: len(_lines(caplog)) == 20)
    lines = _lines(caplog)
    assert [(line["ended"], line["bytes"]) for line in lines] == [
        ("complete", length) for length in lengths
    ]
    assert [r.getMessage() for r in caplog.records if r.name != ACCESS] == []
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, "export_http_requests_cut_short_total") == 0
    assert _metric(metrics, "export_zip_downloads_cut_short_total") == 0


async def test_one_json_access_line_per_request(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="export_service.access"):
        await client.get("/api/air/export/list/r", headers={"X-Request-ID": "line-1"})
        await wait_until(
            lambda: any(
                getattr(r, "fields", {}).get("request_id") == "line-1" for r in caplog.records
            )
        )
    (record,) = [
        r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "line-1"
    ]
    line = json.loads(JsonFormatter().format(record))
    assert line["method"] == "GET" and line["path"] == "/api/air/export/list/r"
    assert line["status"] == 200 and line["bytes"] > 0 and line["duration_ms"] >= 0
    assert line["request_id"] == "line-1"


async def test_the_documented_fields_are_the_fields_of_the_lines_written(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """The docs' log reference is made from ACCESS_FIELDS and ENDINGS: a line
    written with a field they do not name, or without one they name, fails."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    await client.get("/api/air/export/list/r")
    await raw_exchange(client, b"GET /a\x01b HTTP/1.1\r\nHost: t\r\n\r\n")
    await wait_until(lambda: len(_lines(caplog)) == 2)
    complete, rejected = sorted(_lines(caplog), key=lambda line: "error" in line)
    assert set(complete) == set(ACCESS_FIELDS) - {"error"}
    assert set(rejected) == set(ACCESS_FIELDS)
    assert {complete["ended"], rejected["ended"]} <= set(ENDINGS)


async def test_aiohttps_refused_write_is_told_by_its_message(aiohttp_client: Any) -> None:
    """access.py tells a write aiohttp's writer refused (its bytes counted,
    never sent) by the error's message: this fails if aiohttp changes it."""
    refused: list[BaseException] = []

    async def write_after_close(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        assert request.transport is not None
        request.transport.close()
        try:
            await response.write(b"x")
        except ConnectionError as error:
            refused.append(error)
        return response

    app = web.Application()
    app.router.add_get("/", write_after_close)
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await reader.read()  # until the service closes the connection
    writer.close()
    await wait_until(lambda: bool(refused))
    assert [str(error) for error in refused] == [_REFUSED_WRITE]
