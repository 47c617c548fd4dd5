"""HTTP handlers: manifest, streamed ZIP and links (the file URLs: file_responses.py)."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections import Counter

from aiohttp import HttpVersion11, hdrs, web
from pydantic import ValidationError

from .. import signed_urls
from ..aio.download_slots import client_address
from ..aio.offload import run_blocking, run_stoppable
from ..core.etags import hashed_etag
from ..core.run_ids import (
    linked_param_run_id_as_sent,
    param_run_id_as_sent,
    render_run_id_as_sent,
)
from ..core.selection import Selection
from ..errors import (
    ExportServiceError,
    InvalidRequestBody,
    LinkNotFound,
    TooManyDownloads,
    TooManyDownloadsPerClient,
    retry_later,
)
from ..exports import Services, export_manifest_json, plan_export_archive
from ..links.records import StoredLink
from ..schemas import EXPORT_PREFIX, Link, LinkUpdate
from ..zip.archive import ExportArchive
from ..zip.crcs import CrcCache
from .conditional import precondition_response
from .keys import (
    CLOCK,
    CRC_CACHE,
    IO_EXECUTOR,
    METRICS,
    SCAN_EXECUTOR,
    SERVICES,
    SETTINGS,
    ZIP_SLOTS,
)
from .zip_response import UNLISTED_HEADER, ZipResponse

routes = web.RouteTableDef()

# The largest request body read (a link's is tens of bytes): aiohttp's
# client_max_size, which app.py sets to it.
MAX_BODY_BYTES = 1024 * 1024


def bearer_token_matches(authorization: str, token: str) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>``."""
    scheme, _, given = authorization.partition(" ")
    # surrogateescape: a header byte that is not UTF-8 must compare unequal,
    # not fail to encode.
    given_bytes = given.encode("utf-8", "surrogateescape")
    return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, token.encode())


def signed_url_request(request: web.Request) -> bool:
    """Whether ``request`` is a signed-URL request (its query has ``expires``
    or ``signature``), and then only if its signature is good: else
    :class:`~export_service.errors.InvalidSignature` (403) or
    :class:`~export_service.errors.UrlExpired` (410)."""
    url = request.rel_url
    if not signed_urls.is_signed(url.raw_query_string):
        return False
    auth = request.app[SETTINGS].auth
    signed_urls.verify(
        request.method,
        url.raw_path,
        url.raw_query_string,
        auth.signing_secrets,
        now=request.app[CLOCK](),
        max_seconds=auth.max_signed_url_seconds,
    )
    return True


