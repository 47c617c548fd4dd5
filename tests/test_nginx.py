"""The nginx recipes (deploy/nginx/*.conf), run as they are by a real nginx in
front of a real export-service process and, for X-Accel-Redirect, a real
FastAPI backend under uvicorn: the ZIP comes through, and CORS survives each
path (the browser's Origin is answered with Access-Control-Allow-Origin for
an allowed origin only, the headers a download page reads are exposed, the
preflight is answered)."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the 'fastapi' extra is not installed")
pytest.importorskip("uvicorn", reason="uvicorn (dev extra) is not installed")

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from bench.harness import nginx_server
from export_service.fastapi_proxy import export_proxy_router, signed_url_router
from export_service.http.cors import EXPOSED_HEADERS
from tests.helpers import AirTree, write
from tests.http_apps import Answer, request, uvicorn_app
from tests.live import LiveService, live_service

pytestmark = pytest.mark.slow  # each test starts nginx

RECIPES = Path(__file__).resolve().parent.parent / "deploy" / "nginx"
TOKEN = "nginx-test-token"
ALLOWED = "https://air.example.com"  # in the recipes' pattern and the backend's allow_origins
OTHER = "https://evil.example.net"
EXPOSED = {"content-disposition", "content-length", "etag", "accept-ranges", "content-range"}
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers")


def _nginx() -> str:
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not found:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    return str(found)


def recipe(name: str, service: str, backend: str = "127.0.0.1:8000") -> str:
    """deploy/nginx/<name> as docs/how-to/nginx.md tells to use it: the token put in,
    the addresses those of this test's processes."""
    text = (RECIPES / name).read_text()
    return (
        text.replace("<token>", TOKEN)
        .replace("127.0.0.1:8080", service.removeprefix("http://"))
        .replace("127.0.0.1:8000", backend.removeprefix("http://"))
    )


def accel_backend(service: str) -> FastAPI:
    """A scratch AIR backend: its CORSMiddleware allows its front end's
    origin, and it mounts the proxy router as docs/how-to/nginx.md says, with
    ``accel_redirect_prefix`` for deploy/nginx/x-accel.conf."""
    app = FastAPI()
    app.add_middleware(
        CORSMiddleware,
        allow_origins=[ALLOWED],
        allow_credentials=True,  # the page sends the backend's session cookie
        allow_methods=["GET", "HEAD"],
        allow_headers=["Range", "If-Range", "If-None-Match"],
    )
    router = export_proxy_router(service, token=TOKEN, accel_redirect_prefix="/_export_service")
    app.include_router(router, prefix="/api")
    return app


@dataclass
class Paths:
    service: LiveService
    plain: str  # nginx with export-service.conf
    accel: str  # nginx with x-accel.conf
    backend: str  # the backend itself, as a front end in development calls it


def _service_env(tree: AirTree, **settings: str) -> dict[str, str]:
    """The service's config as an ops person sets it in a container: the
    environment (the tree's roots and links file, the token), plus ``settings``."""
    return {
        "EXPORT_SERVICE_ROOTS_RENDER": str(tree.render),
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION": str(tree.midi),
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": str(tree.param),
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
        "EXPORT_SERVICE_AUTH_TOKEN": TOKEN,
        **settings,
    }


@contextmanager
def _paths(tree: AirTree, **settings: str) -> Iterator[Paths]:
    """The service configured as an ops person sets it in a container (the
    environment, plus ``settings``), the backend, and an nginx per recipe."""
    binary = _nginx()
    env = _service_env(tree, **settings)
    with (
        live_service(env=env) as service,
        uvicorn_app(accel_backend(service.base_url)) as backend,
        nginx_server(binary, recipe("export-service.conf", service.base_url)) as plain,
        nginx_server(binary, recipe("x-accel.conf", service.base_url, backend)) as accel,
    ):
        yield Paths(service, plain, accel, backend)


@pytest.fixture
def paths(tree: AirTree) -> Iterator[Paths]:
    write(tree.render / "r" / "mix.wav", os.urandom(2 * 1024 * 1024 + 5))
    write(tree.render / "r" / "stems" / "a b.wav", os.urandom(40_000))
    with _paths(tree) as paths:
        yield paths


ZIP = "/api/air/export/zip/r"


def _exposed(answer: Answer) -> set[str]:
    value = answer.headers.get("Access-Control-Expose-Headers", "")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def _direct(paths: Paths, headers: dict[str, str] | None = None) -> Answer:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return request(paths.service.base_url, "GET", ZIP, {**auth, **(headers or {})})


