"""HTTP handlers: manifest, streamed ZIP and links (the file URLs: file_urls.py)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from typing import Annotated
from urllib.parse import quote

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, ValidationError, WithJsonSchema

from .access import body_complete, note_aborted, note_connection_error
from .archive import plan_export_archive
from .byte_ranges import requested_range
from .conditional import not_modified_response
from .descriptors import require_descriptors
from .errors import InvalidRequestBody, LinkNotFound, SourceChanged, TooManyDownloads
from .files import DESCRIPTORS_PER_DOWNLOAD
from .links import StoredLink
from .manifest import ExportSources, export_manifest_json
from .metrics import Metrics
from .run_ids import RUN_ID_JSON_SCHEMA, check_param_run_id, check_render_run_id
from .send_progress import SendProgress
from .state import (
    CRC_CACHE,
    METRICS,
    SETTINGS,
    SHUTTING_DOWN,
    SOURCES,
    ZIP_EXECUTOR,
    ZIP_SLOTS,
    run_blocking,
)
from .streaming import OffloadedChunks

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

EXPORT_PREFIX = "/api/air/export"
RETRY_AFTER_SECONDS = 5
# Any character, newlines too: the run-id check, not the router, refuses what
# is not a run id (a control character is a 422, never a 404).
RUN_ID_SEGMENT = r"{render_run_id:[\s\S]*}"
# Paths below the run folders that could not be listed (their files are in
# neither the manifest nor the ZIP); the log names them.
UNLISTED_HEADER = "X-Export-Unlisted-Paths"


def count_unlisted(metrics: Metrics, unlisted: Counter[str]) -> None:
    for reason, count in unlisted.items():
        metrics.scan_unlisted.labels(reason).inc(count)


def _run_ids(request: web.Request) -> tuple[str, str | None]:
    """The validated render run id and the optional ``param_run_id`` query.

    An empty ``param_run_id=`` counts as absent, as in the original module.
    """
    render_run_id = check_render_run_id(request.match_info["render_run_id"])
    param_run_id = request.query.get("param_run_id") or None
    if param_run_id is not None:
        check_param_run_id(param_run_id)
    return render_run_id, param_run_id


def content_disposition(render_run_id: str) -> str:
    """``attachment`` with an ASCII ``filename`` and, where that had to change
    the name, the exact one as RFC 6266 ``filename*``."""
    filename = f"export_{render_run_id}.zip"
    fallback = "".join(
        char if " " <= char <= "~" and char not in '"\\' else "_" for char in filename
    )
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def _manifest_and_etag(
    sources: ExportSources, render_run_id: str, param_run_id: str | None
) -> tuple[bytearray, str, Counter[str]]:
    """The manifest's JSON, its strong ETag (a hash of exactly those bytes;
    blocking: hashed in the same hop) and what could not be listed."""
    body, unlisted = export_manifest_json(sources, render_run_id, param_run_id)
    return body, f'"{hashlib.sha256(body).hexdigest()[:40]}"', unlisted


@routes.get(EXPORT_PREFIX + "/list/" + RUN_ID_SEGMENT)
async def export_manifest(request: web.Request) -> web.Response:
    render_run_id, param_run_id = _run_ids(request)
    body, etag, unlisted = await run_blocking(
        request, _manifest_and_etag, request.app[SOURCES], render_run_id, param_run_id
    )
    count_unlisted(request.app[METRICS], unlisted)
    cached = not_modified_response(request, etag, None)
    if cached is not None:
        return cached
    return web.Response(
        body=body,
        content_type="application/json",
        headers={hdrs.ETAG: etag, UNLISTED_HEADER: str(unlisted.total())},
    )


@routes.get(EXPORT_PREFIX + "/zip/" + RUN_ID_SEGMENT)
async def export_zip(request: web.Request) -> web.StreamResponse:
    render_run_id, param_run_id = _run_ids(request)
    streams = request.method != hdrs.METH_HEAD
    slots, metrics = request.app[ZIP_SLOTS], request.app[METRICS]
    # A HEAD plans the whole ZIP as a GET does, so it takes a slot as well.
    if not slots.try_acquire():
        metrics.zips_refused.inc()
        raise TooManyDownloads(
            f"{slots.limit} ZIP downloads are streaming or being planned; try again shortly",
            headers={hdrs.RETRY_AFTER: str(RETRY_AFTER_SECONDS)},
        )
    try:
        return await _send_zip(request, render_run_id, param_run_id, streams)
    finally:
        slots.release()


async def _send_zip(
    request: web.Request, render_run_id: str, param_run_id: str | None, streams: bool
) -> web.StreamResponse:
    settings, metrics = request.app[SETTINGS], request.app[METRICS]
    # Planning scans like a manifest: in the I/O pool, so that however long
    # it takes it never holds the ZIP threads that keep downloads streaming.
    archive = await run_blocking(
        request,
        plan_export_archive,
        request.app[SOURCES],
        render_run_id,
        param_run_id,
        request.app[CRC_CACHE],
    )
    cached = not_modified_response(request, archive.etag, archive.last_modified)
    if cached is not None:
        return cached
    if streams:  # after a 200 a download short of descriptors could only stop at 0 bytes
        await run_blocking(request, require_descriptors, DESCRIPTORS_PER_DOWNLOAD)
    byte_range = requested_range(
        request.headers.get(hdrs.RANGE),
        request.headers.get(hdrs.IF_RANGE),
        archive.size,
        archive.etag,
        archive.last_modified,
    )
    first, last = byte_range or (0, archive.size - 1)
    response = web.StreamResponse(
        status=206 if byte_range else 200,
        headers={
            hdrs.CONTENT_DISPOSITION: content_disposition(render_run_id),
            hdrs.ETAG: archive.etag,
            hdrs.ACCEPT_RANGES: "bytes",
            "X-Export-Files": str(len(archive.entries)),
            "X-Export-Skipped-Files": str(len(archive.skipped)),
            UNLISTED_HEADER: str(archive.unlisted.total()),
            # Proxies (nginx) must pass the stream on as it comes, not buffer it.
            "X-Accel-Buffering": "no",
        },
    )
    if byte_range:
        response.headers[hdrs.CONTENT_RANGE] = f"bytes {first}-{last}/{archive.size}"
    response.content_type = "application/zip"
    response.content_length = last - first + 1
    response.last_modified = archive.last_modified
    count_unlisted(metrics, archive.unlisted)  # once per scan, as for a manifest
    await response.prepare(request)
    if not streams:
        return response

    metrics.files_skipped.inc(len(archive.skipped))
    metrics.zips_in_flight.inc()
    chunks = OffloadedChunks(
        archive.chunks(first, last), request.app[ZIP_EXECUTOR], settings.limits.batch_bytes
    )
    send_timeout = settings.limits.send_timeout_seconds
    try:
        async with asyncio.timeout(send_timeout) as deadline:
            progress = SendProgress(request.transport, deadline, send_timeout)
            try:
                while batch := await chunks.next_batch():
                    for chunk in batch:
                        with progress.sending():
                            await response.write(chunk)
                        progress.queued += len(chunk)
                    metrics.zip_bytes.inc(sum(map(len, batch)))
            finally:
                progress.stop()
    except TimeoutError:
        log.info("ZIP of %s cut: no byte left for the client in %s s", render_run_id, send_timeout)
        metrics.zips_cut_short.labels("stalled").inc()
        note_aborted()
        if request.transport is not None:
            request.transport.abort()  # a graceful close would wait on the same client
        return response
    except SourceChanged as error:
        log.error("ZIP of %s cut short: %s", render_run_id, error.message)
        metrics.zips_cut_short.labels("source_changed").inc()
        response.force_close()
        return response
    except ConnectionError as error:
        note_connection_error(error)
        if not body_complete(request, response):  # else it left after its last byte
            log.info("ZIP of %s: the client went away", render_run_id)
            metrics.zips_cut_short.labels("client_gone").inc()
        return response
    except asyncio.CancelledError:
        if not body_complete(request, response):
            reason = "shutdown" if request.app[SHUTTING_DOWN].is_set() else "client_gone"
            log.info("ZIP of %s cancelled (%s)", render_run_id, reason)
            metrics.zips_cut_short.labels(reason).inc()
        raise
    finally:
        chunks.close()
        metrics.zips_in_flight.dec()
    await response.write_eof()
    return response


class LinkUpdate(BaseModel):
    """The body of ``PUT /api/air/export/links/{render_run_id}``."""

    model_config = ConfigDict(extra="forbid")
    # Checked by check_param_run_id (so a bad id is invalid_param_run_id, not
    # invalid_body); the schema only documents the rule.
    param_run_id: Annotated[str, WithJsonSchema(RUN_ID_JSON_SCHEMA)]


class Link(BaseModel):
    render_run_id: str
    param_run_id: str
    updated_at: float | None


def _link(render_run_id: str, stored: StoredLink) -> web.Response:
    link = Link(
        render_run_id=render_run_id,
        param_run_id=stored.param_run_id,
        updated_at=stored.updated_at,
    )
    return web.Response(body=link.model_dump_json().encode(), content_type="application/json")


@routes.get(EXPORT_PREFIX + "/links/" + RUN_ID_SEGMENT, allow_head=False)
async def get_link(request: web.Request) -> web.Response:
    render_run_id = check_render_run_id(request.match_info["render_run_id"])
    links = request.app[SOURCES].links
    stored = await run_blocking(request, links.link_for, render_run_id)
    if stored is None:
        raise LinkNotFound(f"no param run is linked to render run {render_run_id!r}")
    return _link(render_run_id, stored)


@routes.put(EXPORT_PREFIX + "/links/" + RUN_ID_SEGMENT)
async def put_link(request: web.Request) -> web.Response:
    render_run_id = check_render_run_id(request.match_info["render_run_id"])
    try:
        update = LinkUpdate.model_validate_json(await request.read())
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in error.errors()
        )
        raise InvalidRequestBody(
            'the body must be JSON {"param_run_id": "<id>"}; ' + problems
        ) from None
    param_run_id = check_param_run_id(update.param_run_id)
    links = request.app[SOURCES].links
    stored = await run_blocking(request, links.link, render_run_id, param_run_id)
    return _link(render_run_id, stored)
