"""A FastAPI router that forwards the AIR backend's export routes to export-service.

The backend replaces its own export module with::

    app.include_router(export_proxy_router("http://127.0.0.1:8080"), prefix="/api")

and its front end keeps calling ``/api/air/export/...``. It needs FastAPI and
aiohttp's client, nothing of the server: ``pip install ./clients/backend``
(the light install) or ``pip install '.[fastapi]'`` (the whole service).

What it costs the backend: one pooled aiohttp client per router and process,
made on the first request inside the backend's event loop and closed with the
app (the router's lifespan, which ``include_router`` merges into the app's);
keep-alive connections to the service; nothing per request that blocks the
loop; the answer relayed in pieces of up to 1 MiB with the service's status
and headers, so memory stays flat whatever the ZIP's size, and the upstream
request closed as soon as the browser goes away.

The id is sent exactly as the browser sent it: a FastAPI path parameter is
decoded and normalised, while the service must see ``..`` or ``%2e%2e`` as
such to refuse it with 422. It is taken from the raw request target in the
ASGI scope; the route before it is the one FastAPI matched (on the decoded
path), so ``/air/%65xport/zip/x`` goes to the service's ZIP route like
``/air/export/zip/x``. The routes are still FastAPI path operations, so they
are listed in the backend's OpenAPI document with the service's schemas.

Timeouts, each on its own, never one after another: ``connect_timeout`` to
open a connection, ``first_byte_timeout`` from sending the request to the
answer's headers (connecting included), ``idle_timeout`` between two pieces
of the body. Before the headers, a failure is answered in the service's
error shape: 503 ``export_service_unavailable`` (nothing listens, or no
connection within ``connect_timeout``), 504 ``export_service_timeout`` (no
answer in time), 502 ``export_service_bad_answer``. After them, a failure
cuts the connection, so the browser sees a short transfer, never a complete
looking one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlencode

import aiohttp
import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from .core.manifest import ExportManifest
from .core.run_ids import render_run_id_as_sent
from .errors import ExportServiceError, error_body, retry_later
from .schemas import ErrorBody, Link, LinkUpdate
from .signed_urls import sign_url

log = logging.getLogger("export_service.fastapi_proxy")  # obs/logs.py: LOGGER_NAMES

EXPORT_PATH = "/air/export/"
SERVICE_PREFIX = "/api"
# One read from the service, and the most the client buffers per download
# before it stops reading from the socket (so memory stays flat).
CHUNK_BYTES = 1024 * 1024
# The header the nginx recipes (deploy/nginx/) set on the backend's location:
# only a request carrying it is answered with X-Accel-Redirect.
ACCEL_HEADER = b"x-export-accel"
ACCEL_VALUE = b"nginx"

# Request headers the service understands; everything else stays with the backend
# (its cookies and its own Authorization are not the service's business).
FORWARDED_REQUEST_HEADERS = frozenset(
    {
        b"range",
        b"if-range",
        b"if-none-match",
        b"if-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"x-request-id",
        b"content-type",
        b"accept",
    }
)
# Hop-by-hop headers (RFC 9110 7.6.1), and those the ASGI server writes itself.
DROPPED_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"date",
        b"server",
    }
)

UNAVAILABLE = (
    503,
    "export_service_unavailable",
    "The export service cannot be reached right now. Please try again in a minute.",
)
TIMED_OUT = (
    504,
    "export_service_timeout",
    "The export service did not answer in time. Please try again in a minute.",
)
BAD_ANSWER = (
    502,
    "export_service_bad_answer",
    "The export service sent an answer that could not be read. Please try again.",
)


def error_response(status: int, code: str, message: str) -> Response:
    """The service's own error shape, so the front end handles both alike."""
    body = json.dumps(error_body(code, message)).encode()
    headers = retry_later() if status in (503, 504) else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _raw_id(scope: Scope) -> str:
    """The id as the browser sent it: the end of the raw request target that
    decodes to the id the route matched.

    The route matched the decoded path, so nothing before the id can be taken
    from the raw target by its text (``/air/%65xport/`` matched too). A literal
    ``/`` is never part of an escape, so the raw path decodes segment by segment;
    the raw id is the run of last segments whose decoding is the matched id.
    Without a raw target (an ASGI server may leave it out), or when the escapes
    put the id's first ``/`` into an escape (``zip%2Fr``), the decoded id is
    escaped again, whole.
    """
    run_id: str = scope["path_params"]["render_run_id"]
    raw: bytes | None = scope.get("raw_path")
    if raw:
        segments = raw.decode("latin-1").partition("?")[0].split("/")
        decoded: list[str] = []
        length = -1  # of "/".join(decoded)
        for segment in reversed(segments):
            decoded.append(unquote(segment))
            length += len(decoded[-1]) + 1
            if length == len(run_id) and "/".join(reversed(decoded)) == run_id:
                return "/".join(segments[len(segments) - len(decoded) :])
            if length > len(run_id):
                break
    return quote(run_id, safe="")


