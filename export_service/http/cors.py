"""CORS: which pages (origins) may read the service's answers, and the preflight.

With ``cors.allowed_origins`` empty nothing here is installed and every answer
is as without it. Otherwise (``docs/how-to/cors.md``):

- every answer of the export API, the file URLs and ``/openapi.json`` (200,
  206, 304, and the JSON errors alike) carries ``Vary: Origin``; one to a
  request whose ``Origin`` is allowed also carries
  ``Access-Control-Allow-Origin`` (that origin, or ``*``) and
  ``Access-Control-Expose-Headers`` (:data:`EXPOSED_HEADERS`); an origin not
  allowed gets no ``Access-Control-*`` header at all;
- a preflight (``OPTIONS`` with ``Origin`` and
  ``Access-Control-Request-Method``) is answered before the bearer token is
  checked (browsers send none with it): 204 for an allowed origin asking for
  GET or HEAD with headers of :data:`ALLOWED_HEADERS`, else 403
  ``cors_preflight_refused``;
- ``/healthz``, ``/readyz`` and ``/metrics`` are for orchestrators and
  scrapers: no CORS there (an ``OPTIONS`` to them is a 405, as before).

No ``Access-Control-Allow-Credentials``: the service reads no cookie, and the
bearer token is a header a page sets itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from ..config import CorsSettings
from ..errors import CorsPreflightRefused
from .ops import OPEN_PATHS
from .zip_response import EXPORT_HEADERS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# What a download page reads of an answer besides the CORS-safelisted headers:
# the file name, the size (progress), what a resume needs, when to retry, the
# request id to quote, and the ZIP's counts.
EXPOSED_HEADERS = (
    hdrs.CONTENT_DISPOSITION,
    hdrs.CONTENT_LENGTH,
    "ETag",  # as the service spells it (hdrs.ETAG is "Etag")
    hdrs.ACCEPT_RANGES,
    hdrs.CONTENT_RANGE,
    hdrs.LAST_MODIFIED,
    hdrs.RETRY_AFTER,
    "X-Request-ID",
    *EXPORT_HEADERS,
)
ALLOWED_METHODS = (hdrs.METH_GET, hdrs.METH_HEAD)
# The request headers a page on another origin may send: the token, a resume,
# the conditional requests the service answers, and a request id of its own.
ALLOWED_HEADERS = (
    hdrs.AUTHORIZATION,
    hdrs.RANGE,
    hdrs.IF_RANGE,
    hdrs.IF_NONE_MATCH,
    hdrs.IF_MATCH,
    hdrs.IF_MODIFIED_SINCE,
    hdrs.IF_UNMODIFIED_SINCE,
    "X-Request-ID",
)
_PREFLIGHT_VARY = (
    hdrs.ORIGIN,
    hdrs.ACCESS_CONTROL_REQUEST_METHOD,
    hdrs.ACCESS_CONTROL_REQUEST_HEADERS,
)


class Cors:
    """The CORS answers for ``settings``: a hook for every response and a
    middleware for preflights (see the module's docstring)."""

    def __init__(self, settings: CorsSettings) -> None:
        self._origins = frozenset(settings.allowed_origins)
        self._any = "*" in self._origins
        self._max_age = str(settings.max_age_seconds)
        self._exposed = ", ".join(EXPOSED_HEADERS)
        self._allowed_headers = {name.lower() for name in ALLOWED_HEADERS}

    def allows(self, origin: str) -> bool:
        """Whether a page of ``origin`` (an ``Origin`` header) may read answers."""
        return self._any or origin in self._origins

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """``Vary: Origin`` and, for an allowed origin, its CORS headers, on
        whatever answer is about to go out (a stream, a 304, an error)."""
        if request.path in OPEN_PATHS:
            return
        _add_vary(response, (hdrs.ORIGIN,))
        origin = request.headers.get(hdrs.ORIGIN)
        if (
            origin is None
            or not self.allows(origin)
            or hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers  # a preflight's
        ):
            return
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*" if self._any else origin
        response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self._exposed

    def middleware(self) -> Middleware:
        """Answers preflights; to go before the bearer token's check."""

        @web.middleware
        async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
            if (
                request.method != hdrs.METH_OPTIONS
                or hdrs.ORIGIN not in request.headers
                or hdrs.ACCESS_CONTROL_REQUEST_METHOD not in request.headers
                or request.path in OPEN_PATHS
            ):
                return await handler(request)
            return self._preflight_answer(request)

        return preflight

    def _preflight_answer(self, request: web.Request) -> web.Response:
        origin = request.headers[hdrs.ORIGIN]
        if not self.allows(origin):
            raise CorsPreflightRefused(f"origin {origin!r} is not in cors.allowed_origins")
        method = request.headers[hdrs.ACCESS_CONTROL_REQUEST_METHOD]
        if method not in ALLOWED_METHODS:
            raise CorsPreflightRefused(
                f"a page on another origin may only GET or HEAD here, not {method!r}"
            )
        asked = [
            name.strip().lower()
            for name in request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS, "").split(",")
            if name.strip()
        ]
        refused = [name for name in asked if name not in self._allowed_headers]
        if refused:
            raise CorsPreflightRefused(
                f"request header(s) {', '.join(refused)} not allowed from another origin;"
                f" allowed: {', '.join(ALLOWED_HEADERS)}"
            )
        response = web.Response(status=204)
        response.headers.update(
            {
                hdrs.ACCESS_CONTROL_ALLOW_ORIGIN: "*" if self._any else origin,
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(ALLOWED_METHODS),
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(asked or ALLOWED_HEADERS),
                hdrs.ACCESS_CONTROL_MAX_AGE: self._max_age,
            }
        )
        _add_vary(response, _PREFLIGHT_VARY)
        return response


def _add_vary(response: web.StreamResponse, names: tuple[str, ...]) -> None:
    """Adds ``names`` to the answer's ``Vary`` (kept once each, any case)."""
    present = [item.strip() for item in response.headers.get(hdrs.VARY, "").split(",")]
    known = {item.lower() for item in present if item}
    added = [name for name in names if name.lower() not in known]
    if added:
        response.headers[hdrs.VARY] = ", ".join([item for item in present if item] + added)
