"""What ops need beside the API: liveness, readiness and metrics."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from ..aio.offload import run_blocking
from ..config import Settings
from ..core.descriptors import descriptor_headroom
from ..errors import NotReady
from ..links.store import LinkStore
from ..obs.metrics import Metrics
from .keys import IO_EXECUTOR, METRICS, SERVICES, SETTINGS

log = logging.getLogger("export_service.ops")  # obs/logs.py: LOGGER_NAMES
routes = web.RouteTableDef()

# Open even when auth is on: orchestrators and scrapers carry no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def descriptor_problem(reserve: int) -> str | None:
    """Whether fewer than ``reserve`` file descriptors are free (blocking):
    near its limit the process answers manifests, ZIPs and file URLs with a
    503 ``out_of_descriptors`` (Retry-After) until some are free again."""
    free, limit = descriptor_headroom()
    if free == 0:
        return f"descriptors: none left to open a file with (limit {limit})"
    if free < reserve:
        return (
            f"descriptors: {free} free of {limit}, fewer than limits.descriptor_reserve ({reserve})"
        )
    return None


# What each readiness condition means. A condition the service survives --
# exports go on without it -- only degrades it: /readyz stays 200 and lists
# it, so a pod whose backend needs the service as a sidecar never leaves
# rotation (taking the whole backend with it) for a links file it can do
# without, and replicas sharing one links file never go unready together.
# A condition it cannot serve exports without makes it not ready (503).
NOT_READY_CONDITIONS = ("roots",)
DEGRADED_CONDITIONS = ("links_file", "descriptors")


@dataclass(frozen=True)
class Readiness:
    """The problems of each condition (empty where it is fine), in
    NOT_READY_CONDITIONS + DEGRADED_CONDITIONS order."""

    problems: dict[str, tuple[str, ...]]

    @property
    def ready(self) -> bool:
        return not any(self.problems[c] for c in NOT_READY_CONDITIONS)

    def listed(self) -> list[str]:
        return [text for texts in self.problems.values() for text in texts]


def readiness(settings: Settings, links: LinkStore) -> Readiness:
    """Every readiness condition, checked now (blocking)."""
    roots = []
    for key, path in settings.roots:
        if not path.is_dir():
            roots.append(f"roots.{key}: {str(path)!r} does not exist or is not a folder")
        elif not os.access(path, os.R_OK | os.X_OK):
            roots.append(f"roots.{key}: {str(path)!r} is not readable")
    # Everything wrong with the links file comes from the LinkStore's two
    # checks, whatever it is (corrupt, too large, not a regular file, not
    # writable): a new kind of problem there is reported here without change.
    links_file = [f"links.file: {p}" for p in (links.problem(), links.write_problem()) if p]
    descriptors = descriptor_problem(settings.limits.descriptor_reserve)
    return Readiness(
        {
            "roots": tuple(roots),
            "links_file": tuple(links_file),
            "descriptors": (descriptors,) if descriptors else (),
        }
    )


def readiness_problems(settings: Settings, links: LinkStore) -> list[str]:
    """Every problem readiness finds, not-ready and degraded ones alike (blocking)."""
    return readiness(settings, links).listed()


def checked_readiness(settings: Settings, links: LinkStore, metrics: Metrics) -> Readiness:
    """:func:`readiness`, with its gauges set and, when it changed, one log
    line (blocking)."""
    state = readiness(settings, links)
    if metrics.record_readiness(state.problems):
        listed = "; ".join(state.listed())
        if not state.ready:
            log.error("not ready: %s", listed)
        elif listed:
            log.warning("degraded (still ready, exports go on): %s", listed)
        else:
            log.info("ready, no problems")
    return state


@routes.get("/healthz", allow_head=False)
async def healthz(request: web.Request) -> web.Response:
    """200 ``{"status": "ok"}`` whenever the event loop answers. It touches
    neither the files nor the thread pools, so slow or missing roots never
    make an orchestrator restart the process (readiness tells about them)."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz", allow_head=False)
async def readyz(request: web.Request) -> web.Response:
    """503 naming each problem when a root is missing or unreadable (no
    export can be served). Otherwise 200: ``{"status": "ready"}``, or
    ``{"status": "degraded", "problems": [...]}`` when the links file is
    unusable or cannot be written, or fewer than limits.descriptor_reserve
    descriptors are free -- exports go on then (without links; a download
    short of descriptors gets its own 503), so the pod stays in rotation."""
    state = await run_blocking(
        request.app[IO_EXECUTOR],
        checked_readiness,
        request.app[SETTINGS],
        request.app[SERVICES].links,
        request.app[METRICS],
    )
    if not state.ready:
        raise NotReady("; ".join(state.listed()))
    if state.listed():
        return web.json_response({"status": "degraded", "problems": state.listed()})
    return web.json_response({"status": "ready"})


@routes.get("/metrics", allow_head=False)
async def metrics(request: web.Request) -> web.Response:
    """The app's metrics in Prometheus' text format, read off the event loop
    (one hop to the I/O pool). Open without a token, as health is: scrapers
    carry none."""
    app = request.app

    def exposition() -> bytes:  # reads /proc and the links file: one hop
        checked_readiness(app[SETTINGS], app[SERVICES].links, app[METRICS])
        return app[METRICS].exposition()

    body = await run_blocking(app[IO_EXECUTOR], exposition)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
