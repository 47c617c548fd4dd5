"""What ops need beside the API: liveness, readiness and metrics."""

from __future__ import annotations

import errno
import os
import resource

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .config import Settings
from .errors import NotReady
from .links import LinkStore
from .state import METRICS, SETTINGS, SOURCES, run_blocking

routes = web.RouteTableDef()

# Open even when auth is on: orchestrators and scrapers carry no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def descriptor_problem() -> str | None:
    """Whether the process can still open a file (blocking): at its
    descriptor limit every manifest, ZIP and file URL would fail."""
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as error:
        if error.errno in (errno.EMFILE, errno.ENFILE):
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            return f"descriptors: none left to open a file with ({error.strerror}; limit {limit})"
    return None


def readiness_problems(settings: Settings, links: LinkStore) -> list[str]:
    """What keeps the service from serving exports (blocking)."""
    problems = []
    descriptors = descriptor_problem()
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
    """The process is up and its event loop answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz", allow_head=False)
async def readyz(request: web.Request) -> web.Response:
    """200 when the process can open files, the roots are readable folders
    and the links file is absent or parses and can be written; otherwise 503
    naming each problem."""
    problems = await run_blocking(
        request, readiness_problems, request.app[SETTINGS], request.app[SOURCES].links
    )
    if problems:
        raise NotReady("; ".join(problems))
    return web.json_response({"status": "ready"})


@routes.get("/metrics", allow_head=False)
async def metrics(request: web.Request) -> web.Response:
    body = await run_blocking(request, request.app[METRICS].exposition)  # reads /proc
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