async def continue_if_acceptable(request: web.Request) -> None:
    """``Expect: 100-continue``: "100 Continue" only for a request that would
    be let in, so that a client does not send a body only to have it
    refused. Without the bearer token (when one is set) or a good
    signature (a signed URL, which needs no token), or with a
    ``Content-Length`` over the body limit, no 100 is sent: the handler's
    middlewares answer 401, or the handler 413, without reading the body.
    Any other expectation is 417, as aiohttp answers it."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect}")
    try:
        signed = signed_url_request(request)
    except ExportServiceError:
        return  # the middleware answers 403 or 410
    token = request.app[SETTINGS].auth.token
    authorization = request.headers.get(hdrs.AUTHORIZATION, "")
    if not signed and token and not bearer_token_matches(authorization, token):
        return
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    # The response proper has not started: the access log counts the body
    # from the writer's output_size (access.py says why), which is not to
    # hold these bytes; test_a_body_sent_after_100_continue_is_linked checks.
    request.writer.output_size = 0


# Any character, newlines too: the run-id check, not the router, refuses what
# is not a run id (a control character is a 422, never a 404).
RUN_ID_SEGMENT = r"{render_run_id:[\s\S]*}"


def _run_ids(request: web.Request) -> tuple[str, str | None]:
    """The validated render run id and the optional ``param_run_id`` query.

    Both are stripped of surrounding whitespace and an empty or blank
    ``param_run_id`` counts as absent, as in the original module.
    """
    render_run_id = render_run_id_as_sent(request.match_info["render_run_id"])
    return render_run_id, param_run_id_as_sent(request.query.get("param_run_id"))


def _selection(request: web.Request) -> Selection | None:
    """The ``steps`` and ``prefix`` query parameters (each repeatable) as one
    canonical selection; None without them, or when they select everything.
    Other query keys are left to whoever reads them."""
    query = request.query
    return Selection.parse(query.getall("steps", []), query.getall("prefix", []))


def _manifest_and_etag(
    stop: threading.Event,
    services: Services,
    render_run_id: str,
    param_run_id: str | None,
    selection: Selection | None,
) -> tuple[bytearray, str, Counter[str]]:
    """The manifest's JSON, its strong ETag (a hash of exactly those bytes;
    blocking: hashed in the same hop) and what could not be listed."""
    body, unlisted = export_manifest_json(services, render_run_id, param_run_id, stop, selection)
    return body, hashed_etag(hashlib.sha256(body)), unlisted


def _planned_archive(
    stop: threading.Event,
    services: Services,
    render_run_id: str,
    param_run_id: str | None,
    crcs: CrcCache,
    selection: Selection | None,
) -> ExportArchive:
    return plan_export_archive(services, render_run_id, param_run_id, crcs, stop, selection)


@routes.get(EXPORT_PREFIX + "/list/" + RUN_ID_SEGMENT, expect_handler=continue_if_acceptable)
async def export_manifest(request: web.Request) -> web.Response:
    """The export's manifest (GET and HEAD): 200 with its JSON, a strong
    ``ETag`` of those bytes and ``X-Export-Unlisted-Paths``; 304 for an
    ``If-None-Match`` naming it, 412 for an ``If-Match`` that does not. 422
    for a bad run id or an export over ``limits.max_files_per_export``, and
    for a bad ``steps`` or ``prefix`` (a selective export: selection.py).
    Without ``param_run_id`` the links file names the param run."""
    render_run_id, param_run_id = _run_ids(request)
    selection = _selection(request)
    body, etag, unlisted = await run_stoppable(
        request.app[SCAN_EXECUTOR],
        _manifest_and_etag,
        request.app[SERVICES],
        render_run_id,
        param_run_id,
        selection,
    )
    request.app[METRICS].count_unlisted(unlisted)
    cached = precondition_response(request, etag, None)
    if cached is not None:
        return cached
    return web.Response(
        body=body,
        content_type="application/json",
        headers={hdrs.ETAG: etag, UNLISTED_HEADER: str(unlisted.total())},
    )


@routes.get(EXPORT_PREFIX + "/zip/" + RUN_ID_SEGMENT, expect_handler=continue_if_acceptable)
async def export_zip(request: web.Request) -> web.StreamResponse:
    """The export's ZIP (GET and HEAD), streamed as it is read (zip_response.py).

    200 with the whole archive, or 206 with ``Content-Range`` for one
    ``Range`` (``If-Range`` honoured; several ranges give the 200), 416 for a
    range outside it. Headers: ``ETag``, ``Last-Modified`` (none for an empty
    ZIP), exact ``Content-Length``, ``Content-Disposition``, ``Accept-Ranges``,
    ``X-Export-Files``, ``X-Export-Skipped-Files``, ``X-Export-Unlisted-Paths``.
    304 for ``If-None-Match`` (else ``If-Modified-Since``), 412 for
    ``If-Match`` (else ``If-Unmodified-Since``) that fails. 503
    ``too_many_downloads`` with ``Retry-After`` while
    ``limits.max_concurrent_zips`` are streaming or being planned (a HEAD
    plans the whole ZIP as a GET does, so it takes a slot as well), 429
    ``too_many_downloads_per_client`` with ``Retry-After`` while the same
    client holds ``limits.max_zips_per_client`` of them (the client: the peer's
    address, or the one a trusted proxy forwarded, ``server.trusted_proxies``),
    503 ``out_of_descriptors`` when a GET could not hold its files open. 422
    for a bad run id or an export over ``limits.max_files_per_export`` or
    ``limits.max_folders_per_export``, and for a bad ``steps`` or ``prefix``.
    A selective export's selection is part of its ETag and file name.
    """
    render_run_id, param_run_id = _run_ids(request)
    selection = _selection(request)
    slots = request.app[ZIP_SLOTS]
    client = client_address(
        request.remote,
        request.headers.getall(hdrs.X_FORWARDED_FOR, []),
        request.app[SETTINGS].server.trusted_proxies,
    )
    if not slots.try_acquire(client):
        request.app[METRICS].zips_refused.inc()
        if slots.in_use < slots.limit:  # room for others, not for this client
            raise TooManyDownloadsPerClient(
                f"this client ({client}) already has {slots.per_client} ZIP downloads"
                " streaming or being planned (limits.max_zips_per_client); try again when"
                " one ends",
                headers=retry_later(),
            )
        raise TooManyDownloads(
            f"{slots.limit} ZIP downloads are streaming or being planned; try again shortly",
            headers=retry_later(),
        )
    try:
        # Planning scans like a manifest: in the scan pool, so that however long
        # it takes it never holds the ZIP threads that keep downloads streaming,
        # nor the I/O threads of file URLs; it stops if the client hangs up.
        archive = await run_stoppable(
            request.app[SCAN_EXECUTOR],
            _planned_archive,
            request.app[SERVICES],
            render_run_id,
            param_run_id,
            request.app[CRC_CACHE],
            selection,
        )
        # The ZIP's Last-Modified (its newest file's) is never a strong
        # validator: a rename or a deletion in a run changes the ZIP, not it.
        cached = precondition_response(request, archive.etag, archive.last_modified)
        if cached is not None:
            return cached
        return await ZipResponse(request, archive, render_run_id, selection).send()
    finally:
        slots.release(client)


def _link(render_run_id: str, stored: StoredLink) -> web.Response:
    link = Link(
        render_run_id=render_run_id,
        param_run_id=stored.param_run_id,
        updated_at=stored.updated_at,
    )
    return web.Response(body=link.model_dump_json().encode(), content_type="application/json")


@routes.get(
    EXPORT_PREFIX + "/links/" + RUN_ID_SEGMENT,
    allow_head=False,
    expect_handler=continue_if_acceptable,
)
async def get_link(request: web.Request) -> web.Response:
    """The param run linked to a render run: 200 with the link, 404
    ``link_not_found`` when there is none (or its param run id is not a valid
    run id), 422 for a bad run id."""
    render_run_id = render_run_id_as_sent(request.match_info["render_run_id"])
    links = request.app[SERVICES].links
    stored = await run_blocking(request.app[IO_EXECUTOR], links.valid_link, render_run_id)
    if stored is None:
        raise LinkNotFound(f"no param run is linked to render run {render_run_id!r}")
    return _link(render_run_id, stored)


@routes.put(EXPORT_PREFIX + "/links/" + RUN_ID_SEGMENT, expect_handler=continue_if_acceptable)
async def put_link(request: web.Request) -> web.Response:
    """Link a render run to a param run: 200 with the link as stored. 422
    ``invalid_body`` unless the body is ``{"param_run_id": "<id>"}``, 422 for a
    bad id, 413 ``body_too_large`` for a body over 1 MiB (refused unread when
    its ``Content-Length`` says so), 503 when the links file is unusable or
    cannot be written."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
    render_run_id = render_run_id_as_sent(request.match_info["render_run_id"])
    try:
        update = LinkUpdate.model_validate_json(await request.read())
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'body'}: {item['msg']}" for item in error.errors()
        )
        raise InvalidRequestBody(
            'the body must be JSON {"param_run_id": "<id>"}; ' + problems
        ) from None
    param_run_id = linked_param_run_id_as_sent(update.param_run_id)
    links = request.app[SERVICES].links
    stored = await run_blocking(
        request.app[IO_EXECUTOR], links.write_link, render_run_id, param_run_id
    )
    return _link(render_run_id, stored)