@dataclass(frozen=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float


class _Upstream:
    """The service behind the router: its address, token, timeouts and the one
    pooled client session (per process: made lazily in the running loop, so
    each uvicorn worker has its own)."""

    def __init__(self, base_url: str, token: str | None, timeouts: Timeouts) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeouts = timeouts
        self.client_timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeouts.connect, sock_read=timeouts.idle
        )
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=self.client_timeout,
                auto_decompress=False,
                read_bufsize=CHUNK_BYTES,
                skip_auto_headers=("Accept-Encoding",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await self.aclose()

    def headers(self, scope: Scope) -> list[tuple[str, str]]:
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name.lower() in FORWARDED_REQUEST_HEADERS
        ]
        # The browser's address, after any proxies' before the backend: the
        # service gives each client its own share of downloads by it.
        forwarded = [
            value.decode("latin-1").strip()
            for name, value in scope["headers"]
            if name.lower() == b"x-forwarded-for"
        ]
        client = scope.get("client")
        # uvicorn (--proxy-headers, on for 127.0.0.1 by default) may already
        # have taken the client from that header's last entry: not twice.
        if client and (not forwarded or forwarded[-1].rpartition(",")[2].strip() != client[0]):
            forwarded.append(str(client[0]))
        if forwarded:
            headers.append(("X-Forwarded-For", ", ".join(item for item in forwarded if item)))
        if self.token:
            headers.append(("Authorization", "Bearer " + self.token))
        return headers

    async def request(
        self, kind: str, scope: Scope, body: bytes | None
    ) -> aiohttp.ClientResponse | Response:
        """The service's answer up to its headers, or the error response to
        send instead."""
        method: str = scope["method"]
        target = f"{SERVICE_PREFIX}{EXPORT_PATH}{kind}/{_raw_id(scope)}"
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            target += "?" + query
        # encoded: the target goes out as the browser sent it (no ".." removed).
        url = URL(self.base_url + target, encoded=True)
        headers = self.headers(scope)
        # A kept-alive connection the service closed meanwhile (a restart) is
        # retried once on a new one by aiohttp itself, for idempotent methods.
        try:
            async with asyncio.timeout(self.timeouts.first_byte):
                return await self.session().request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            return self._failed(UNAVAILABLE, method, target, error)
        except TimeoutError as error:
            return self._failed(TIMED_OUT, method, target, error)
        except aiohttp.ClientError as error:
            return self._failed(BAD_ANSWER, method, target, error)

    def _failed(
        self, what: tuple[int, str, str], method: str, target: str, error: BaseException
    ) -> Response:
        log.warning(
            "export-service %s on %s %s%s after %s: %r",
            what[1],
            method,
            self.base_url,
            target,
            self.timeouts,
            error,
        )
        return error_response(*what)


