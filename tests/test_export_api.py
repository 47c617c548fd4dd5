"""routes: the export API's handlers (manifest, ZIP, links) as the app serves
them. What an export holds: test_exports.py; how a ZIP is sent once planned:
test_zip_downloads.py; the JSON error shape: test_app.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service import exports
from export_service.core import scanning
from export_service.http import routes
from export_service.http.keys import ZIP_SLOTS
from export_service.zip.archive import ExportArchive
from tests.helpers import (
    AirTree,
    ClientFactory,
    error_detail,
    every_case,
    first_answer,
    link_beyond_path_max,
    open_paths_under,
    raw_exchange,
    remove_deep,
    wait_until,
    write,
)
from tests.zips import read_zip

# Hand-written: what the original AIR export module returns for the tree built
# by every_case(), in its compact FastAPI rendering.
EXPECTED_RUN_1 = """
{"render_run_id": "run_1", "midi_run_id": "run_1", "param_run_id": "prm_a",
 "files": [
  {"step": "midi_generation", "rel_path": "20261102_090000_run_1/track.mid",
   "url": "/api/midi-generation/output/20261102_090000_run_1/track.mid", "bytes": 4},
  {"step": "param_generation", "rel_path": "20261101_101200_prm_a/params.json",
   "url": "/api/param-generation/output/20261101_101200_prm_a/params.json", "bytes": 2},
  {"step": "render", "rel_path": "run_1/a/b.wav", "url": "/api/audio/run_1/a/b.wav", "bytes": 2},
  {"step": "render", "rel_path": "run_1/a\\\\b.wav", "url": "/api/audio/run_1/a%5Cb.wav",
   "bytes": 1},
  {"step": "render", "rel_path": "run_1/empty.txt", "url": "/api/audio/run_1/empty.txt",
   "bytes": 0},
  {"step": "render", "rel_path": "run_1/mix.wav", "url": "/api/audio/run_1/mix.wav", "bytes": 4},
  {"step": "render", "rel_path": "run_1/naïve #1 100%.wav",
   "url": "/api/audio/run_1/na%C3%AFve%20%231%20100%25.wav", "bytes": 5},
  {"step": "render", "rel_path": "run_1/stems/deep/kick.wav",
   "url": "/api/audio/run_1/stems/deep/kick.wav", "bytes": 3}
 ],
 "missing": []}
