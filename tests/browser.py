"""A real browser for tests: headless Chromium, and pages on an origin of their own.

- :func:`chromium` starts one headless Chromium (``/usr/bin/chromium``, or
  ``chromium`` / ``chromium-browser`` on PATH) with a throwaway profile, and
  stops it when the block ends; where it is missing the test is skipped,
  saying ``chromium not installed``. Meant for a module-scoped fixture: one
  browser for a test module, a tab per page.
- :func:`page_origin` serves test pages on ``http://127.0.0.1:<port>``, an
  origin apart from the service's. :meth:`PageOrigin.run` opens a tab on a
  page that runs a script (the body of an ``async`` function, with ``args``
  and a ``sha256(buffer)`` helper in scope), and returns what it returned:
  the page POSTs it to its own origin, which resolves the future the test
  awaits (the timeout is only a guard). A script that throws gives
  :class:`PageError` with the browser's message.

Usage::

    async with page_origin() as page:
        # ... the service, with page.origin in cors.allowed_origins ...
        result = await page.run(browser, "return (await fetch(args.url)).status;",
                                {"url": service_url})
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.live import wait_or_kill

_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser")
_STARTUP_GUARD = 60.0
_LISTENING = "DevTools listening on ws://"


def chromium_binary() -> str:
    """Chromium's path; skips the test, visibly, when there is none."""
    for candidate in _CANDIDATES:
        found = candidate if os.access(candidate, os.X_OK) else shutil.which(candidate)
        if found:
            return found
    pytest.skip("chromium not installed")


@dataclass
class Chromium:
    """A running headless Chromium, driven through its DevTools HTTP endpoint."""

    process: subprocess.Popen[str]
    devtools: str  # http://127.0.0.1:<port>
    output: list[str] = field(default_factory=list)  # its stderr, for failures

    async def open_tab(self, url: str) -> str:
        """A new tab on ``url``; its target id."""
        async with (
            aiohttp.ClientSession() as session,
            session.put(f"{self.devtools}/json/new?{url}") as answer,
        ):
            answer.raise_for_status()
            target: dict[str, Any] = await answer.json(content_type=None)
            return str(target["id"])

    async def close_tab(self, target: str) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.devtools}/json/close/{target}") as answer,
        ):
            await answer.read()


@contextmanager
def chromium(profile: Path) -> Iterator[Chromium]:
    """Headless Chromium with its profile in ``profile`` (an empty folder)
    until the block ends. It listens for DevTools on a port of its choosing
    (127.0.0.1), which it names on stderr: that line is awaited. Its
    temporary files go below ``profile`` too (``TMPDIR``): it leaves some
    behind."""
    temporary = profile / "tmp"
    temporary.mkdir()
    process = subprocess.Popen(
        [
            chromium_binary(),
            "--headless",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temporary)},
    )
    output: list[str] = []
    listening: list[str] = []
    ready = threading.Event()

    def drain() -> None:  # also keeps the pipe from filling up and stalling it
        assert process.stderr is not None
        for line in process.stderr:
            output.append(line)
            if _LISTENING in line and not listening:
                address = line.split(_LISTENING, 1)[1].split("/", 1)[0]
                listening.append(f"http://{address}")
                ready.set()
        ready.set()  # it exited

    reader = threading.Thread(target=drain, name="chromium-stderr", daemon=True)
    reader.start()
    try:
        if not ready.wait(_STARTUP_GUARD) or not listening:
            raise RuntimeError("chromium did not start:\n" + "".join(output))
        yield Chromium(process, listening[0], output)
    finally:
        process.terminate()
        wait_or_kill(process)
        reader.join(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


class PageError(Exception):
    """A page's script threw; the message is the browser's."""


_PAGE = """<!doctype html>
<meta charset="utf-8">
<title>export-service test page</title>
<script>
const args = __ARGS__;
async function sha256(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, "0")).join("");
}
async function main() {
__SCRIPT__
}
main().then(value => ({value: value === undefined ? null : value}),
            error => ({error: String(error)}))
  .then(result => fetch("/result/__ID__", {method: "POST", body: JSON.stringify(result)}));
</script>
"""


class PageOrigin:
    """Test pages served on an origin of their own (see the module's docstring)."""

    def __init__(self) -> None:
        self.origin = ""  # http://127.0.0.1:<port>, once serving
        self._pages: dict[str, str] = {}
        self._results: dict[str, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_get("/page/{id}", self._page)
        self.app.router.add_post("/result/{id}", self._result)

    async def _page(self, request: web.Request) -> web.Response:
        page = self._pages.get(request.match_info["id"])
        if page is None:
            raise web.HTTPNotFound()
        return web.Response(text=page, content_type="text/html")

    async def _result(self, request: web.Request) -> web.Response:
        future = self._results.get(request.match_info["id"])
        if future is None:
            raise web.HTTPNotFound()
        if not future.done():
            future.set_result(json.loads(await request.text()))
        return web.Response(status=204)

    async def run(
        self, browser: Chromium, script: str, args: Any = None, guard_seconds: float = 60
    ) -> Any:
        """Runs ``script`` in a new tab of this origin; what it returned."""
        page_id = str(next(self._ids))
        self._pages[page_id] = (
            _PAGE.replace("__ARGS__", json.dumps(args).replace("</", "<\\/"))
            .replace("__SCRIPT__", script)
            .replace("__ID__", page_id)
        )
        future = self._results[page_id] = asyncio.get_running_loop().create_future()
        target = await browser.open_tab(f"{self.origin}/page/{page_id}")
        try:
            result = await asyncio.wait_for(future, guard_seconds)
        except TimeoutError:
            raise TimeoutError(
                f"the page reported nothing in {guard_seconds} s; chromium said:\n"
                + "".join(browser.output[-20:])
            ) from None
        finally:
            await browser.close_tab(target)
        if "error" in result:
            raise PageError(result["error"])
        return result["value"]


@asynccontextmanager
async def page_origin() -> AsyncIterator[PageOrigin]:
    """A :class:`PageOrigin` serving on a free port of 127.0.0.1 until the block ends."""
    pages = PageOrigin()
    runner = web.AppRunner(pages.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    pages.origin = f"http://127.0.0.1:{port}"
    try:
        yield pages
    finally:
        await runner.cleanup()
