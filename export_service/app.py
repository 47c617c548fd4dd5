"""The application factory, its typed state, and the one error middleware."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus

from aiohttp import web

from .config import Settings
from .errors import ExportServiceError
from .links import LinkStore
from .routes import file_route, routes
from .state import IO_EXECUTOR, LINKS, SETTINGS

log = logging.getLogger(__name__)

_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_response(status: int, code: str, message: str) -> web.Response:
    """The original's error shape, rendered compactly as FastAPI renders it."""
    body = {"detail": {"error": code, "message": message}}
    return web.json_response(body, status=status, dumps=_compact_json)


def _compact_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error leaves as ``{"detail": {"error": ..., "message": ...}}``."""
    try:
        return await handler(request)
    except ExportServiceError as error:
        return error_response(error.status, error.code, error.message)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_ERROR_CODES.get(error.status, HTTPStatus(error.status).name.lower())
        message = f"{error.reason}: {request.method} {request.path}"
        response = error_response(error.status, code, message)
        if "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except ConnectionError:
        raise  # the client is gone: there is no one to answer
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error; see the service log")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app[LINKS] = LinkStore(settings.links.file)

    async def io_executor(app: web.Application) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(
            max_workers=settings.limits.io_threads, thread_name_prefix="export-io"
        )
        app[IO_EXECUTOR] = executor
        yield
        executor.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(io_executor)
    app.add_routes(routes)
    urls = settings.urls
    app.add_routes(
        [
            file_route("render", urls.render),
            file_route("midi_generation", urls.midi_generation),
            file_route("param_generation", urls.param_generation),
        ]
    )
    return app
