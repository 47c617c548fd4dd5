"""What ops need beside the API: liveness, readiness and metrics."""

from __future__ import annotations

import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .config import Settings
from .descriptors import descriptor_headroom
from .errors import NotReady
from .keys import IO_EXECUTOR, METRICS, SETTINGS, SOURCES
from .links import LinkStore
from .offload import run_blocking

routes = web.RouteTableDef()

# Open even when auth is on: orchestrators and scrapers carry no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def descriptor_problem(reserve: int) -> str | None:
    """Whether fewer than ``reserve`` file descriptors are free (blocking):
    near its limit the process fails manifests, ZIPs and file URLs, and a
    load balancer should send them elsewhere."""
    free, limit = descriptor_headroom()
    if free == 0:
        return f"descriptors: none left to open a file with (limit {limit})"
    if free < reserve:
        return (
            f"descriptors: {free} free of {limit}, fewer than limits.descriptor_reserve ({reserve})"
        )
    return None


def readiness_problems(settings: Settings, links: LinkStore) -> list[str]:
    """What keeps the service from serving exports (blocking)."""
    problems = []
    descriptors = descriptor_problem(settings.limits.descriptor_reserve)
    if descriptors:
        problems.append(descriptors)
    for key, path in settings.roots:
        if not path.is_dir():
            problems.append(f"roots.{key}: {str(path)!r} does not exist or is not a folder")
        elif not os.access(path, os.R_OK | os.X_OK):
            problems.append(f"roots.{key}: {str(path)!r} is not readable")
    for links_problem in (links.problem(), links.write_problem()):
        if links_problem:
            problems.append(f"links.file: {links_problem}")
    return problems


@routes.get("/healthz", allow_head=False)
async def healthz(request: web.Request) -> web.Response:
    """200 ``{"status": "ok"}`` whenever the event loop answers. It touches
    neither the files nor the thread pools, so slow or missing roots never
    make an orchestrator restart the process (readiness tells about them)."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz", allow_head=False)
async def readyz(request: web.Request) -> web.Response:
    """200 when limits.descriptor_reserve descriptors are free, the roots are readable folders
    and the links file is absent or parses and can be written; otherwise 503
    naming each problem."""
    problems = await run_blocking(
        request.app[IO_EXECUTOR],
        readiness_problems,
        request.app[SETTINGS],
        request.app[SOURCES].links,
    )
    if problems:
        raise NotReady("; ".join(problems))
    return web.json_response({"status": "ready"})


@routes.get("/metrics", allow_head=False)
async def metrics(request: web.Request) -> web.Response:
    """The app's metrics in Prometheus' text format, read off the event loop
    (one hop to the I/O pool). Open without a token, as health is: scrapers
    carry none."""
    exposition = request.app[METRICS].exposition  # reads /proc
    body = await run_blocking(request.app[IO_EXECUTOR], exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