"""


def _compact(text: str) -> bytes:
    return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":")).encode()


async def _manifest(client: TestClient[Any, Any], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.read()


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.parametrize("control", ["%0A", "%0D", "%09", "%0D%0A"])
@pytest.mark.parametrize(
    ("method", "route"),
    [("GET", "list"), ("GET", "zip"), ("HEAD", "zip"), ("GET", "links"), ("PUT", "links")],
)
async def test_a_control_character_in_the_run_id_is_a_422(
    client: TestClient[Any, Any], method: str, route: str, control: str
) -> None:
    body = b'{"param_run_id": "p"}' if method == "PUT" else b""
    request = (
        f"{method} /api/air/export/{route}/a{control}b HTTP/1.1\r\nHost: t\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    head, answer = await raw_exchange(client, request)
    assert head.split()[1] == b"422", head
    if method != "HEAD":
        assert json.loads(answer)["detail"]["error"] == "invalid_run_id"


async def test_bad_param_run_id_is_its_own_error(client: TestClient[Any, Any]) -> None:
    detail = await error_detail(client, "GET", "/api/air/export/list/r?param_run_id=..", 422)
    assert detail["error"] == "invalid_param_run_id"
    detail = await error_detail(client, "GET", "/api/air/export/zip/r?param_run_id=a/b", 422)
    assert detail["error"] == "invalid_param_run_id"


# -- the manifest ------------------------------------------------------------


async def test_manifest_is_byte_for_byte_the_original(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    every_case(tree)
    body = await _manifest(client, "/api/air/export/list/run_1")
    assert body == _compact(EXPECTED_RUN_1)


@pytest.mark.parametrize("padded", ["%20run_1", "run_1%20%20", "%09run_1%0A"])
async def test_whitespace_around_the_run_id_is_stripped_as_the_original_did(
    tree: AirTree, client: TestClient[Any, Any], padded: str
) -> None:
    """The original took ``render_run_id.strip()``: ``/list/%20run_1`` is run_1's
    manifest, and the ZIP of ``%20run_1`` is run_1's, under run_1's name."""
    every_case(tree)
    assert await _manifest(client, f"/api/air/export/list/{padded}") == _compact(EXPECTED_RUN_1)
    plain = await client.get("/api/air/export/zip/run_1")
    padded_zip = await client.get(f"/api/air/export/zip/{padded}")
    assert padded_zip.status == 200
    assert await padded_zip.read() == await plain.read()
    assert padded_zip.headers["Content-Disposition"] == plain.headers["Content-Disposition"]
    detail = await error_detail(client, "GET", "/api/air/export/list/%20%20", 422)
    assert detail["error"] == "invalid_run_id"


@pytest.mark.parametrize(
    ("query", "param_run_id", "params"),
    [
        ("prm_b", "prm_b", ("20261101_101300_prm_b", 7)),
        ("%20prm_b%09", "prm_b", ("20261101_101300_prm_b", 7)),
        ("", "prm_a", ("20261101_101200_prm_a", 2)),
        ("%20%20", "prm_a", ("20261101_101200_prm_a", 2)),
    ],
    ids=["given", "given-with-spaces", "empty", "blank"],
)
async def test_the_query_param_run_id_wins_over_the_link_unless_empty(
    tree: AirTree,
    client: TestClient[Any, Any],
    query: str,
    param_run_id: str,
    params: tuple[str, int],
) -> None:
    """An empty or blank ``param_run_id=`` counts as absent and a given one is
    stripped, as in the original module (``(param_run_id or "").strip()``)."""
    every_case(tree)
    path = f"/api/air/export/list/run_1?param_run_id={query}"
    manifest = json.loads(await _manifest(client, path))
    assert manifest["param_run_id"] == param_run_id
    folder, size = params
    assert [f for f in manifest["files"] if f["step"] == "param_generation"] == [
        {
            "step": "param_generation",
            "rel_path": f"{folder}/params.json",
            "url": f"/api/param-generation/output/{folder}/params.json",
            "bytes": size,
        }
    ]


async def test_an_export_of_more_files_than_the_limit_is_refused(
    tree: AirTree, make_client: ClientFactory
) -> None:
    for index in range(4):
        write(tree.render / "r" / f"{index}.wav", b"r")
    write(tree.midi / "20261101_r" / "track.mid", b"m")
    client = await make_client(limits={"max_files_per_export": 4})
    response = await client.get("/api/air/export/list/r")
    assert response.status == 422
    error = (await response.json())["detail"]
    assert error["error"] == "export_too_large"
    assert "more than 4 files" in error["message"]
    assert "limits.max_files_per_export" in error["message"]
    (tree.midi / "20261101_r" / "track.mid").unlink()  # 4 files: at the limit, listed
    response = await client.get("/api/air/export/list/r")
    assert response.status == 200
    assert len((await response.json())["files"]) == 4


async def test_what_could_not_be_listed_is_counted_in_a_header_and_a_metric(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "own.wav", b"o")
    response = await client.get("/api/air/export/list/r")
    assert response.headers["X-Export-Unlisted-Paths"] == "0"
    link_beyond_path_max(tree.render / "r" / "into_deep", tree.render / "elsewhere")
    try:
        response = await client.get("/api/air/export/list/r")
        body = await response.json()
    finally:
        remove_deep(tree.render / "elsewhere")
    assert [f["rel_path"] for f in body["files"]] == ["r/own.wav"]
    assert response.headers["X-Export-Unlisted-Paths"] == "1"
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, 'export_scan_unlisted_total{reason="name_too_long"}') == 1


async def test_the_manifest_is_json_with_a_strong_etag_of_its_bytes(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "mix.wav", b"m")
    response = await client.get("/api/air/export/list/r")
    body = await response.read()
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["ETag"] == f'"{hashlib.sha256(body).hexdigest()[:40]}"'
    head = await client.head("/api/air/export/list/r")
    assert (head.status, await head.read()) == (200, b"")
    assert head.headers["ETag"] == response.headers["ETag"]


# -- the ZIP's entry: a slot, the file limit, planning in the I/O pool -------


async def test_a_download_beyond_the_cap_gets_503_with_retry_after(
    tree: AirTree, make_client: ClientFactory
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(32 * 1024 * 1024))
    client = await make_client(
        limits={"max_concurrent_zips": 1, "batch_bytes": 65536, "read_chunk_bytes": 65536}
    )
    first = await client.get("/api/air/export/zip/r")
    await first.content.readexactly(1024)  # streaming, and stalled by us
    refused = await client.get("/api/air/export/zip/r")
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "5"
    assert (await refused.json())["detail"]["error"] == "too_many_downloads"
    # A HEAD plans the whole ZIP as a GET does: it counts against the cap too.
    head = await client.head("/api/air/export/zip/r")
    assert (head.status, head.headers["Retry-After"]) == (503, "5")
    await first.read()
    # The client can have the last byte before the server's handler returns.
    assert client.app is not None
    slots = client.app[ZIP_SLOTS]
    await wait_until(lambda: slots.in_use == 0)
    assert (await client.head("/api/air/export/zip/r")).status == 200
    again = await client.get("/api/air/export/zip/r")
    assert again.status == 200
    await again.read()
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "export_zip_downloads_refused_total") == 2


async def test_one_client_cannot_take_every_slot(tree: AirTree, make_client: ClientFactory) -> None:
    """Issue 22 item 7: aria2c -x16 held all 16 slots and everyone else got
    503. A client (here every request comes from 127.0.0.1) holds at most
    limits.max_zips_per_client; over it: 429 with Retry-After."""
    write(tree.render / "r" / "big.wav", os.urandom(32 * 1024 * 1024))
    client = await make_client(
        limits={
            "max_concurrent_zips": 3,
            "max_zips_per_client": 2,
            "batch_bytes": 65536,
            "read_chunk_bytes": 65536,
        }
    )
    held = [await client.get("/api/air/export/zip/r") for _ in range(2)]
    for response in held:
        await response.content.readexactly(1024)  # streaming, and stalled by us
    refused = await client.get("/api/air/export/zip/r")
    assert (refused.status, refused.headers["Retry-After"]) == (429, "5")
    detail = (await refused.json())["detail"]
    assert detail["error"] == "too_many_downloads_per_client"
    assert "(127.0.0.1)" in detail["message"] and "max_zips_per_client" in detail["message"]
    # Not behind a trusted proxy: a forged X-Forwarded-For changes nothing.
    forged = await client.get("/api/air/export/zip/r", headers={"X-Forwarded-For": "1.2.3.4"})
    assert forged.status == 429
    for response in held:
        response.close()
    assert client.app is not None
    slots = client.app[ZIP_SLOTS]
    await wait_until(lambda: slots.in_use == 0)
    again = await client.get("/api/air/export/zip/r")
    assert again.status == 200
    await again.read()


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_share(
    tree: AirTree, make_client: ClientFactory
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(32 * 1024 * 1024))
    client = await make_client(
        server={"trusted_proxies": ["127.0.0.1"]},
        limits={
            "max_concurrent_zips": 3,
            "max_zips_per_client": 1,
            "batch_bytes": 65536,
            "read_chunk_bytes": 65536,
        },
    )

    async def download(browser: str) -> Any:
        return await client.get(
            "/api/air/export/zip/r", headers={"X-Forwarded-For": f"{browser}, 127.0.0.1"}
        )

    first, second = await download("198.51.100.1"), await download("198.51.100.2")
    assert (first.status, second.status) == (200, 200)
    for response in (first, second):
        await response.content.readexactly(1024)
    assert (await download("198.51.100.1")).status == 429
    third = await download("198.51.100.3")
    assert third.status == 200
    await third.content.readexactly(1024)
    full = await download("198.51.100.4")
    assert (full.status, (await full.json())["detail"]["error"]) == (503, "too_many_downloads")
    for response in (first, second, third):
        response.close()


async def test_a_zip_of_more_files_than_the_limit_is_refused_get_and_head(
    tree: AirTree, make_client: ClientFactory
) -> None:
    for index in range(3):
        write(tree.render / "r" / f"{index}.wav", b"r")
    client = await make_client(limits={"max_files_per_export": 2})
    response = await client.get("/api/air/export/zip/r")
    assert response.status == 422
    assert (await response.json())["detail"]["error"] == "export_too_large"
    assert (await client.head("/api/air/export/zip/r")).status == 422


async def test_a_long_plan_never_holds_the_threads_downloads_stream_with(
    tree: AirTree, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning a run of 200,000 files takes seconds; in the ZIP pool it held
    the threads every download needs (a small export's first byte waited
    16 s). With one ZIP thread and a plan that does not end, a small export
    still downloads."""
    write(tree.render / "small" / "a.wav", b"a")
    write(tree.render / "huge" / "b.wav", b"b")
    planning, finish = threading.Event(), threading.Event()
    real_plan = exports.plan_export_archive

    def endless_plan(sources: Any, render_run_id: str, *rest: Any) -> Any:
        if render_run_id == "huge":
            planning.set()
            finish.wait(10)
        return real_plan(sources, render_run_id, *rest)

    monkeypatch.setattr(routes, "plan_export_archive", endless_plan)
    client = await make_client(limits={"zip_threads": 1})
    head = asyncio.ensure_future(client.head("/api/air/export/zip/huge"))
    await wait_until(planning.is_set)
    try:
        response = await asyncio.wait_for(client.get("/api/air/export/zip/small"), 5)
        assert read_zip(await response.read()) == {"render/small/a.wav": b"a"}
    finally:
        finish.set()
    assert (await head).status == 200


