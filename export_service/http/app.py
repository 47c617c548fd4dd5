"""The application factory, its middlewares, and what runs at start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..aio.download_slots import DownloadSlots
from ..config import Settings
from ..errors import ExportServiceError, Unauthorized, error_body
from ..exports import Services
from ..obs.logs import request_id
from ..obs.metrics import Metrics
from ..zip.crcs import CrcCache
from . import ops
from .access import abort_after_headers, remember_response, sent_response, track_exchange
from .cors import Cors
from .file_responses import file_route
from .keys import (
    CLOCK,
    CRC_CACHE,
    IN_FLIGHT,
    IO_EXECUTOR,
    METRICS,
    SCAN_EXECUTOR,
    SERVICES,
    SETTINGS,
    SHUTTING_DOWN,
    ZIP_EXECUTOR,
    ZIP_SLOTS,
)
from .openapi import openapi_route
from .routes import MAX_BODY_BYTES, bearer_token_matches, routes, signed_url_request
from .shutdown import RequestsInFlight, tracking_middleware

log = logging.getLogger("export_service.app")  # obs/logs.py: LOGGER_NAMES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The original's error shape, rendered compactly as FastAPI renders it."""
    body = error_body(code, message)
    response = web.json_response(body, status=status, dumps=_compact_json)
    response.headers.update(headers or {})
    return response


