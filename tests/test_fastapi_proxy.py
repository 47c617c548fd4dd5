"""The FastAPI proxy router, on a real FastAPI app under uvicorn, in front of a
real export-service process."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the 'fastapi' extra is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (dev extra) is not installed")

from fastapi import Depends, FastAPI, Header, HTTPException

from export_service.fastapi_proxy import (
    TIMED_OUT,
    UNAVAILABLE,
    _raw_id,
    export_proxy_router,
    signed_url_router,
)
from tests.helpers import AirTree, write
from tests.http_apps import Answer, request, uvicorn_app
from tests.live import LiveService, free_port, live_service

TOKEN = "s3cret-token"
SIGNING_SECRET = "signing-secret-of-32-characters!"
REPO = Path(__file__).resolve().parent.parent


def backend(service_url: str, token: str | None = TOKEN, **options: Any) -> FastAPI:
    """A scratch stand-in for the AIR backend, mounting the router as it
    mounted its own export router, with a route of its own."""
    app = FastAPI()
    router = export_proxy_router(service_url, token=token, **options)
    app.include_router(router, prefix="/api")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


@dataclass
class Setup:
    service: LiveService
    proxy: str
    tree: AirTree


@pytest.fixture
def setup(tree: AirTree, tmp_path: Path) -> Iterator[Setup]:
    write(tree.render / "r" / "mix.wav", os.urandom(3 * 1024 * 1024 + 17))
    write(tree.render / "r" / "stems" / "a b.wav", os.urandom(50_000))
    write(tree.param / "20261101_p" / "plan.json", b"{}")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[roots]\nrender = "{tree.render}"\nmidi_generation = "{tree.midi}"\n'
        f'param_generation = "{tree.param}"\n[links]\nfile = "{tree.links}"\n'
        f'[auth]\ntoken = "{TOKEN}"\nsigning_secret = "{SIGNING_SECRET}"\n'
    )
    with (
        live_service(["--config", str(config)]) as service,
        uvicorn_app(backend(service.base_url, links=True)) as proxy,
    ):
        yield Setup(service, proxy, tree)


AUTH = {"Authorization": f"Bearer {TOKEN}"}
PASSED_HEADERS = (
    "Content-Length",
    "Content-Type",
    "Content-Disposition",
    "ETag",
    "Last-Modified",
    "Accept-Ranges",
    "Content-Range",
)


def _same_answer(direct: Answer, proxied: Answer) -> None:
    assert proxied.status == direct.status
    assert proxied.body == direct.body
    for name in PASSED_HEADERS:
        assert proxied.headers.get(name) == direct.headers.get(name), name
    export_headers = {k: v for k, v in direct.headers.items() if k.lower().startswith("x-export-")}
    assert {k: proxied.headers.get(k) for k in export_headers} == export_headers


def test_zip_and_manifest_come_through_unchanged_with_the_token_added(setup: Setup) -> None:
    for path in ("/api/air/export/zip/r", "/api/air/export/list/r?param_run_id=p"):
        # The browser sends no token: the router adds the service's.
        headers = {"X-Request-ID": "req-123"}
        direct = request(setup.service.base_url, "GET", path, {**headers, **AUTH})
        proxied = request(setup.proxy, "GET", path, headers)
        assert direct.status == 200
        _same_answer(direct, proxied)
        assert proxied.headers["X-Request-ID"] == "req-123"
    assert proxied.json()["param_run_id"] == "p"  # type: ignore[index]
    assert request(setup.service.base_url, "GET", path).status == 401


def test_ranges_and_conditions_pass_through(setup: Setup) -> None:
    path = "/api/air/export/zip/r"
    full = request(setup.service.base_url, "GET", path, AUTH)
    etag = full.headers["ETag"]
    cases = [
        {"Range": "bytes=1000-2999"},
        {"Range": "bytes=-100", "If-Range": etag},
        {"Range": "bytes=0-9", "If-Range": '"another"'},
        {"Range": f"bytes={len(full.body)}-"},
        {"If-None-Match": etag},
        {"If-Match": '"another"'},
    ]
    for headers in cases:
        direct = request(setup.service.base_url, "GET", path, {**headers, **AUTH})
        proxied = request(setup.proxy, "GET", path, headers)
        _same_answer(direct, proxied)
    ranged = request(setup.proxy, "GET", path, {"Range": "bytes=1000-2999"})
    assert ranged.status == 206
    assert ranged.body == full.body[1000:3000]
    assert ranged.headers["Content-Range"] == f"bytes 1000-2999/{len(full.body)}"


def test_head_of_the_zip(setup: Setup) -> None:
    direct = request(setup.service.base_url, "HEAD", "/api/air/export/zip/r", AUTH)
    proxied = request(setup.proxy, "HEAD", "/api/air/export/zip/r")
    assert proxied.status == 200 and proxied.body == b""
    _same_answer(direct, proxied)


def test_links_get_and_put(setup: Setup) -> None:
    body = json.dumps({"param_run_id": "p"}).encode()
    put = request(
        setup.proxy,
        "PUT",
        "/api/air/export/links/r",
        {"Content-Type": "application/json"},
        body,
    )
    assert put.status == 200, put.body
    assert json.loads(setup.tree.links.read_text())["r"]["param_run_id"] == "p"
    got = request(setup.proxy, "GET", "/api/air/export/links/r")
    assert got.json()["param_run_id"] == "p"  # type: ignore[index]
    missing = request(setup.proxy, "GET", "/api/air/export/links/nope")
    assert missing.status == 404
    assert missing.json()["detail"]["error"] == "link_not_found"  # type: ignore[index]


@pytest.mark.parametrize(
    "run_id",
    ["..", "%2e%2e", "%2E%2E", "a%2Fb", "%00", "/r", "r/", "%2e%2e/r", "r%2F%2e%2e"],
)
def test_ids_reach_the_service_as_sent(setup: Setup, run_id: str) -> None:
    """Slashes in the id included, raw or escaped: the service sees what was sent."""
    for kind in ("zip", "list", "links"):
        path = f"/api/air/export/{kind}/{run_id}"
        direct = request(setup.service.base_url, "GET", path, AUTH)
        proxied = request(setup.proxy, "GET", path)
        assert direct.status == 422, (path, direct.body)
        assert direct.json()["detail"]["error"] == "invalid_run_id"  # type: ignore[index]
        _same_answer(direct, proxied)


@pytest.mark.slow
def test_a_browser_that_goes_away_closes_the_upstream_download(
    tree: AirTree, tmp_path: Path
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(64 * 1024 * 1024))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[roots]\nrender = "{tree.render}"\nmidi_generation = "{tree.midi}"\n'
        f'param_generation = "{tree.param}"\n[links]\nfile = "{tree.links}"\n'
    )
    with (
        live_service(["--config", str(config)]) as service,
        uvicorn_app(backend(service.base_url, token=None)) as proxy,
    ):
        host, port = proxy.removeprefix("http://").split(":")
        browser = socket.create_connection((host, int(port)))
        browser.sendall(b"GET /api/air/export/zip/r HTTP/1.1\r\nHost: t\r\n\r\n")
        assert browser.recv(65536).startswith(b"HTTP/1.1 200")
        browser.close()
        deadline = time.monotonic() + 10
        while not re.search(
            r"ZIP of r(: the client went away| cancelled \(client_gone)", service.output()
        ):
            assert time.monotonic() < deadline, service.output()
            time.sleep(0.05)
        metrics = request(service.base_url, "GET", "/metrics").body.decode()
        assert "export_zip_streams_in_flight 0.0" in metrics


def test_a_service_that_is_down_gives_a_json_503_for_a_person(tree: AirTree) -> None:
    with uvicorn_app(backend(f"http://127.0.0.1:{free_port()}")) as proxy:
        started = time.monotonic()
        answer = request(proxy, "GET", "/api/air/export/zip/r")
        assert time.monotonic() - started < 2
    assert answer.status == 503
    detail = answer.json()["detail"]  # type: ignore[index]
    assert detail["error"] == "export_service_unavailable"
    assert detail["message"] == UNAVAILABLE[2]  # a sentence, no exception repr
    assert int(answer.headers["Content-Length"]) == len(answer.body)


def test_a_service_that_does_not_answer_gives_a_json_504_after_the_first_byte_timeout() -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with uvicorn_app(backend(url, first_byte_timeout=0.5, idle_timeout=30)) as proxy:
            started = time.monotonic()
            answer = request(proxy, "GET", "/api/air/export/list/r")
            took = time.monotonic() - started
            health = request(proxy, "GET", "/health")
    assert 0.5 <= took < 2, took  # the first-byte limit alone, not two in a row
    assert answer.status == 504
    detail = answer.json()["detail"]  # type: ignore[index]
    assert detail == {"error": "export_service_timeout", "message": TIMED_OUT[2]}
    assert health.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/api/air/%65xport/zip/r",  # the route matches the decoded path
        "/api/%61ir/export/zip/r",
        "/api/air/export/%7Aip/r",
        "/%61pi/air/export/zip/r",
        "/api/air/export%2Fzip/r",  # decodes to the route; no raw "/" before "zip"
        "/api/air/export/zip%2Fr",  # the "/" before the id only as an escape
    ],
)
def test_escapes_in_the_prefix_reach_the_service_as_the_route_they_matched(
    setup: Setup, path: str
) -> None:
    direct = request(setup.service.base_url, "GET", "/api/air/export/zip/r", AUTH)
    proxied = request(setup.proxy, "GET", path)
    _same_answer(direct, proxied)


@pytest.mark.parametrize(
    ("raw_path", "run_id", "sent"),
    [
        (b"/api/air/%65xport/zip/a%20b", "a b", "a%20b"),
        (b"/api/air/export/zip/%2e%2e/x%2Fy", "../x/y", "%2e%2e/x%2Fy"),
        (b"/api/air/export/zip/", "", ""),
        (b"/api/air/export/zip%2Fr", "r", "r"),  # no raw "/" before the id: escaped again
        (None, "../a b/c", "..%2Fa%20b%2Fc"),  # no raw target in the scope
        (b"", "a b", "a%20b"),
    ],
)
def test_the_raw_id_is_the_end_of_the_raw_path_that_decodes_to_the_id(
    raw_path: bytes | None, run_id: str, sent: str
) -> None:
    scope: dict[str, object] = {"path_params": {"render_run_id": run_id}}
    if raw_path is not None:
        scope["raw_path"] = raw_path
    assert _raw_id(scope) == sent


class ScriptedService:
    """A stand-in service on a socket: records each request head and which
    connection it came on, and answers ``answer`` (or nothing, to hang)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.drop_requests_on: set[int] = set()
        self.heads: list[tuple[int, bytes]] = []
        self.closed: list[int] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            number += 1
            self.connections.append(connection)
            thread = threading.Thread(target=self._serve, args=(connection, number), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket, number: int) -> None:
        buffer = b""
        with connection:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = connection.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self.closed.append(number)
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                self.heads.append((number, head))
                if number in self.drop_requests_on:  # a kept-alive connection the
                    self.closed.append(number)  # service closes on the next request
                    return
                if self.answer is None:
                    continue
                connection.sendall(self.answer)

    def close(self) -> None:
        """Wake every thread (a shutdown ends a blocked accept or recv; a close
        alone would not) and wait for them, so no descriptor outlives the test."""
        for sock in (self.listener, *self.connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


MANIFEST_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


@asynccontextmanager
async def backend_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A backend with a lifespan of its own, as recent FastAPI apps have."""
    app.state.ready = True
    yield


@pytest.mark.parametrize("own_lifespan", [False, True])
def test_one_pooled_connection_is_kept_alive_and_closed_with_the_app(own_lifespan: bool) -> None:
    upstream = ScriptedService(MANIFEST_ANSWER)
    app = backend(upstream.url)
    if own_lifespan:  # include_router merges the router's lifespan into the app's own
        app = FastAPI(lifespan=backend_lifespan)
        app.include_router(export_proxy_router(upstream.url), prefix="/api")
    try:
        with uvicorn_app(app) as proxy:
            for _ in range(5):
                assert request(proxy, "GET", "/api/air/export/list/r").body == b"{}"
            assert {number for number, _ in upstream.heads} == {1}
            assert upstream.closed == []
        # The router's lifespan, merged into the app's by include_router, closed it.
        deadline = time.monotonic() + 5
        while upstream.closed != [1]:
            assert time.monotonic() < deadline, upstream.closed
            time.sleep(0.02)
    finally:
        upstream.close()


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_a_kept_alive_connection_the_service_dropped_is_retried_on_a_new_one(
    method: str,
) -> None:
    """A pooled connection the service closed as the request went out (a
    restart) costs the browser nothing: the request goes again on a new one."""
    upstream = ScriptedService(MANIFEST_ANSWER)
    try:
        with uvicorn_app(backend(upstream.url, links=True)) as proxy:
            path = "/api/air/export/links/r" if method == "PUT" else "/api/air/export/list/r"
            assert request(proxy, method, path, {}, b"{}").status == 200
            upstream.drop_requests_on.add(1)
            answer = request(proxy, method, path, {}, b"{}")
    finally:
        upstream.close()
    assert answer.status == 200 and answer.body == b"{}"
    assert [number for number, _ in upstream.heads] == [1, 1, 2]


def test_the_browsers_address_is_appended_to_x_forwarded_for() -> None:
    upstream = ScriptedService(MANIFEST_ANSWER)
    try:
        through_nginx = {"X-Forwarded-For": "203.0.113.7"}
        with uvicorn_app(backend(upstream.url), proxy_headers=False) as proxy:
            request(proxy, "GET", "/api/air/export/list/r?param_run_id=%20p")
            request(proxy, "GET", "/api/air/export/list/r", through_nginx)
        # uvicorn's default: the client is taken from a local proxy's header.
        with uvicorn_app(backend(upstream.url)) as proxy:
            request(proxy, "GET", "/api/air/export/list/r", through_nginx)
    finally:
        upstream.close()
    (_, first), (_, second), (_, third) = upstream.heads
    assert first.startswith(b"GET /api/air/export/list/r?param_run_id=%20p HTTP/1.1\r\n")
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in first
    assert b"\r\nX-Forwarded-For: 203.0.113.7, 127.0.0.1\r\n" in second
    assert f"\r\nAuthorization: Bearer {TOKEN}\r\n".encode() in second
    assert b"\r\nX-Forwarded-For: 203.0.113.7\r\n" in third


def test_a_download_that_stalls_is_cut_after_the_idle_timeout() -> None:
    """Headers and part of the body, then nothing: the browser sees a short
    transfer (never a complete-looking one) once idle_timeout has passed."""
    stalled = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 2_000_000
    upstream = ScriptedService(stalled)
    try:
        with uvicorn_app(backend(upstream.url, idle_timeout=0.5)) as proxy:
            started = time.monotonic()
            with pytest.raises(http.client.IncompleteRead):
                request(proxy, "GET", "/api/air/export/zip/r")
            assert time.monotonic() - started < 5
    finally:
        upstream.close()


def test_the_links_routes_are_off_unless_asked_for_and_guarded_as_asked(
    setup: Setup,
) -> None:
    with uvicorn_app(backend(setup.service.base_url)) as plain:
        assert request(plain, "GET", "/api/air/export/links/r").status == 404
        put = request(plain, "PUT", "/api/air/export/links/r", {}, b'{"param_run_id": "p"}')
        assert put.status in (404, 405)
        paths = request(plain, "GET", "/openapi.json").json()["paths"]  # type: ignore[index]
        assert sorted(paths) == [
            "/api/air/export/list/{render_run_id}",
            "/api/air/export/zip/{render_run_id}",
            "/health",
        ]
    assert not setup.tree.links.exists()

    def admin_only(x_admin: str = Header("")) -> None:
        if x_admin != "yes":
            raise HTTPException(403, "admins only")

    guarded = backend(setup.service.base_url, links=True, links_dependencies=[Depends(admin_only)])
    with uvicorn_app(guarded) as proxy:
        body = b'{"param_run_id": "p"}'
        refused = request(proxy, "PUT", "/api/air/export/links/r", {}, body)
        assert refused.status == 403
        assert not setup.tree.links.exists()
        allowed = request(proxy, "PUT", "/api/air/export/links/r", {"X-Admin": "yes"}, body)
        assert allowed.status == 200
        assert request(proxy, "GET", "/api/air/export/zip/r").status == 200  # unguarded


def test_the_routes_are_in_the_backends_openapi_with_the_services_schemas(setup: Setup) -> None:
    document = request(setup.proxy, "GET", "/openapi.json").json()
    paths = document["paths"]  # type: ignore[index]
    assert set(paths["/api/air/export/list/{render_run_id}"]) == {"get", "head"}
    assert set(paths["/api/air/export/zip/{render_run_id}"]) == {"get", "head"}
    assert set(paths["/api/air/export/links/{render_run_id}"]) == {"get", "put"}
    schemas = document["components"]["schemas"]  # type: ignore[index]
    assert {"ExportManifest", "ExportFile", "ErrorBody", "Link"} <= set(schemas)
    manifest = paths["/api/air/export/list/{render_run_id}"]["get"]["responses"]["200"]
    assert manifest["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ExportManifest"
    }
    for path in ("/api/air/export/list/{render_run_id}", "/api/air/export/zip/{render_run_id}"):
        for method in ("get", "head"):
            query = [p["name"] for p in paths[path][method]["parameters"] if p["in"] == "query"]
            assert query == ["param_run_id", "steps", "prefix"]
    assert request(setup.proxy, "GET", "/docs").status == 200


def test_a_selection_passes_through_as_sent(setup: Setup) -> None:
    """steps and prefix (repeated, with a trailing / and an escaped space)
    reach the service as the browser sent them: the same manifest, the same
    selected ZIP, name and ETag; a bad one is the service's 422."""
    write(setup.tree.render / "r" / "stems2" / "x.wav", b"not selected")
    query = "?param_run_id=p&steps=render&steps=param_generation&prefix=stems/&prefix=plan.json"
    query += "&prefix=a%20b"
    for path in ("/api/air/export/list/r" + query, "/api/air/export/zip/r" + query):
        direct = request(setup.service.base_url, "GET", path, AUTH)
        proxied = request(setup.proxy, "GET", path)
        assert direct.status == 200
        _same_answer(direct, proxied)
    manifest = request(setup.proxy, "GET", "/api/air/export/list/r" + query).json()
    assert [file["rel_path"] for file in manifest["files"]] == [  # type: ignore[index]
        "20261101_p/plan.json",
        "r/stems/a b.wav",
    ]
    assert proxied.headers["Content-Disposition"] == (
        'attachment; filename="export_r_render+param_generation_a b+2.zip"'
    )
    bad = request(setup.proxy, "GET", "/api/air/export/zip/r?prefix=../r")
    assert bad.status == 422
    assert bad.json()["detail"]["error"] == "invalid_prefix"  # type: ignore[index]


def test_whitespace_around_the_ids_means_what_it_meant_to_the_original(setup: Setup) -> None:
    plain = request(setup.proxy, "GET", "/api/air/export/list/r?param_run_id=p")
    padded = request(setup.proxy, "GET", "/api/air/export/list/%20r%20?param_run_id=%20p")
    assert padded.status == 200 and padded.body == plain.body
    blank = request(setup.proxy, "GET", "/api/air/export/list/r?param_run_id=%20")
    assert blank.status == 200
    assert blank.json()["param_run_id"] is None  # type: ignore[index]


def test_x_accel_redirect_only_for_requests_that_came_through_the_recipes_nginx(
    setup: Setup,
) -> None:
    app = backend(setup.service.base_url, accel_redirect_prefix="/_export_service")
    nginx = {"X-Export-Accel": "nginx"}
    with uvicorn_app(app) as proxy:
        handed = request(proxy, "GET", "/api/air/export/zip/%20a%20b?param_run_id=p", nginx)
        assert handed.status == 200 and handed.body == b""
        assert handed.headers["X-Accel-Redirect"] == (
            "/_export_service/api/air/export/zip/a%20b?param_run_id=p"
        )
        for bad in ("%2e%2e", "..", "a%2Fb", "%20"):
            refused = request(proxy, "GET", f"/api/air/export/zip/{bad}", nginx)
            assert refused.status == 422, bad
            assert "X-Accel-Redirect" not in refused.headers
            assert refused.json()["detail"]["error"] == "invalid_run_id"  # type: ignore[index]
        # Reached directly (development, no nginx): the ZIP itself, never an empty 200.
        direct = request(setup.service.base_url, "GET", "/api/air/export/zip/r", AUTH)
        for headers in ({}, {"X-Export-Accel": "other"}):
            streamed = request(proxy, "GET", "/api/air/export/zip/r", headers)
            assert "X-Accel-Redirect" not in streamed.headers
            _same_answer(direct, streamed)
            assert len(streamed.body) > 3_000_000


# Run inside the light install's venv: the router (driven as an ASGI app, so
# no server is needed there) and the links helpers, against a real service.
LIGHT_SCRIPT = """
import asyncio, importlib.util, json, os, sys

for server_only in ("zipstream", "isal", "prometheus_client"):
    assert importlib.util.find_spec(server_only) is None, server_only + " is installed"

from fastapi import FastAPI
from export_service.fastapi_proxy import export_proxy_router
from export_service.links import get_param_for_render, link_param_to_render
from export_service.signed_urls import sign_url

# The router relays with aiohttp's client, never loading its server.
assert not [name for name in sys.modules if name.startswith("aiohttp.web")], "aiohttp.web loaded"

link_param_to_render("r", "p")
assert get_param_for_render(" r ") == "p"
signed = sign_url("/api/air/export/zip/r?param_run_id=p", 60, sys.argv[3])

app = FastAPI()
app.include_router(export_proxy_router(sys.argv[1], token=sys.argv[2]), prefix="/api")

async def call(scope, messages):
    sent = []
    async def receive():
        return messages.pop(0) if messages else await asyncio.Event().wait()
    async def send(message):
        sent.append(message)
    task = asyncio.ensure_future(app(scope, receive, send))
    while not task.done() and not any(
        m["type"] in ("lifespan.startup.complete", "lifespan.shutdown.complete")
        or (m["type"] == "http.response.body" and not m.get("more_body"))
        for m in sent
    ):
        await asyncio.sleep(0.01)
    task.cancel()
    return sent

async def main():
    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await call(dict(lifespan), [{"type": "lifespan.startup"}])
    answers = {}
    for kind in ("list", "zip"):
        path = f"/api/air/export/{kind}/r"
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": [(b"host", b"backend")],
            "client": ("192.0.2.1", 1), "server": ("backend", 80), "state": {},
        }
        sent = await call(scope, [{"type": "http.request", "body": b"", "more_body": False}])
        status = sent[0]["status"]
        body = b"".join(m.get("body", b"") for m in sent[1:])
        answers[kind] = [status, len(body), json.loads(body) if kind == "list" else None]
    await call(dict(lifespan), [{"type": "lifespan.shutdown"}])
    answers["signed"] = signed
    print(json.dumps(answers))

asyncio.run(main())
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # pip may take its 600 s, then 60 s for the script
def test_the_light_install_runs_the_router_and_the_helpers_without_the_server(
    setup: Setup, tmp_path: Path
) -> None:
    """``pip install ./clients/backend`` in a clean venv: what it brings is
    enough for the router and the links helpers, and none of the server's
    own dependencies come with it."""
    # Built from a copy, so that the build's egg-info stays out of the checkout.
    source = tmp_path / "source"
    shutil.copytree(REPO / "export_service", source / "export_service")
    shutil.copytree(REPO / "clients" / "backend", source / "clients" / "backend")
    venv = tmp_path / "light"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source / "clients" / "backend")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if installed.returncode != 0:
        pytest.skip(f"pip could not install the light install here: {installed.stderr[-400:]}")
    frozen = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for server_only in ("zipstream-ng", "isal", "prometheus-client", "aiofiles", "uvicorn"):
        assert server_only not in frozen
    env = {**os.environ, "EXPORT_SERVICE_LINKS_FILE": str(setup.tree.links)}
    env.pop("PYTHONPATH", None)
    ran = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            LIGHT_SCRIPT,
            setup.service.base_url,
            TOKEN,
            SIGNING_SECRET,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the checkout: only what the venv holds is importable
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    answers = json.loads(ran.stdout)
    direct = request(setup.service.base_url, "GET", "/api/air/export/zip/r", AUTH)
    assert answers["zip"][:2] == [200, len(direct.body)]
    status, _, manifest = answers["list"]
    assert status == 200
    assert manifest["param_run_id"] == "p"  # the link the helper wrote, read by the service
    # A URL signed in the light install is taken by the service without the token.
    signed = request(setup.service.base_url, "GET", answers["signed"])
    assert signed.status == 200
    assert signed.body == direct.body


def test_the_signed_url_route_mints_links_the_service_takes_without_the_token(
    setup: Setup,
) -> None:
    """The backend's optional route: guarded by its dependencies, it answers a
    signed URL of the service carrying the selection, which a client then
    fetches from the service directly."""

    def logged_in(x_user: str = Header("")) -> None:
        if not x_user:
            raise HTTPException(401, "log in")

    app = FastAPI()
    app.include_router(
        signed_url_router(
            SIGNING_SECRET,
            setup.service.base_url + "/",
            expires_in=120,
            dependencies=[Depends(logged_in)],
        ),
        prefix="/api",
    )
    with uvicorn_app(app) as backend_url:
        selection = "steps=render&prefix=stems%2Fa%20b.wav"
        path = f"/api/air/signed-export/r?param_run_id=p&{selection}&other=1"
        assert request(backend_url, "GET", path).status == 401
        before = int(time.time())
        minted = request(backend_url, "GET", path, {"X-User": "u"})
        assert minted.status == 200
        assert minted.headers["Cache-Control"] == "no-store"
        answer = minted.json()
        assert isinstance(answer, dict)
        url, expires_at = answer["url"], answer["expires_at"]
        assert before + 120 <= expires_at <= int(time.time()) + 120
        target = url.removeprefix(setup.service.base_url)
        assert target.startswith(f"/api/air/export/zip/r?param_run_id=p&{selection}&expires=")
        assert "other" not in target
        direct = request(
            setup.service.base_url, "GET", f"/api/air/export/zip/r?param_run_id=p&{selection}", AUTH
        )
        fetched = request(setup.service.base_url, "GET", target)
        assert fetched.status == 200
        assert fetched.body == direct.body
        with zipfile.ZipFile(io.BytesIO(fetched.body)) as archive:
            assert archive.namelist() == ["render/r/stems/a b.wav"]
        changed = request(
            setup.service.base_url, "GET", target.replace("param_run_id=p", "param_run_id=q")
        )
        assert changed.status == 403
        listed = request(backend_url, "GET", "/api/air/signed-export/r?kind=list", {"X-User": "u"})
        manifest_url = listed.json()["url"]  # type: ignore[index]
        manifest = request(
            setup.service.base_url, "GET", manifest_url.removeprefix(setup.service.base_url)
        )
        assert manifest.status == 200
        assert manifest.json()["render_run_id"] == "r"  # type: ignore[index]
        too_long = "r?" + "&".join(f"prefix=p{i}" + "y" * 130 for i in range(60))
        for bad, code in (
            ("r?kind=tar", "invalid_kind"),
            ("..", "invalid_run_id"),
            (too_long, "url_too_long"),
        ):
            refused = request(backend_url, "GET", "/api/air/signed-export/" + bad, {"X-User": "u"})
            assert refused.status == 422
            assert refused.json()["detail"]["error"] == code  # type: ignore[index]
    with pytest.raises(ValueError, match="at least 32"):
        signed_url_router("short", "")
    with pytest.raises(ValueError, match="expires_in"):
        signed_url_router(SIGNING_SECRET, "", expires_in=0)