# -- links -------------------------------------------------------------------


async def test_link_endpoints(tree: AirTree, client: TestClient[Any, Any]) -> None:
    write(tree.render / "r" / "mix.wav", b"m")
    write(tree.param / "20261101_101200_p9" / "params.json", b"{}")
    missing = await client.get("/api/air/export/links/r")
    assert missing.status == 404
    assert (await missing.json())["detail"]["error"] == "link_not_found"

    put = await client.put("/api/air/export/links/r", json={"param_run_id": "p9"})
    assert put.status == 200
    body = await put.json()
    assert body["render_run_id"] == "r" and body["param_run_id"] == "p9"
    assert isinstance(body["updated_at"], float)
    assert await (await client.get("/api/air/export/links/r")).json() == body

    manifest = await (await client.get("/api/air/export/list/r")).json()
    assert manifest["param_run_id"] == "p9"
    assert manifest["missing"] == ["midi_generation"]


async def test_a_put_strips_the_ids_as_every_read_does(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """Stored as sent (" p1 "), no manifest or GET could find the link again."""
    write(tree.param / "20261101_101200_p1" / "params.json", b"{}")
    put = await client.put("/api/air/export/links/%20r1%20", json={"param_run_id": " p1\t"})
    assert put.status == 200
    assert (await put.json())["param_run_id"] == "p1"
    assert json.loads(tree.links.read_text())["r1"]["param_run_id"] == "p1"
    manifest = await (await client.get("/api/air/export/list/r1")).json()
    assert manifest["param_run_id"] == "p1" and "param_generation" not in manifest["missing"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_body"),
        (b"[]", "invalid_body"),
        (b"{}", "invalid_body"),
        (b'{"param_run_id": 5}', "invalid_body"),
        (b'{"param_run_id": "p", "extra": 1}', "invalid_body"),
        (b'{"param_run_id": ".."}', "invalid_param_run_id"),
        (b'{"param_run_id": "a/b"}', "invalid_param_run_id"),
        (b'{"param_run_id": " \\t"}', "invalid_param_run_id"),
    ],
)
async def test_bad_link_bodies_are_422(
    tree: AirTree, client: TestClient[Any, Any], body: bytes, code: str
) -> None:
    response = await client.put("/api/air/export/links/r", data=body)
    assert response.status == 422
    assert (await response.json())["detail"]["error"] == code
    assert not tree.links.exists()


