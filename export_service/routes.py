"""HTTP handlers: the manifest and the streamed ZIP."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

from aiohttp import hdrs, web

from .archive import plan_export_archive
from .errors import SourceChanged
from .manifest import build_export
from .run_ids import check_param_run_id, check_render_run_id
from .state import IO_EXECUTOR, LINKS, SETTINGS, run_blocking
from .streaming import OffloadedChunks

log = logging.getLogger(__name__)

routes = web.RouteTableDef()

EXPORT_PREFIX = "/api/air/export"


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


@routes.get(EXPORT_PREFIX + "/list/{render_run_id:.*}")
async def export_manifest(request: web.Request) -> web.Response:
    render_run_id, param_run_id = _run_ids(request)
    export = await run_blocking(
        request,
        build_export,
        request.app[SETTINGS],
        request.app[LINKS],
        render_run_id,
        param_run_id,
    )
    return web.Response(
        body=export.manifest.model_dump_json().encode(), content_type="application/json"
    )


@routes.get(EXPORT_PREFIX + "/zip/{render_run_id:.*}")
async def export_zip(request: web.Request) -> web.StreamResponse:
    render_run_id, param_run_id = _run_ids(request)
    settings = request.app[SETTINGS]
    archive = await run_blocking(
        request, plan_export_archive, settings, request.app[LINKS], render_run_id, param_run_id
    )
    response = web.StreamResponse(
        headers={
            hdrs.CONTENT_DISPOSITION: content_disposition(render_run_id),
            "X-Export-Files": str(len(archive.entries)),
            "X-Export-Skipped-Files": str(len(archive.skipped)),
        }
    )
    response.content_type = "application/zip"
    response.content_length = archive.size
    response.last_modified = archive.last_modified
    await response.prepare(request)
    if request.method == hdrs.METH_HEAD:
        return response

    chunks = OffloadedChunks(
        archive.chunks(), request.app[IO_EXECUTOR], settings.limits.batch_bytes
    )
    try:
        while batch := await chunks.next_batch():
            for chunk in batch:
                await response.write(chunk)
    except SourceChanged as error:
        log.error("ZIP of %s cut short: %s", render_run_id, error.message)
        response.force_close()
        return response
    except ConnectionError:
        log.info("ZIP of %s: the client went away", render_run_id)
        return response
    except asyncio.CancelledError:
        log.info("ZIP of %s: the client went away", render_run_id)
        raise
    finally:
        chunks.close()
    await response.write_eof()
    return response