def _compact_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Takes the client's ``X-Request-ID`` (when it is a sane token) or makes one."""
    given = request.headers.get("X-Request-ID", "")
    request_id.set(given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex)
    return await handler(request)


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    current = request_id.get()
    if current:
        response.headers["X-Request-ID"] = current


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"detail": {"error": ..., "message": ...}}``;
    one raised after the response's headers went out aborts the connection
    instead (a second response would land inside the first one's body)."""
    try:
        return await handler(request)
    except ConnectionError:
        raise  # the client is gone: no one to answer (track_exchange logs it)
    except Exception as error:
        sent = sent_response()
        if sent is None:
            return _error_answer(request, error)
        log.error(
            "%s %s failed after its headers went out: the connection is aborted",
            request.method,
            request.path,
            exc_info=error,
        )
        abort_after_headers(request)
        return sent


def _error_answer(request: web.Request, error: Exception) -> web.Response:
    """The JSON error answering ``error``, raised before any header went out."""
    if isinstance(error, ExportServiceError):
        return error_response(error.status, error.code, error.message, error.headers)
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        code = _HTTP_ERROR_CODES.get(error.status, HTTPStatus(error.status).name.lower())
        message = f"{error.reason}: {request.method} {request.path}"
        headers = {name: error.headers[name] for name in ("Allow",) if name in error.headers}
        return error_response(error.status, code, message, headers)
    log.error("unexpected error on %s %s", request.method, request.path, exc_info=error)
    return error_response(500, "internal_error", "internal error; see the service log")


def signed_or_bearer_auth(token: str) -> Middleware:
    """A request whose query has ``expires`` or ``signature`` is a signed-URL
    request: let in when its signature is good (in place of the token, for
    that URL only), else 403 or 410 (``signed_urls.verify``). Any other
    request but health and metrics needs ``Authorization: Bearer <token>``
    when a token is set."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if signed_url_request(request):
            return await handler(request)
        if (
            token
            and request.path not in ops.OPEN_PATHS
            and not bearer_token_matches(request.headers.get("Authorization", ""), token)
        ):
            raise Unauthorized(
                "a valid 'Authorization: Bearer <token>' header is required",
                headers={"WWW-Authenticate": 'Bearer realm="export-service"'},
            )
        return await handler(request)

    return check


LOOP_LAG_INTERVAL = 0.020
# The garbage collector's oldest generation is collected after this many
# collections of the middle one (Python's default: 10). A full collection
# walks every tracked object while holding the GIL; with the planned entries
# of a few ZIPs of 200,000 files each that is 100-250 ms, and at the default
# it came often enough to hold /healthz for 300-500 ms (bench/huge_runs.py).
# Cyclic garbage is rare here (requests' objects are freed by reference
# counting) and the young generations are still collected as usual.
GC_FULL_COLLECTION_EVERY = 100


async def _measure_loop_lag(metrics: Metrics) -> None:
    """Observe how late a periodic timer fires: whatever blocks the loop shows here."""
    loop = asyncio.get_running_loop()
    while True:
        planned = loop.time() + LOOP_LAG_INTERVAL
        await asyncio.sleep(LOOP_LAG_INTERVAL)
        metrics.loop_lag.observe(max(0.0, loop.time() - planned))


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    """The service for ``settings`` as an aiohttp application: the export API,
    the file URLs, the OpenAPI document and the ops endpoints, behind the
    middlewares (in-flight tracking, request id, access log and request
    metrics, JSON errors, then CORS preflights when ``[cors]`` is set, then
    a signed URL's signature or the bearer token when one is set). ``clock``
    gives the unix time signed URLs expire by.

    Building it does no I/O and starts nothing. Starting it (a runner's
    setup) starts the two thread pools, logs what keeps it from being ready
    (it starts anyway), starts the event-loop lag probe and makes full garbage
    collections rarer. Shutting it down lets the requests in flight finish
    for ``server.shutdown_grace_seconds``, then cuts the rest and closes
    every connection; cleanup restores the collector's thresholds, stops the
    probe, and stops the pools (queued work dropped, running work waited for).
    """
    in_flight = RequestsInFlight()
    middlewares: list[Middleware] = [
        tracking_middleware(in_flight),
        request_context,
        track_exchange,
        json_errors,
    ]
    cors = Cors(settings.cors) if settings.cors.allowed_origins else None
    if cors is not None:  # preflights carry no token: answered before it is checked
        middlewares.append(cors.middleware())
    middlewares.append(signed_or_bearer_auth(settings.auth.token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[CLOCK] = clock
    app[IN_FLIGHT] = in_flight
    app[SETTINGS] = settings
    app[SERVICES] = Services.from_settings(settings)
    app[METRICS] = Metrics()
    app[ZIP_SLOTS] = DownloadSlots(
        settings.limits.max_concurrent_zips, settings.limits.max_zips_per_client
    )
    app[CRC_CACHE] = CrcCache()
    app[SHUTTING_DOWN] = asyncio.Event()

    async def executors(app: web.Application) -> AsyncIterator[None]:
        executor = app[IO_EXECUTOR] = ThreadPoolExecutor(
            max_workers=settings.limits.io_threads, thread_name_prefix="export-io"
        )
        zip_executor = app[ZIP_EXECUTOR] = ThreadPoolExecutor(
            max_workers=settings.limits.zip_thread_count, thread_name_prefix="export-zip"
        )
        # Scans (manifests, ZIP plans) have threads of their own: however many
        # run, file URLs, links and readiness never queue behind them.
        scan_executor = app[SCAN_EXECUTOR] = ThreadPoolExecutor(
            max_workers=settings.limits.scan_threads, thread_name_prefix="export-scan"
        )
        # Logs what readiness finds at start (not ready, or degraded), once:
        # /readyz and /metrics log again only when it changes.
        await asyncio.get_running_loop().run_in_executor(
            executor, ops.checked_readiness, settings, app[SERVICES].links, app[METRICS]
        )
        yield
        zip_executor.shutdown(wait=True, cancel_futures=True)
        scan_executor.shutdown(wait=True, cancel_futures=True)
        executor.shutdown(wait=True, cancel_futures=True)

    async def loop_lag_probe(app: web.Application) -> AsyncIterator[None]:
        probe = asyncio.create_task(_measure_loop_lag(app[METRICS]))
        yield
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe

    async def fewer_full_collections(app: web.Application) -> AsyncIterator[None]:
        young, middle, oldest = gc.get_threshold()
        gc.set_threshold(young, middle, max(oldest, GC_FULL_COLLECTION_EVERY))
        yield
        gc.set_threshold(young, middle, oldest)

    async def mark_shutting_down(app: web.Application) -> None:
        app[SHUTTING_DOWN].set()

    async def drain_requests(app: web.Application) -> None:
        await app[IN_FLIGHT].drain(settings.server.shutdown_grace_seconds)

    app.cleanup_ctx.append(executors)
    app.cleanup_ctx.append(loop_lag_probe)
    app.cleanup_ctx.append(fewer_full_collections)
    app.on_shutdown.append(mark_shutting_down)
    app.on_shutdown.append(drain_requests)
    app.on_response_prepare.append(_echo_request_id)
    if cors is not None:
        app.on_response_prepare.append(cors.on_response_prepare)
    app.on_response_prepare.append(remember_response)
    app.add_routes(routes)
    app.add_routes(ops.routes)
    urls = settings.urls
    app.add_routes(
        [
            file_route("render", urls.render),
            file_route("midi_generation", urls.midi_generation),
            file_route("param_generation", urls.param_generation),
            openapi_route(settings),
        ]
    )
    return app