async def test_put_on_a_corrupt_file_is_503_and_keeps_it(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.links, b"{broken")
    response = await client.put("/api/air/export/links/r", json={"param_run_id": "p"})
    assert response.status == 503
    assert (await response.json())["detail"]["error"] == "links_file_corrupt"
    assert tree.links.read_bytes() == b"{broken"
    assert (await client.get("/api/air/export/links/r")).status == 404


async def test_a_link_is_answered_compactly_in_field_order(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    tree.link({"r": {"param_run_id": "p", "updated_at": 1.5, "note": "not answered"}})
    response = await client.get("/api/air/export/links/r")
    assert response.headers["Content-Type"] == "application/json"
    assert await response.read() == b'{"render_run_id":"r","param_run_id":"p","updated_at":1.5}'


async def test_the_links_route_answers_get_and_put_only(client: TestClient[Any, Any]) -> None:
    head = await client.head("/api/air/export/links/r")
    assert (head.status, head.headers["Allow"]) == (405, "GET,PUT")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[]", "body: Input should be an object"),
        (b"{}", "param_run_id: Field required"),
        (b'{"param_run_id": 5}', "param_run_id: Input should be a valid string"),
    ],
)
async def test_a_refused_link_body_is_named_with_what_is_wrong_in_it(
    client: TestClient[Any, Any], body: bytes, problem: str
) -> None:
    detail = await (await client.put("/api/air/export/links/r", data=body)).json()
    assert detail["detail"]["message"] == (
        'the body must be JSON {"param_run_id": "<id>"}; ' + problem
    )


