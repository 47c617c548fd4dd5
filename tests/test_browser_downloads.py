"""A real browser (headless Chromium) downloading from the service on another
origin, as a download page does: a page on http://127.0.0.1:<A> fetches the
ZIP from the service on http://127.0.0.1:<B>, reads its bytes with progress,
its file name and size, sends the bearer token (a preflight), resumes a cut
download with Range and If-Range, reads an error's JSON body; a page of an
origin not allowed cannot read anything; and the issue's scenario: a link
minted by a FastAPI backend, to the stems only, cut and resumed. One Chromium for the module
(tests/browser.py); skipped, saying "chromium not installed", without one."""

from __future__ import annotations

import hashlib
import os
import re
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from export_service.http.access import runner_options
from export_service.http.app import create_app
from tests.browser import Chromium, PageError, PageOrigin, chromium, page_origin
from tests.conftest import AirTree, write

TOKEN = "browser-test-token"
ZIP = "/api/air/export/zip/r"

# Reads the whole answer through a stream reader, counting bytes as a
# progress bar would, and what the page can read of its headers.
DOWNLOAD = """
const headers = args.token ? {Authorization: "Bearer " + args.token} : {};
const response = await fetch(args.url, {headers, cache: "no-store"});
const total = Number(response.headers.get("Content-Length"));
const reader = response.body.getReader();
const chunks = [];
const progress = [];
let received = 0;
for (;;) {
  const {done, value} = await reader.read();
  if (done) break;
  chunks.push(value);
  received += value.length;
  progress.push(Math.floor(100 * received / total));
}
const read = name => response.headers.get(name);
return {
  status: response.status,
  total,
  received,
  progress,
  disposition: read("Content-Disposition"),
  etag: read("ETag"),
  acceptRanges: read("Accept-Ranges"),
  files: read("X-Export-Files"),
  requestId: read("X-Request-ID"),
  sha256: await sha256(await new Blob(chunks).arrayBuffer()),
};
"""

# Cut after args.cut bytes (AbortController), then the rest with Range and
# If-Range: the two pieces put together.
RESUME = """
const controller = new AbortController();
const first = await fetch(args.url, {signal: controller.signal, cache: "no-store"});
const etag = first.headers.get("ETag");
const reader = first.body.getReader();
const parts = [];
let got = 0;
while (got < args.cut) {
  const {done, value} = await reader.read();
  if (done) break;
  parts.push(value);
  got += value.length;
}
controller.abort();
let aborted = "";
try { await reader.read(); } catch (error) { aborted = error.name; }
const head = (await new Blob(parts).arrayBuffer()).slice(0, args.cut);
const rest = await fetch(args.url, {
  headers: {Range: "bytes=" + args.cut + "-", "If-Range": etag},
  cache: "no-store",
});
const tail = await rest.arrayBuffer();
const whole = await new Blob([head, tail]).arrayBuffer();
return {
  aborted,
  status: rest.status,
  contentRange: rest.headers.get("Content-Range"),
  size: whole.byteLength,
  sha256: await sha256(whole),
};
"""

