"""A FastAPI router that forwards the AIR backend's export routes to export-service.

The backend replaces its own export module with::

    app.include_router(export_proxy_router("http://127.0.0.1:8080"), prefix="/api")

and its front end keeps calling ``/api/air/export/...``. Needs the optional
extra: ``pip install 'export-service[fastapi]'`` (FastAPI and httpx).

The routes are plain ASGI endpoints rather than FastAPI path operations, on
purpose: a path parameter is decoded and normalised by the framework, while the
service must see an id exactly as the browser sent it (``..`` or ``%2e%2e``
reaches the service as such and is refused there with 422). The id is taken
from the raw request target in the ASGI scope; the route before it is the one
the framework matched (on the decoded path), so ``/air/%65xport/zip/x`` goes to
the service's ZIP route like ``/air/export/zip/x``. The answer is streamed chunk by
chunk with the service's status and headers, so memory stays flat whatever the
ZIP's size, and the upstream request is closed as soon as the browser goes away.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote

import anyio
import httpx
from fastapi import APIRouter
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

log = logging.getLogger(__name__)

EXPORT_PATH = b"/air/export/"
SERVICE_PREFIX = b"/api"

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
        b"content-length",
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


def _error(status: int, code: str, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The service's own error shape, so the front end handles both alike."""
    body = json.dumps({"detail": {"error": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers, body


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


class _Forward:
    """One ASGI endpoint forwarding one kind of route (``list``, ``zip``,
    ``links``) to ``base_url``: the raw id, the raw query and the body."""

    def __init__(self, base_url: str, token: str | None, timeout: httpx.Timeout, kind: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.prefix = SERVICE_PREFIX + EXPORT_PATH + kind.encode() + b"/"

    def _target(self, scope: Scope) -> bytes:
        """The service's request target: its route for this kind, then the id
        and the query byte for byte as the browser sent them (httpx would remove
        ``..`` segments from a URL; a raw target is sent as it is)."""
        target = self.prefix + _raw_id(scope).encode("latin-1")
        query: bytes = scope.get("query_string", b"")
        return target + b"?" + query if query else target

    def _headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name.lower() in FORWARDED_REQUEST_HEADERS
        ]
        if self.token:
            headers.append((b"authorization", b"Bearer " + self.token.encode()))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def body() -> AsyncIterator[bytes]:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                more = message.get("more_body", False)
                yield message.get("body", b"")

        method: str = scope["method"]
        target = self._target(scope)
        url = self.base_url + target.decode("latin-1")
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            request = client.build_request(
                method,
                self.base_url,
                headers=self._headers(scope),
                content=body() if method in ("PUT", "POST") else None,
                extensions={"target": target},
            )
            try:
                upstream = await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                log.warning("export-service unreachable on %s %s: %r", method, url, error)
                message = f"export-service cannot be reached: {error!r}"
                await self._answer(send, *_error(503, "export_service_unavailable", message))
                return
            except httpx.TimeoutException as error:
                log.warning("export-service timed out on %s %s: %r", method, url, error)
                message = f"export-service did not answer in time: {error!r}"
                await self._answer(send, *_error(502, "export_service_timeout", message))
                return
            except httpx.HTTPError as error:
                log.warning("export-service failed on %s %s: %r", method, url, error)
                message = f"export-service gave no valid answer: {error!r}"
                await self._answer(send, *_error(502, "bad_gateway", message))
                return
            try:
                await self._stream(upstream, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    await upstream.aclose()

    async def _stream(self, upstream: httpx.Response, receive: Receive, send: Send) -> None:
        """The service's answer, chunk by chunk, until it ends or the browser leaves."""
        headers = [
            (name, value)
            for name, value in upstream.headers.raw
            if name.lower() not in DROPPED_RESPONSE_HEADERS
        ]
        await send(
            {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
        )
        async with anyio.create_task_group() as group:

            async def watch_disconnect() -> None:
                message: Message = {"type": ""}
                while message["type"] != "http.disconnect":
                    message = await receive()
                group.cancel_scope.cancel()

            group.start_soon(watch_disconnect)
            try:
                async for chunk in upstream.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as error:
                # Headers are out: all that can be said is that the body is cut short.
                log.warning("export-service answer cut short: %r", error)
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()

    @staticmethod
    async def _answer(
        send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def export_proxy_router(
    base_url: str, token: str | None = None, timeout: float = 60.0
) -> APIRouter:
    """The backend's export routes (manifest, ZIP, links), forwarded to export-service.

    ``base_url``: where the service listens (``http://127.0.0.1:8080``);
    ``token``: its ``auth.token``, sent as a bearer token; ``timeout``: seconds
    to wait to connect and between two reads of the answer. Mount it where the
    backend mounted its export router: ``app.include_router(router, prefix="/api")``.
    """
    limits = httpx.Timeout(timeout, connect=min(timeout, 5.0))
    router = APIRouter()
    router.routes.extend(
        Route(
            f"/air/export/{kind}/{{render_run_id:path}}",
            _Forward(base_url, token, limits, kind),
            methods=methods,
        )
        for kind, methods in (
            ("list", ["GET", "HEAD"]),
            ("zip", ["GET", "HEAD"]),
            ("links", ["GET", "PUT"]),
        )
    )
    return router