# -- bounded scans that stop (issue 22 item 4) -----------------------------------


@pytest.mark.parametrize("kind", ["list", "zip"])
async def test_an_export_of_more_folders_than_allowed_is_refused(
    tree: AirTree, make_client: ClientFactory, kind: str
) -> None:
    """300,000 empty folders took 9.2 s a manifest and 738 MB: folders count."""
    for index in range(12):
        (tree.render / "r" / f"{index:02d}").mkdir(parents=True)
    client = await make_client(limits={"max_folders_per_export": 10})
    detail = await error_detail(client, "GET", f"/api/air/export/{kind}/r", 422)
    assert detail["error"] == "export_too_large"
    assert "more than 10 folders" in detail["message"]
    assert "limits.max_folders_per_export" in detail["message"]


class PausedScan:
    """Holds every scan at its 5th folder until released (the point where a
    client hangs up, or where other requests must still be answered)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.walks: list[Any] = []
        self.release = threading.Event()
        real = scanning._Walk.check_stop

        def paused(walk: Any) -> None:
            if len(walk.scan.folders) == 5:
                self.walks.append(walk)
                self.release.wait(30)
            real(walk)

        monkeypatch.setattr(scanning._Walk, "check_stop", paused)


@pytest.mark.parametrize("kind", ["list", "zip"])
async def test_a_scan_whose_client_hangs_up_stops(
    tree: AirTree,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    """8 clients that hung up within 0.2 s left their scans running for a
    minute, holding the threads: the hop sets the scan's stop flag when its
    request is cancelled, and the scan ends at its next folder."""
    for index in range(50):
        (tree.render / "r" / f"{index:02d}").mkdir(parents=True)
    paused = PausedScan(monkeypatch)
    client = await make_client(limits={"scan_threads": 1})
    request = asyncio.create_task(client.get(f"/api/air/export/{kind}/r"))
    await wait_until(lambda: len(paused.walks) == 1)
    request.cancel()  # the client hangs up: the connection closes
    await wait_until(lambda: paused.walks[0].stop.is_set())
    with caplog.at_level(logging.INFO, logger="export_service.scanning"):
        paused.release.set()
        await wait_until(lambda: "stopped scanning r after 5 folder(s)" in caplog.text)
    assert open_paths_under(tree.render) == []
    answer = await client.get(f"/api/air/export/{kind}/r")  # the one scan thread is free
    assert answer.status == 200
    await answer.read()


async def test_file_urls_links_and_readiness_never_wait_behind_scans(
    tree: AirTree, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3-byte file URL took 61.9 s behind 8 scans of empty folders: scans
    have threads of their own."""
    for index in range(10):
        (tree.render / "r" / f"{index:02d}").mkdir(parents=True)
    write(tree.render / "other" / "a.wav", b"abc")
    paused = PausedScan(monkeypatch)
    client = await make_client(limits={"scan_threads": 2, "io_threads": 1})
    scans = [asyncio.create_task(client.get("/api/air/export/list/r")) for _ in range(2)]
    try:
        await wait_until(lambda: len(paused.walks) == 2)  # every scan thread is busy
        answer = await client.get("/api/audio/other/a.wav")
        assert answer.status == 200 and await answer.read() == b"abc"
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/api/air/export/links/r")).status == 404
    finally:
        paused.release.set()
    for scan in scans:
        assert (await scan).status == 200