# An error's status and JSON body, as the page sees them.
ERROR = """
const headers = args.token ? {Authorization: "Bearer " + args.token} : {};
const response = await fetch(args.url, {headers, cache: "no-store"});
return {status: response.status, body: await response.json()};
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as running:
        yield running


@pytest.fixture
async def page() -> AsyncIterator[PageOrigin]:
    async with page_origin() as pages:
        yield pages


ServiceFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def service(tree: AirTree) -> AsyncIterator[ServiceFactory]:
    """Starts the service (on its own port: another origin than the pages')
    with the given config sections; its base URL."""
    write(tree.render / "r" / "mix.wav", os.urandom(3 * 1024 * 1024))
    write(tree.render / "r" / "stems" / "bass.wav", os.urandom(200_000))
    write(tree.midi / "20261101_r" / "song.mid", b"MThd" * 100)
    servers: list[TestServer] = []

    async def start(clock: Callable[[], float] = time.time, **sections: dict[str, Any]) -> str:
        server = TestServer(create_app(tree.settings(**sections), clock=clock), host="127.0.0.1")
        await server.start_server(**runner_options(server.app))
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def _direct(base: str, token: str = "") -> tuple[bytes, CIMultiDictProxy[str]]:
    """The ZIP and its headers as the service sends them, outside the browser."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session, session.get(base + ZIP, headers=headers) as got:
        assert got.status == 200
        return await got.read(), got.headers


async def test_an_allowed_page_downloads_the_zip_with_progress(
    browser: Chromium, page: PageOrigin, service: ServiceFactory
) -> None:
    base = await service(cors={"allowed_origins": [page.origin]})
    expected, headers = await _direct(base)
    result = await page.run(browser, DOWNLOAD, {"url": base + ZIP})
    assert result["status"] == 200
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()
    assert result["total"] == result["received"] == len(expected)
    assert result["disposition"] == 'attachment; filename="export_r.zip"'
    assert result["etag"] == headers["ETag"]
    assert result["acceptRanges"] == "bytes"
    assert result["files"] == "3"
    assert result["requestId"]
    assert len(result["progress"]) > 1 and result["progress"][-1] == 100


async def test_with_the_bearer_token_after_a_preflight(
    browser: Chromium, page: PageOrigin, service: ServiceFactory
) -> None:
    """The Authorization header makes the browser ask first, without the
    token: the preflight is answered before the token is checked. Without
    the token the page reads the 401's JSON body."""
    base = await service(cors={"allowed_origins": [page.origin]}, auth={"token": TOKEN})
    expected, _ = await _direct(base, TOKEN)
    result = await page.run(browser, DOWNLOAD, {"url": base + ZIP, "token": TOKEN})
    assert result["status"] == 200
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()
    denied = await page.run(browser, ERROR, {"url": base + ZIP})
    assert denied["status"] == 401
    assert denied["body"]["detail"]["error"] == "unauthorized"


async def test_a_cut_download_resumed_by_the_page_is_the_whole_zip(
    browser: Chromium, page: PageOrigin, service: ServiceFactory
) -> None:
    base = await service(cors={"allowed_origins": [page.origin]})
    expected, _ = await _direct(base)
    cut = 1_000_000
    result = await page.run(browser, RESUME, {"url": base + ZIP, "cut": cut})
    assert result["aborted"] == "AbortError"
    assert result["status"] == 206
    assert result["contentRange"] == f"bytes {cut}-{len(expected) - 1}/{len(expected)}"
    assert result["size"] == len(expected)
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()


async def test_an_error_body_is_readable(
    browser: Chromium, page: PageOrigin, service: ServiceFactory
) -> None:
    base = await service(cors={"allowed_origins": [page.origin]})
    result = await page.run(browser, ERROR, {"url": base + ZIP + "?param_run_id=a%2Fb"})
    assert result["status"] == 422
    assert result["body"]["detail"]["error"] == "invalid_param_run_id"


async def test_a_page_of_another_origin_cannot_read(
    browser: Chromium, page: PageOrigin, service: ServiceFactory
) -> None:
    """The service answers (curl would get the ZIP), but without its CORS
    headers the browser keeps the answer from the page: fetch fails."""
    async with page_origin() as other:
        base = await service(cors={"allowed_origins": [other.origin]})
        assert (await other.run(browser, ERROR, {"url": base + "/nope"}))["status"] == 404
    with pytest.raises(PageError, match="TypeError: Failed to fetch"):
        await page.run(browser, DOWNLOAD, {"url": base + ZIP})
    with pytest.raises(PageError, match="TypeError: Failed to fetch"):
        await page.run(browser, ERROR, {"url": base + "/nope"})


# The page snippet of docs/how-to/cors.md, as printed, with the page's fetch
# wrapped so that the first answer's body fails after args.cut bytes, as a
# dropped connection does.
DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "cors.md"
CUT_FIRST_ANSWER = """
const realFetch = window.fetch.bind(window);
const asked = [];
window.fetch = async (url, init) => {
  asked.push(init.headers);
  const response = await realFetch(url, init);
  if (asked.length > 1) return response;
  const reader = response.body.getReader();
  let passed = 0;
  const cut = new ReadableStream({async pull(controller) {
    if (passed >= args.cut) {
      await reader.cancel();
      controller.error(new TypeError("network error"));
      return;
    }
    const {done, value} = await reader.read();
    if (done) { controller.close(); return; }
    const piece = value.slice(0, args.cut - passed);
    passed += piece.length;
    controller.enqueue(piece);
  }});
  return new Response(cut, {status: response.status, headers: response.headers});
};
const progress = [];
const onProgress = (done, total) => progress.push([done, total]);
const {name, blob} = await download(args.url, args.token, onProgress);
return {
  name,
  size: blob.size,
  sha256: await sha256(await blob.arrayBuffer()),
  asked,
  last: progress[progress.length - 1],
};
"""


def _docs_snippet() -> str:
    text = DOCS_PAGE.read_text()
    (snippet,) = re.findall(r"```js\n(.*?)```", text, re.DOTALL)
    return str(snippet)


async def test_the_docs_download_snippet_resumes_a_cut_download(
    browser: Chromium, page: PageOrigin, service: ServiceFactory
) -> None:
    base = await service(cors={"allowed_origins": [page.origin]}, auth={"token": TOKEN})
    expected, headers = await _direct(base, TOKEN)
    cut = 700_000
    script = _docs_snippet() + CUT_FIRST_ANSWER
    result = await page.run(browser, script, {"url": base + ZIP, "token": TOKEN, "cut": cut})
    assert result["name"] == "export_r.zip"
    assert result["size"] == len(expected)
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()
    assert result["last"] == [len(expected), len(expected)]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert result["asked"] == [
        bearer,
        {**bearer, "Range": f"bytes={cut}-", "If-Range": headers["ETag"]},
    ]


# The front end's part of the scenario: ask the backend for a signed
# link to the stems only, then download it from the service (another origin)
# as RESUME does: cut after args.cut bytes, the rest with Range and If-Range.
MINT_THEN_RESUME = """
const asked = await fetch(args.backend + "/api/air/signed-export/r?steps=render&prefix=stems");
args.url = (await asked.json()).url;
""" + RESUME.replace(
    "return {",
    'return {url: args.url, disposition: first.headers.get("Content-Disposition"),',
)


async def test_a_backend_minted_link_to_the_stems_is_cut_and_resumed_by_a_page(
    browser: Chromium, page: PageOrigin, service: ServiceFactory, tree: AirTree
) -> None:
    """The issue's scenario end to end: a FastAPI backend under uvicorn
    mounts ``signed_url_router``; a page on a third origin asks it for a
    signed link to the render step's stems, downloads the ZIP from the
    service directly (the service wants a token, the page has none), is cut,
    and resumes; the bytes are the selection's ZIP. Once the link has
    expired the page reads the service's 410."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from export_service.fastapi_proxy import signed_url_router
    from tests.test_fastapi_proxy import uvicorn_app

    write(tree.render / "r" / "stems" / "drums.wav", os.urandom(2 * 1024 * 1024))
    secret = "browser-test-signing-secret-32chars"
    now = [time.time()]
    base = await service(
        clock=lambda: now[0],
        cors={"allowed_origins": [page.origin]},
        auth={"token": TOKEN, "signing_secret": secret},
    )
    backend = FastAPI()
    backend.add_middleware(CORSMiddleware, allow_origins=[page.origin])
    backend.include_router(signed_url_router(secret, base, expires_in=600), prefix="/api")
    with uvicorn_app(backend) as backend_url:
        cut = 500_000
        result = await page.run(browser, MINT_THEN_RESUME, {"backend": backend_url, "cut": cut})
    url = result["url"]
    assert url.startswith(base + ZIP + "?steps=render&prefix=stems&expires=")
    async with aiohttp.ClientSession() as session, session.get(url) as got:
        assert got.status == 200
        expected = await got.read()
    with zipfile.ZipFile(BytesIO(expected)) as archive:
        assert archive.namelist() == ["render/r/stems/bass.wav", "render/r/stems/drums.wav"]
    assert result["disposition"] == 'attachment; filename="export_r_render_stems.zip"'
    assert result["aborted"] == "AbortError"
    assert result["status"] == 206
    assert result["contentRange"] == f"bytes {cut}-{len(expected) - 1}/{len(expected)}"
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()
    # The backend signed with its own clock, after the service's `now` was
    # taken, maybe seconds later: the service's clock goes to the first
    # second after the one the URL's expiry names.
    expires = re.search(r"[?&]expires=(\d+)", url)
    assert expires is not None
    now[0] = int(expires[1]) + 1
    expired = await page.run(browser, ERROR, {"url": url})
    assert expired["status"] == 410
    assert expired["body"]["detail"]["error"] == "url_expired"
    tampered = await page.run(browser, ERROR, {"url": url.replace("stems", "stem")})
    assert tampered["status"] == 403