class _Relayed(Response):
    """The service's answer, relayed as it comes: status and headers, then the
    body piece by piece until it ends, fails or the browser leaves."""

    def __init__(self, upstream: aiohttp.ClientResponse) -> None:
        self.upstream = upstream
        self.status_code = upstream.status
        self.background = None
        self.raw_headers = [
            (name, value)
            for name, value in upstream.raw_headers
            if name.lower() not in DROPPED_RESPONSE_HEADERS
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = self.upstream.content_length
        if scope["method"] == "HEAD" or (length is not None and length <= CHUNK_BYTES):
            await self._send_whole(scope, receive, send)
            return
        complete = False
        try:
            await send(self._start())
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    message: Message = {"type": ""}
                    while message["type"] != "http.disconnect":
                        message = await receive()
                    group.cancel_scope.cancel()

                group.start_soon(watch_disconnect)
                complete = await self._relay(send)
                group.cancel_scope.cancel()
        finally:
            if complete:
                self.upstream.release()  # the connection goes back to the pool
            else:
                self.upstream.close()  # the service sees its client go away

    def _start(self) -> Message:
        return {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }

    async def _send_whole(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A small answer (a manifest, an error, a HEAD): read whole, sent in
        one piece, without the watch for the browser leaving that a long
        download needs."""
        try:
            body = await self.upstream.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            # Nothing is out yet: the browser gets an error, not a short body.
            self.upstream.close()
            log.warning("export-service answer cut short: %r", error)
            failure = TIMED_OUT if isinstance(error, TimeoutError) else BAD_ANSWER
            await error_response(*failure)(scope, receive, send)
            return
        self.upstream.release()
        await send(self._start())
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay(self, send: Send) -> bool:
        content = self.upstream.content
        try:
            while chunk := await content.read(CHUNK_BYTES):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as error:
            # Headers are out: all that can be said is that the body is cut
            # short. Returning without the body's end makes the ASGI server
            # close the connection.
            log.warning("export-service answer cut short: %r", error)
            return False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


async def _forward(upstream: _Upstream, kind: str, request: Request) -> Response:
    body = await request.body() if request.method == "PUT" else None
    answer = await upstream.request(kind, request.scope, body)
    if isinstance(answer, Response):
        return answer
    return _Relayed(answer)


def _accel_response(prefix: str, request: Request, render_run_id: str) -> Response:
    """Hand the ZIP to the nginx in front (X-Accel-Redirect), after the
    service's id check: nginx unescapes the target and resolves ``..``."""
    try:
        checked = render_run_id_as_sent(render_run_id)
    except ExportServiceError as error:
        return error_response(error.status, error.code, error.message)
    target = prefix.rstrip("/") + SERVICE_PREFIX + EXPORT_PATH + "zip/" + quote(checked, safe="")
    query = request.scope.get("query_string", b"").decode("latin-1")
    if query:
        target += "?" + query
    return Response(headers={"X-Accel-Redirect": target})


# The routes' parameters, documented only: the endpoints take the id from the
# raw request target and forward the query as sent, so FastAPI need not parse
# or validate them (a fifth of the router's own time per manifest).
RUN_ID: dict[str, Any] = {
    "name": "render_run_id",
    "in": "path",
    "required": True,
    "description": "The project's render run id (surrounding whitespace is stripped).",
    "schema": {"type": "string"},
}
PARAM_RUN_ID: dict[str, Any] = {
    "name": "param_run_id",
    "in": "query",
    "required": False,
    "description": "The param run to include; empty, blank or absent: the one linked "
    "to the render run.",
    "schema": {"type": "string"},
}
# A selective export's two parameters, forwarded as sent with the rest of the query.
STEPS: dict[str, Any] = {
    "name": "steps",
    "in": "query",
    "required": False,
    "description": "Only these steps: comma-separated or repeated, any of render, "
    "midi_generation, param_generation. Absent: all three.",
    "style": "form",
    "explode": True,
    "schema": {"type": "array", "items": {"type": "string"}},
}
PREFIX: dict[str, Any] = {
    "name": "prefix",
    "in": "query",
    "required": False,
    "description": "Only the files under this path inside the run folder (repeatable: "
    "under any of them), matched on whole segments: stems takes stems/kick.wav, "
    "not stems2/x.wav.",
    "style": "form",
    "explode": True,
    "schema": {"type": "array", "items": {"type": "string"}},
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    texts = {
        404: "no link for this render run",
        412: "If-Match or If-Unmodified-Since failed",
        416: "range not satisfiable",
        422: "invalid run id, param run id or body; or more files than the service allows",
        502: "export_service_bad_answer: the service's answer could not be read",
        503: "export_service_unavailable (the service cannot be reached), or the service "
        "is busy (too_many_downloads) or its links file is unusable",
        504: "export_service_timeout: no answer within the first-byte timeout",
    }
    return {status: {"model": ErrorBody, "description": texts[status]} for status in statuses}


def export_proxy_router(
    base_url: str,
    token: str | None = None,
    *,
    connect_timeout: float = 3.0,
    first_byte_timeout: float = 20.0,
    idle_timeout: float = 60.0,
    dependencies: Sequence[Depends] = (),
    links: bool = False,
    links_dependencies: Sequence[Depends] = (),
    accel_redirect_prefix: str | None = None,
) -> APIRouter:
    """The backend's export routes, forwarded to export-service.

    ``base_url``: where the service listens (``http://127.0.0.1:8080``);
    ``token``: its ``auth.token``, sent as a bearer token.

    ``connect_timeout`` (s): to open a connection to the service (503 after);
    ``first_byte_timeout`` (s): from the request to the answer's headers,
    connecting included (504 after); ``idle_timeout`` (s): the longest pause
    between two pieces of a body (the download is cut after).

    ``dependencies``: the backend's own FastAPI dependencies (its login
    check...) for every route. ``links=True`` adds ``GET`` and ``PUT
    /air/export/links/{id}``: an unauthenticated write to the links file
    unless ``links_dependencies`` (e.g. ``[Depends(require_admin)]``) guard
    it; the original backend had no such route, so it is off by default.

    ``accel_redirect_prefix`` (e.g. ``"/_export_service"``): when set, a ZIP
    request carrying ``X-Export-Accel: nginx`` (set by the nginx recipe on
    the backend's location) is answered with only ``X-Accel-Redirect:
    <prefix>/api/air/export/zip/<id>?<query>`` and nginx streams the ZIP from
    the service; any other request (the backend reached directly) is streamed
    through the router as usual.

    Mount it where the backend mounted its export router:
    ``app.include_router(router, prefix="/api")``.
    """
    if links_dependencies and not links:
        raise ValueError("links_dependencies guard the links routes: pass links=True too")
    upstream = _Upstream(
        base_url, token, Timeouts(connect_timeout, first_byte_timeout, idle_timeout)
    )
    router = APIRouter(
        lifespan=upstream.lifespan, dependencies=list(dependencies), tags=["air:export"]
    )

    async def export_list(request: Request) -> Response:
        """The project's manifest: every file of its render, MIDI and param runs
        with a URL to fetch it (forwarded to export-service)."""
        return await _forward(upstream, "list", request)

    async def export_zip(request: Request) -> Response:
        """All of the project's files as one streamed ZIP, resumable with
        ``Range`` (forwarded to export-service)."""
        if (
            accel_redirect_prefix is not None
            and (ACCEL_HEADER, ACCEL_VALUE) in request.scope["headers"]
        ):
            run_id: str = request.scope["path_params"]["render_run_id"]
            return _accel_response(accel_redirect_prefix, request, run_id)
        return await _forward(upstream, "zip", request)

    manifest_200 = {"model": ExportManifest, "description": "the manifest"}
    zip_200 = {
        "description": "the ZIP (206 for a Range, 304 for If-None-Match)",
        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    }
    for method in ("GET", "HEAD"):
        suffix = "" if method == "GET" else "_head"
        router.add_api_route(
            EXPORT_PATH + "list/{render_run_id:path}",
            export_list,
            methods=[method],
            operation_id="air_export_list" + suffix,
            response_class=JSONResponse,
            responses={200: manifest_200, **_errors(412, 422, 502, 503, 504)},
            openapi_extra={"parameters": [RUN_ID, PARAM_RUN_ID, STEPS, PREFIX]},
        )
        router.add_api_route(
            EXPORT_PATH + "zip/{render_run_id:path}",
            export_zip,
            methods=[method],
            operation_id="air_export_zip" + suffix,
            response_class=Response,
            responses={200: zip_200, **_errors(412, 416, 422, 502, 503, 504)},
            openapi_extra={"parameters": [RUN_ID, PARAM_RUN_ID, STEPS, PREFIX]},
        )
    if links:
        _add_links_routes(router, upstream, list(links_dependencies))
    return router


def _add_links_routes(router: APIRouter, upstream: _Upstream, guards: list[Depends]) -> None:
    async def get_link(request: Request) -> Response:
        """The param run linked to a render run (forwarded to export-service)."""
        return await _forward(upstream, "links", request)

    async def put_link(request: Request) -> Response:
        """Link a render run to a param run (forwarded to export-service)."""
        return await _forward(upstream, "links", request)

    link_200 = {"model": Link, "description": "the link"}
    router.add_api_route(
        EXPORT_PATH + "links/{render_run_id:path}",
        get_link,
        methods=["GET"],
        operation_id="air_export_get_link",
        dependencies=guards,
        response_class=JSONResponse,
        responses={200: link_200, **_errors(404, 422, 502, 503, 504)},
        openapi_extra={"parameters": [RUN_ID]},
    )
    router.add_api_route(
        EXPORT_PATH + "links/{render_run_id:path}",
        put_link,
        methods=["PUT"],
        operation_id="air_export_put_link",
        dependencies=guards,
        response_class=JSONResponse,
        responses={200: link_200, **_errors(422, 502, 503, 504)},
        openapi_extra={
            "parameters": [RUN_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": LinkUpdate.model_json_schema()}},
            },
        },
    )


class SignedExportUrl(BaseModel):
    """A direct link to the service, good until ``expires_at``."""

    url: str = Field(description="The signed URL of the service's ZIP or manifest.")
    expires_at: int = Field(description="When it stops working: unix seconds (UTC).")


# The minting route's path: outside /air/export/, which an nginx in front
# (deploy/nginx/export-service.conf) sends to the service, so that the route
# always reaches the backend that mounts it.
SIGNED_EXPORT_PATH = "/air/signed-export/"
SIGNED_URL_KINDS = ("zip", "list")
# The query pairs a signed link may carry (the rest of the backend's query is
# not the service's business and is left out).
SIGNED_URL_PASSED = ("param_run_id", "steps", "prefix")


def signed_url_router(
    signing_secret: str,
    signed_url_base: str = "",
    *,
    expires_in: int = 900,
    dependencies: Sequence[Depends] = (),
) -> APIRouter:
    """``GET /air/signed-export/{render_run_id}?kind=zip|list``: a signed,
    expiring URL of the service's ZIP (default) or manifest for that run, as
    ``{"url": ..., "expires_at": <unix seconds>}``, so that the front end
    downloads from the service directly and the backend stays out of the
    data path. ``param_run_id``, ``steps`` and ``prefix`` (repeatable) of the
    request are carried into the URL, and covered by its signature.

    ``signing_secret``: the service's ``auth.signing_secret``;
    ``signed_url_base``: the service's address as the browser reaches it
    (``https://export.example.com``; ``""``: a path on the backend's own
    origin, for an nginx that routes it to the service); ``expires_in``:
    seconds each URL is good (at most the service's
    ``auth.max_signed_url_seconds``); ``dependencies``: the backend's login
    check. Without one, anyone who can reach the backend gets links.

    A bad run id or ``kind``, or a selection too long for a URL the service
    can read (``url_too_long``), is a 422 in the service's error shape. Mount it
    beside the proxy router: ``app.include_router(router, prefix="/api")``.
    """
    sign_url("/", expires_in, signing_secret, now=0)  # a short secret fails now
    if signed_url_base and not signed_url_base.startswith(("http://", "https://")):
        raise ValueError(f"signed_url_base must be '' or an http(s) URL, got {signed_url_base!r}")
    base = signed_url_base.rstrip("/")
    router = APIRouter(dependencies=list(dependencies), tags=["air:export"])

    async def signed_export_url(request: Request) -> Response:
        """A signed, expiring URL of the export's ZIP or manifest on export-service."""
        try:
            render_run_id = render_run_id_as_sent(request.path_params["render_run_id"])
        except ExportServiceError as error:
            return error_response(error.status, error.code, error.message)
        kind = request.query_params.get("kind", "zip")
        if kind not in SIGNED_URL_KINDS:
            return error_response(422, "invalid_kind", f"kind must be zip or list, not {kind!r}")
        pairs = [(k, v) for k, v in request.query_params.multi_items() if k in SIGNED_URL_PASSED]
        path = f"{SERVICE_PREFIX}{EXPORT_PATH}{kind}/{quote(render_run_id, safe='')}"
        if pairs:
            path += "?" + urlencode(pairs, quote_via=quote)
        now = int(time.time())
        try:
            url = sign_url(base + path, expires_in, signing_secret, now=now)
        except ValueError as error:  # a selection too long for any request line
            return error_response(422, "url_too_long", str(error))
        body = SignedExportUrl(url=url, expires_at=now + expires_in)
        return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})

    query = [
        {
            "name": "kind",
            "in": "query",
            "required": False,
            "description": "zip (default): the ZIP's URL; list: the manifest's.",
            "schema": {"type": "string", "enum": list(SIGNED_URL_KINDS), "default": "zip"},
        },
        # Carried into the signed URL as sent: the export routes' own parameters.
        PARAM_RUN_ID,
        STEPS,
        PREFIX,
    ]
    router.add_api_route(
        SIGNED_EXPORT_PATH + "{render_run_id:path}",
        signed_export_url,
        methods=["GET"],
        operation_id="air_export_signed_url",
        response_class=JSONResponse,
        responses={200: {"model": SignedExportUrl, "description": "the URL"}, **_errors(422)},
        openapi_extra={"parameters": [RUN_ID, *query]},
    )
    return router