# -- Expect: 100-continue (issue 22 item 8) ---------------------------------------


def _put_head(length: int, token: str | None = None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        "PUT /api/air/export/links/r HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\n{auth}Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_100_continue_only_for_a_request_that_would_be_let_in(
    make_client: ClientFactory,
) -> None:
    """100 Continue came before the token was checked and before a body known
    to be too large was refused: the client sent a body only to be told 401."""
    client = await make_client(auth={"token": "s3cret"})
    assert await first_answer(client, _put_head(25)) == b"HTTP/1.1 401 Unauthorized\r\n"
    assert await first_answer(client, _put_head(25, "wrong")) == b"HTTP/1.1 401 Unauthorized\r\n"
    too_large = await first_answer(client, _put_head(2 * 1024 * 1024, "s3cret"))
    assert too_large == b"HTTP/1.1 413 Request Entity Too Large\r\n"
    assert await first_answer(client, _put_head(25, "s3cret")) == b"HTTP/1.1 100 Continue\r\n"
    odd = _put_head(25, "s3cret").replace(b"100-continue", b"200-ok")
    assert (await first_answer(client, odd)).startswith(b"HTTP/1.1 417")


async def test_a_body_sent_after_100_continue_is_linked(
    tree: AirTree, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The link is stored, and the access line counts the answer's body, not
    the 100 Continue before it (routes.py resets aiohttp's writer count)."""
    caplog.set_level(logging.INFO, logger="export_service.access")
    client = await make_client(auth={"token": "s3cret"})
    body = b'{"param_run_id": "p1"}'
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(
            _put_head(len(body), "s3cret").replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        )
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 10) == b"HTTP/1.1 100 Continue\r\n"
        assert await reader.readline() == b"\r\n"
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert json.loads(tree.links.read_text())["r"]["param_run_id"] == "p1"
    answer_body = answer.partition(b"\r\n\r\n")[2]
    await wait_until(lambda: any(r.name == "export_service.access" for r in caplog.records))
    (line,) = [r.getMessage() for r in caplog.records if r.name == "export_service.access"]
    assert line == f"PUT /api/air/export/links/r 200 {len(answer_body)} complete"


# -- selective exports (?steps=, ?prefix=) -----------------------------------

# A fixed tree's answers as they were before selective exports: without the
# parameters (or with a selection of everything) they must stay these bytes.
PINNED_MANIFEST_ETAG = '"5ea61270722723ff8e1cb00116b947db3c9ceaf6"'
PINNED_ZIP_SHA256 = "5db0f2b39bd4178d7a2e38e6cb1facfb136a3b8a8b9f2be314509377fd978094"
_EVERYTHING = [
    "",
    "?steps=render,midi_generation,param_generation",
    "?steps=param_generation&steps=render,midi_generation,render",
    "?unknown=1&other=x",  # query keys it does not know are ignored (expires and
    # signature are not unknown: they make a signed-URL request, tests/test_signed_urls.py)
]


def _pinned_tree(tree: AirTree) -> None:
    every_case(tree)
    for folder in (tree.render, tree.midi, tree.param):
        for path in folder.rglob("*"):
            if path.is_file():
                os.utime(path, (1_800_000_000, 1_800_000_000))


def _todays_zip_etag(entries: list[tuple[str, str]]) -> str:
    """The ZIP's ETag as archive.py made it before selections existed, from
    the entries' names and their files' stat."""
    digest = hashlib.sha256(ExportArchive.FORMAT.encode())
    lines = ""
    for arcname, path in entries:
        info = os.stat(path)
        lines += (
            f"{arcname}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\0{info.st_ino}\n"
        )
    digest.update(lines.encode())
    return f'"{digest.hexdigest()[:40]}"'


@pytest.mark.parametrize("query", _EVERYTHING)
async def test_without_a_selection_the_answers_are_todays(
    tree: AirTree, client: TestClient[Any, Any], query: str
) -> None:
    _pinned_tree(tree)
    manifest = await client.get("/api/air/export/list/run_1" + query)
    assert await manifest.read() == _compact(EXPECTED_RUN_1)
    assert manifest.headers["ETag"] == PINNED_MANIFEST_ETAG
    answer = await client.get("/api/air/export/zip/run_1" + query)
    body = await answer.read()
    assert hashlib.sha256(body).hexdigest() == PINNED_ZIP_SHA256
    assert answer.headers["Content-Disposition"] == 'attachment; filename="export_run_1.zip"'
    run = tree.render / "run_1"
    assert answer.headers["ETag"] == _todays_zip_etag(
        [
            (
                "midi_generation/20261102_090000_run_1/track.mid",
                str(tree.midi / "20261102_090000_run_1" / "track.mid"),
            ),
            (
                "param_generation/20261101_101200_prm_a/params.json",
                str(tree.param / "20261101_101200_prm_a" / "params.json"),
            ),
            ("render/run_1/a/b.wav", str(run / "a" / "b.wav")),
            ("render/run_1/a/b__1.wav", str(run / "a\\b.wav")),
            ("render/run_1/empty.txt", str(run / "empty.txt")),
            ("render/run_1/mix.wav", str(run / "mix.wav")),
            ("render/run_1/naïve #1 100%.wav", str(run / "naïve #1 100%.wav")),
            ("render/run_1/stems/deep/kick.wav", str(run / "stems" / "deep" / "kick.wav")),
        ]
    )
    head = await client.head("/api/air/export/zip/run_1" + query)
    assert head.headers["ETag"] == answer.headers["ETag"]
    assert head.headers["Content-Length"] == str(len(body))


def _manifest_of(body: bytes) -> Any:
    return json.loads(body)


async def test_steps_select_whole_steps_and_missing_names_only_selected_ones(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    every_case(tree)
    full = _manifest_of(await _manifest(client, "/api/air/export/list/run_1"))
    render = _manifest_of(await _manifest(client, "/api/air/export/list/run_1?steps=render"))
    assert render == {
        **full,
        "midi_run_id": None,
        "param_run_id": None,
        "files": [file for file in full["files"] if file["step"] == "render"],
        "missing": [],
    }
    midi = _manifest_of(await _manifest(client, "/api/air/export/list/run_1?steps=midi_generation"))
    assert [file["rel_path"] for file in midi["files"]] == ["20261102_090000_run_1/track.mid"]
    assert (midi["midi_run_id"], midi["param_run_id"], midi["missing"]) == ("run_1", None, [])
    # run_2 has a render run only: a selected step without files is missing.
    run_2 = _manifest_of(
        await _manifest(
            client, "/api/air/export/list/run_2?steps=midi_generation&steps=param_generation"
        )
    )
    assert run_2["files"] == [] and run_2["missing"] == ["midi_generation", "param_generation"]


async def test_a_prefix_takes_the_files_below_it_in_every_selected_step(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    every_case(tree)
    write(tree.render / "run_1" / "stems2" / "x.wav", b"2")
    write(tree.midi / "20261102_090000_run_1" / "stems", b"file named stems")
    answer = _manifest_of(await _manifest(client, "/api/air/export/list/run_1?prefix=stems/"))
    assert [(file["step"], file["rel_path"]) for file in answer["files"]] == [
        ("midi_generation", "20261102_090000_run_1/stems"),
        ("render", "run_1/stems/deep/kick.wav"),
    ]
    assert answer["missing"] == ["param_generation"]
    assert (answer["midi_run_id"], answer["param_run_id"]) == ("run_1", None)
    get = await client.get("/api/air/export/list/run_1?prefix=stems/")
    head = await client.head("/api/air/export/list/run_1?prefix=stems")
    whole = await client.head("/api/air/export/list/run_1")
    assert head.status == 200 and await head.read() == b""
    assert head.headers["ETag"] == get.headers["ETag"] != whole.headers["ETag"]
    two = _manifest_of(
        await _manifest(client, "/api/air/export/list/run_1?steps=render&prefix=mix.wav&prefix=a")
    )
    assert [file["rel_path"] for file in two["files"]] == ["run_1/a/b.wav", "run_1/mix.wav"]
    assert two["missing"] == []
    nothing = _manifest_of(
        await _manifest(client, "/api/air/export/list/run_1?steps=render&prefix=Stems")
    )
    assert nothing["files"] == [] and nothing["missing"] == ["render"]


async def test_a_selected_zip_has_its_own_name_etag_and_entries(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    every_case(tree)
    full = await client.get("/api/air/export/zip/run_1")
    full_entries = read_zip(await full.read())
    cases = {
        "?steps=render": ("export_run_1_render.zip", "render/"),
        "?steps=midi_generation,render": ("export_run_1_render+midi_generation.zip", ""),
        "?steps=render&prefix=stems": ("export_run_1_render_stems.zip", "render/run_1/stems/"),
    }
    etags = {full.headers["ETag"]}
    for query, (name, start) in cases.items():
        answer = await client.get("/api/air/export/zip/run_1" + query)
        assert answer.status == 200
        assert answer.headers["Content-Disposition"] == f'attachment; filename="{name}"'
        entries = read_zip(await answer.read())
        expected = {
            entry: content
            for entry, content in full_entries.items()
            if entry.startswith(start) and not entry.startswith("param_generation/")
        }
        assert entries == expected and entries
        etags.add(answer.headers["ETag"])
        head = await client.head("/api/air/export/zip/run_1" + query)
        assert head.headers["ETag"] == answer.headers["ETag"]
        assert head.headers["Content-Disposition"] == answer.headers["Content-Disposition"]
    assert len(etags) == 4
    # The same files selected otherwise: the same selection, the same ETag.
    again = await client.head(
        "/api/air/export/zip/run_1?prefix=stems/deep/&prefix=stems&steps=render"
    )
    assert again.headers["ETag"] in etags - {full.headers["ETag"]}


async def test_a_resume_with_the_full_zips_etag_gets_the_whole_selection(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """Only render files exist: the selection steps=render holds exactly the
    full ZIP's files, yet its ETag differs, so a resume with the full ZIP's
    never splices the two."""
    write(tree.render / "r" / "a.wav", os.urandom(5000))
    full = await client.get("/api/air/export/zip/r")
    full_body = await full.read()
    url = "/api/air/export/zip/r?steps=render"
    stale = await client.get(url, headers={"Range": "bytes=100-", "If-Range": full.headers["ETag"]})
    assert stale.status == 200
    selected = await stale.read()
    assert selected == full_body and stale.headers["ETag"] != full.headers["ETag"]
    fresh = await client.get(
        url, headers={"Range": "bytes=100-", "If-Range": stale.headers["ETag"]}
    )
    assert fresh.status == 206
    assert await fresh.read() == selected[100:]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("steps=", "invalid_steps"),
        ("steps=render,", "invalid_steps"),
        ("steps=render&steps=stems", "invalid_steps"),
        ("steps=render+midi_generation", "invalid_steps"),
        ("prefix=", "invalid_prefix"),
        ("prefix=/etc", "invalid_prefix"),
        ("prefix=..", "invalid_prefix"),
        ("prefix=stems/../..", "invalid_prefix"),
        ("prefix=%2E%2E%2Fx", "invalid_prefix"),
        ("prefix=a//b", "invalid_prefix"),
        ("prefix=a%5Cb", "invalid_prefix"),
        ("prefix=a%00b", "invalid_prefix"),
        ("prefix=a%0Ab", "invalid_prefix"),
        ("prefix=stems&prefix=./x", "invalid_prefix"),
    ],
)
async def test_a_bad_selection_is_a_422_on_the_manifest_and_the_zip(
    tree: AirTree, client: TestClient[Any, Any], query: str, code: str
) -> None:
    every_case(tree)
    for route in ("list", "zip"):
        detail = await error_detail(client, "GET", f"/api/air/export/{route}/run_1?{query}", 422)
        assert detail["error"] == code
    head = await client.head(f"/api/air/export/zip/run_1?{query}")
    assert head.status == 422