@pytest.mark.parametrize("path", ["plain", "accel"])
def test_an_allowed_origin_gets_the_zip_with_cors_headers(paths: Paths, path: str) -> None:
    base = getattr(paths, path)
    direct = _direct(paths)
    answer = request(base, "GET", ZIP, {"Origin": ALLOWED})
    assert (answer.status, answer.body) == (200, direct.body)
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert _exposed(answer) >= EXPOSED
    assert "Origin" in answer.headers.get_all("Vary", [])
    assert answer.headers["Content-Disposition"] == direct.headers["Content-Disposition"]
    assert answer.headers.get_all("Access-Control-Allow-Origin") == [ALLOWED]  # one, not two
    if path == "accel":  # the backend's answer, copied through the redirect
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"

    ranged = request(base, "GET", ZIP, {"Origin": ALLOWED, "Range": "bytes=1000-1999"})
    assert (ranged.status, ranged.body) == (206, direct.body[1000:2000])
    assert ranged.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert ranged.headers["Content-Range"] == f"bytes 1000-1999/{len(direct.body)}"

    head = request(base, "HEAD", ZIP, {"Origin": ALLOWED})
    assert head.status == 200 and head.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert head.headers["Content-Length"] == str(len(direct.body))


@pytest.mark.parametrize("path", ["plain", "accel"])
def test_another_origin_gets_no_cors_header(paths: Paths, path: str) -> None:
    """The browser then refuses the answer to that page; curl (no Origin)
    gets the ZIP as before."""
    base = getattr(paths, path)
    answer = request(base, "GET", ZIP, {"Origin": OTHER})
    assert answer.status == 200
    assert "Access-Control-Allow-Origin" not in answer.headers
    without = request(base, "GET", ZIP)
    assert without.status == 200 and "Access-Control-Allow-Origin" not in without.headers


@pytest.mark.parametrize("path", ["plain", "accel"])
def test_the_preflight_is_answered(paths: Paths, path: str) -> None:
    """A page that resumes sends Range, which makes the browser ask first."""
    base = getattr(paths, path)
    preflight = {
        "Origin": ALLOWED,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "range, if-range",
    }
    answer = request(base, "OPTIONS", ZIP, preflight)
    assert answer.status in (200, 204), answer.body
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "GET" in answer.headers["Access-Control-Allow-Methods"]
    allowed_headers = answer.headers["Access-Control-Allow-Headers"].lower()
    assert "range" in allowed_headers and "if-range" in allowed_headers

    refused = request(base, "OPTIONS", ZIP, {**preflight, "Origin": OTHER})
    assert "Access-Control-Allow-Origin" not in refused.headers


@pytest.mark.parametrize("path", ["plain", "accel"])
@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/api/air/export/zip/%2e%2e", "invalid_run_id"),  # refused by the backend on accel
        (ZIP + "?param_run_id=a%2Fb", "invalid_param_run_id"),  # by the service on both
    ],
)
def test_an_error_carries_the_cors_header_so_the_page_can_read_it(
    paths: Paths, path: str, target: str, code: str
) -> None:
    answer = request(getattr(paths, path), "GET", target, {"Origin": ALLOWED})
    assert answer.status == 422
    body = answer.json()
    assert isinstance(body, dict) and body["detail"]["error"] == code
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED


def test_the_accel_route_without_nginx_streams_the_zip_itself(paths: Paths) -> None:
    """The front end calling the backend directly (development): no
    X-Export-Accel header, so the router streams the ZIP instead of handing
    out an X-Accel-Redirect nobody follows (an empty 200)."""
    answer = request(paths.backend, "GET", ZIP, {"Origin": ALLOWED})
    assert answer.status == 200
    assert "X-Accel-Redirect" not in answer.headers
    assert answer.body == _direct(paths).body
    assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
    # A client cannot forge the header through nginx: the recipe sets it.
    forged = request(paths.accel, "GET", ZIP, {"X-Export-Accel": "something"})
    assert forged.status == 200 and forged.body == _direct(paths).body


@pytest.fixture
def shared_paths(tree: AirTree) -> Iterator[Paths]:
    """As ``paths``, but the service trusts nginx (127.0.0.1) as a proxy and
    gives each client one ZIP at a time: what the recipes' X-Forwarded-For
    is for."""
    write(tree.render / "r" / "big.wav", os.urandom(32 * 1024 * 1024))
    with _paths(
        tree,
        EXPORT_SERVICE_SERVER_TRUSTED_PROXIES="127.0.0.1",
        EXPORT_SERVICE_LIMITS_MAX_ZIPS_PER_CLIENT="1",
    ) as paths:
        yield paths


def _held_download(base_url: str, browser: str) -> socket.socket:
    """A ZIP download from the loopback address ``browser`` that reads the
    answer's head and then nothing, so it keeps its slot."""
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), source_address=(browser, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(f"GET {ZIP} HTTP/1.1\r\nHost: air\r\n\r\n".encode())
    assert sock.recv(64 * 1024).startswith(b"HTTP/1.1 200")
    return sock


def _status_from(base_url: str, browser: str) -> int:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), source_address=(browser, 0)) as sock:
        sock.sendall(f"HEAD {ZIP} HTTP/1.1\r\nHost: air\r\nConnection: close\r\n\r\n".encode())
        return int(sock.recv(64 * 1024).split(b" ", 2)[1])


@pytest.mark.parametrize("path", ["plain", "accel"])
def test_each_browser_behind_nginx_has_its_own_download_share(
    shared_paths: Paths, path: str
) -> None:
    """The recipes pass the browser's address on in X-Forwarded-For: behind
    nginx, limits.max_zips_per_client counts browsers, not nginx (without the
    header every browser would share nginx's one slot). Browsers are told
    apart by their loopback source address (127.0.0.2, 127.0.0.3)."""
    base = getattr(shared_paths, path)
    held = _held_download(base, "127.0.0.2")
    try:
        assert _status_from(base, "127.0.0.2") == 429  # its one slot is taken
        assert _status_from(base, "127.0.0.3") == 200  # another browser's is free
    finally:
        held.close()


@pytest.fixture
def service_cors_paths(tree: AirTree) -> Iterator[Paths]:
    """As ``paths``, with the service's own CORS on too, for the page's origin
    and another: nginx (or the backend) must still be the one place that
    decides."""
    write(tree.render / "r" / "mix.wav", os.urandom(200_000))
    with _paths(tree, EXPORT_SERVICE_CORS_ALLOWED_ORIGINS=f"{ALLOWED},{OTHER}") as paths:
        yield paths


@pytest.mark.parametrize("path", ["plain", "accel"])
def test_the_service_answering_cors_too_still_gives_one_header(
    service_cors_paths: Paths, path: str
) -> None:
    """Two Access-Control-Allow-Origin headers and the browser refuses the
    answer: the recipes drop the service's, whatever its [cors] says."""
    direct = _direct(service_cors_paths, {"Origin": OTHER})
    assert direct.headers["Access-Control-Allow-Origin"] == OTHER  # the service's own CORS is on
    base = getattr(service_cors_paths, path)
    for target in (ZIP, ZIP + "?param_run_id=a%2Fb"):
        answer = request(base, "GET", target, {"Origin": ALLOWED})
        assert answer.headers.get_all("Access-Control-Allow-Origin") == [ALLOWED]
        assert len(answer.headers.get_all("Access-Control-Expose-Headers", [])) == 1
    refused = request(base, "GET", ZIP, {"Origin": OTHER})
    assert refused.status == 200
    assert (
        "Access-Control-Allow-Origin" not in refused.headers
    )  # nginx's decision, not the service's


@pytest.mark.parametrize("name", ["export-service.conf", "x-accel.conf"])
def test_the_recipes_expose_what_the_service_exposes(name: str) -> None:
    """One list: the headers a page may read are the same however CORS is
    answered (by nginx here, by the service with [cors])."""
    lines = (RECIPES / name).read_text().splitlines()
    (line,) = [line for line in lines if "add_header Access-Control-Expose-Headers" in line]
    listed = line.split('"')[1].split(", ")
    assert listed == list(EXPOSED_HEADERS)


SIGNING_SECRET = "nginx-test-signing-secret-of-32-chars"


def test_behind_the_plain_recipe_without_its_token_line_signed_links_are_the_way_in(
    tree: AirTree,
) -> None:
    """docs/how-to/nginx.md, "With signed links": the plain recipe with its
    ``Authorization`` line dropped, in the backend's server block beside the
    backend's own ``location /``. The backend's minting route (outside
    /api/air/export/) reaches the backend through nginx; the link it mints
    (a path, for this same origin) reaches the service through the recipe
    and gets the selection; the same URL unsigned gets 401, since nginx no
    longer lends its token to every browser."""
    binary = _nginx()
    write(tree.render / "r" / "mix.wav", os.urandom(300_000))
    write(tree.render / "r" / "stems" / "a b.wav", os.urandom(40_000))
    env = _service_env(tree, EXPORT_SERVICE_AUTH_SIGNING_SECRET=SIGNING_SECRET)
    backend = FastAPI()
    backend.include_router(signed_url_router(SIGNING_SECRET, ""), prefix="/api")
    with live_service(env=env) as service, uvicorn_app(backend) as backend_url:
        plain = recipe("export-service.conf", service.base_url)
        (token_line,) = [line for line in plain.splitlines() if "Authorization" in line]
        server = plain.replace(token_line + "\n", "") + (
            f"location / {{ proxy_pass {backend_url}; }}\n"
        )
        with nginx_server(binary, server) as front:
            minted = request(front, "GET", "/api/air/signed-export/r?steps=render&prefix=stems")
            assert minted.status == 200, minted.body
            link = minted.json()["url"]  # type: ignore[index]
            assert link.startswith("/api/air/export/zip/r?steps=render&prefix=stems&expires=")
            signed = request(front, "GET", link)
            assert signed.status == 200
            assert signed.headers["Content-Disposition"] == (
                'attachment; filename="export_r_render_stems.zip"'
            )
            assert b"render/r/stems/a b.wav" in signed.body and b"mix.wav" not in signed.body
            assert request(front, "GET", link.split("?")[0]).status == 401
            assert request(front, "GET", link.replace("stems", "mix.wav")).status == 403
