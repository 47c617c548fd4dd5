"""The access log and the request metrics: one line per request, however it ended.

aiohttp calls the access logger only for a response it finished sending; a
request cancelled on the way (the client hung up, the shutdown grace ran
out) would leave no trace. So the outermost middleware opens an
:class:`Exchange` per request and watches the request's task: when the task
ends without the access logger having written its line, the line is written
then, with how the request ended.

``bytes`` is the body bytes handed to the connection, not the headers: what
the response's writer wrote minus the header block, plus what a handler sent
around the writer (``sendfile``, see :func:`note_body_bytes`). What the
writer wrote is its ``output_size``, declared by aiohttp's public
``aiohttp.abc.AbstractStreamWriter`` but not documented: aiohttp tells a
response's body length only once it is complete (``body_length``), and a
cut one is what this log is for. tests/test_access.py fails if it changes
(test_bytes_is_the_body_sent_on_every_route).

A handler that fails after its response's headers went out cannot answer
500 any more: the connection is aborted (:func:`abort_after_headers`), so
the client sees a short transfer and never a second response inside the
body, and the line says ``500`` and ``error`` (the client saw the status line
of a 200 or 206, then too few bytes).

A request line that aiohttp cannot parse (``GET /a\\x01b HTTP/1.1``) never
reaches the application: aiohttp answers 400 itself. It gets one plain line
(``ended`` ``rejected``), is counted, and aiohttp's traceback for it is
dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from ..obs.logs import request_id
from ..obs.metrics import Metrics
from .keys import METRICS, SHUTTING_DOWN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The fields an access line adds to every log line's, and what ``ended``
# can be: the docs' log reference is generated from these (docs/hooks.py), and
# tests/test_access.py checks them against the lines written.
ACCESS_FIELDS = {
    "method": "the request's method (`-` for a request aiohttp could not parse)",
    "path": "the request's path, percent-decoded (`-` for a request aiohttp could not parse)",
    "status": "the status sent; 499 when the request ended before anything was answered",
    "bytes": "body bytes handed to the connection (not the headers); a cut transfer may "
    "count up to one write more than the client received",
    "duration_ms": "from the request to its last byte sent, or to the cut",
    "remote": "the client's address (the proxy's, behind nginx or the backend)",
    "request_id": "the request's id, as on every line",
    "ended": "how the request ended (below)",
    "error": "only when there is one: why the request was refused or cut",
}
ENDINGS = {
    "complete": "the whole body (its `Content-Length`) was handed to the connection, "
    "whatever the client did afterwards",
    "cut_short": "the body stopped before its `Content-Length`: a file changed or failed "
    "after the headers went out, a write was refused because the client had gone, or a "
    "stalled client was cut. The ZIP's or the file URL's own line says which",
    "client_gone": "the client went away before the end (status 499 when nothing was "
    "answered yet): a normal end, no traceback",
    "shutdown": "cut by the shutdown after `server.shutdown_grace_seconds`",
    "error": "the handler failed; an ERROR line with the traceback comes with it. When that "
    "happens after the headers went out, the line says status 500 though the client saw a "
    "200 or 206 status line, and the connection was aborted: the client got fewer bytes "
    "than `Content-Length`, never a second response inside the body",
    "rejected": "aiohttp could not parse the request and answered 400 itself (method and "
    "path `-`, aiohttp's reason in `error`)",
}

# The status logged and counted for a request that ended before its
# response's headers went out (nginx's "client closed request").
NOTHING_SENT = 499

# The status logged and counted for a response that failed after its
# headers went out (the status line the client saw said otherwise).
FAILED_AFTER_HEADERS = 500

# The message of the error aiohttp's writer raises for a write it refused.
# aiohttp raises the same ClientConnectionResetError, with another message,
# for a drain that failed after the last write went out (which refused
# nothing), and has no other way to tell the two apart: so the message is
# matched. tests/test_access.py fails if aiohttp changes it
# (test_aiohttps_refused_write_is_told_by_its_message).
_REFUSED_WRITE = "Cannot write to closing transport"


@dataclass
class Exchange:
    """What is known of one request while it is served."""

    started: float
    response: web.StreamResponse | None = None
    body_bytes_around_writer: int = 0
    logged: bool = False
    # The body did not all leave though the writer counted it: the handler
    # aborted a stalled client, or a write found the connection closed.
    cut: bool = False
    # The handler failed after the headers went out; the connection was aborted.
    failed: bool = False


_exchange: ContextVar[Exchange | None] = ContextVar("exchange", default=None)


def note_body_bytes(count: int) -> None:
    """Count body bytes that a handler sent around the response's writer."""
    exchange = _exchange.get()
    if exchange is not None:
        exchange.body_bytes_around_writer += count


def note_aborted() -> None:
    """The handler is aborting the connection (a stalled client): bytes
    handed to the transport may never leave, so the body is not complete."""
    exchange = _exchange.get()
    if exchange is not None:
        exchange.cut = True


def sent_response() -> web.StreamResponse | None:
    """The current request's response once its headers have gone out."""
    exchange = _exchange.get()
    response = exchange.response if exchange is not None else None
    return response if response is not None and response.prepared else None


def abort_after_headers(request: web.BaseRequest) -> None:
    """The response failed after its status line went out: no other answer
    can follow. Abort the connection (the client sees fewer bytes than
    ``Content-Length``, and a request pipelined behind it gets no answer
    written into this body) and log the request as failed."""
    exchange = _exchange.get()
    if exchange is not None:
        exchange.cut = exchange.failed = True
    if request.transport is not None:
        request.transport.abort()


def note_connection_error(error: BaseException | None) -> None:
    """A write to the client raised ``error``. aiohttp's writer counts a chunk
    in ``output_size`` before it finds the connection closed and refuses it;
    a failed drain (the client left after the last write went out) refuses
    nothing."""
    exchange = _exchange.get()
    if exchange is not None and _refused_write(error):
        exchange.cut = True


def _refused_write(error: BaseException | None) -> bool:
    return isinstance(error, ConnectionError) and str(error) == _REFUSED_WRITE


@web.middleware
async def track_exchange(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Opens the request's :class:`Exchange`; logs it if it ends unlogged.

    A client that is gone is a normal end of a request, wherever a handler
    finds out (the headers, a body write, reading the request's body): its
    line is written here and the response is returned, not the error raised.
    aiohttp logs a handler's ConnectionError as "Error handling request" with
    a traceback and tries to answer 500; a returned response it only tries to
    finish, and a write to the gone client ends the connection quietly.
    """
    exchange = Exchange(asyncio.get_running_loop().time())
    _exchange.set(exchange)
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(functools.partial(_log_if_cut, request, exchange))
    try:
        return await handler(request)
    except ConnectionError as error:
        exchange.cut = exchange.cut or _refused_write(error)
        _write_unlogged_line(request, exchange, "client_gone")
        response = exchange.response or web.Response(status=NOTHING_SENT)
        response.force_close()
        return response


async def remember_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the response whose headers are about to go out."""
    exchange = _exchange.get()
    if exchange is not None:
        exchange.response = response


def _header_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The size of the response's header block as HTTP/1.1 writes it: the
    status line, ``Name: value`` lines, each ended by CRLF, and a CRLF."""
    version = request.version
    status_line = f"HTTP/{version.major}.{version.minor} {response.status} {response.reason}"
    return (
        len(status_line.encode())
        + sum(
            len(name.encode()) + len(value.encode()) + 4 for name, value in response.headers.items()
        )
        + 4
    )


def _body_bytes(
    request: web.BaseRequest, response: web.StreamResponse, exchange: Exchange | None
) -> int:
    written = request.writer.output_size
    around = exchange.body_bytes_around_writer if exchange is not None else 0
    return max(0, written - _header_bytes(request, response)) + around


def _expected_body(request: web.BaseRequest, response: web.StreamResponse) -> int | None:
    if request.method == hdrs.METH_HEAD or response.status in (204, 304):
        return 0
    return response.content_length


def _complete(
    request: web.BaseRequest, response: web.StreamResponse, exchange: Exchange | None
) -> bool:
    """The whole body (its Content-Length) was handed to the connection and
    the handler did not abort it, whatever the client did afterwards (curl
    closes as soon as it has the last byte). Only a short body is cut."""
    expected = _expected_body(request, response)
    sent = _body_bytes(request, response, exchange)
    return (expected is None or sent >= expected) and not (exchange and exchange.cut)


def body_complete(request: web.BaseRequest, response: web.StreamResponse) -> bool:
    """:func:`_complete` for the current request (a handler asking whether its
    client, gone or cancelled now, had been handed everything)."""
    return _complete(request, response, _exchange.get())


# A query in aiohttp's reason for a refused request (it quotes up to 100
# bytes of the request line): up to the next space or quote.
_QUERY = re.compile(r"\?[^\s'\"]*")


def _without_queries(reason: str) -> str:
    """aiohttp's reason with every query cut out: the service never logs a
    query (a signed URL's signature is in it), not even of a request line
    too long or malformed to parse."""
    return _QUERY.sub("?<query not logged>", reason)


class AccessLog(AbstractAccessLogger):
    """Called by aiohttp once a response has been sent (or failed to be):
    one log line and the request metrics."""

    metrics: Metrics  # set per application by :func:`runner_options`

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        exchange = _exchange.get()
        if exchange is None:  # aiohttp's parser refused the request: 400 in plain text
            text = response.text if isinstance(response, web.Response) else None
            write_line(
                self.logger,
                self.metrics,
                request,
                response.status,
                "unmatched",
                _body_bytes(request, response, None),
                time,
                "rejected",
                error=_without_queries(text.partition("\n")[0]) if text else None,
            )
            return
        if exchange.logged:  # the client was gone: track_exchange wrote the line
            return
        exchange.logged = True
        # aiohttp calls this from its ``except ConnectionError`` when the
        # response's last write failed.
        exchange.cut = exchange.cut or _refused_write(sys.exc_info()[1])
        complete = _complete(request, response, exchange)
        write_line(
            self.logger,
            self.metrics,
            request,
            FAILED_AFTER_HEADERS if exchange.failed else response.status,
            route_name(request),
            _body_bytes(request, response, exchange),
            time,
            "error" if exchange.failed else "complete" if complete else "cut_short",
        )

    @property
    def enabled(self) -> bool:
        return True  # metrics are counted here even when the log level hides the line


def _log_if_cut(request: web.Request, exchange: Exchange, task: asyncio.Task[Any]) -> None:
    """The request's task ended: write its line if aiohttp did not."""
    if exchange.logged:
        return
    if task.cancelled():
        ended = "shutdown" if request.app[SHUTTING_DOWN].is_set() else "client_gone"
    else:
        ended = "error"
    _write_unlogged_line(request, exchange, ended)


def _write_unlogged_line(request: web.Request, exchange: Exchange, ended: str) -> None:
    """The line of a request that ended without aiohttp finishing its
    response: ``ended`` unless its whole body had been handed over (a
    cancellation while waiting for the last write to drain)."""
    exchange.logged = True
    response = exchange.response
    if response is not None and request.writer.output_size > 0:
        status, sent = response.status, _body_bytes(request, response, exchange)
        if exchange.failed:
            status, ended = FAILED_AFTER_HEADERS, "error"
        elif _complete(request, response, exchange):
            ended = "complete"
    else:
        status, sent = NOTHING_SENT, exchange.body_bytes_around_writer
    duration = asyncio.get_running_loop().time() - exchange.started
    write_line(
        ACCESS_LOGGER,
        request.app[METRICS],
        request,
        status,
        route_name(request),
        sent,
        duration,
        ended,
    )


ACCESS_LOGGER = logging.getLogger("export_service.access")  # obs/logs.py: LOGGER_NAMES


def route_name(request: web.BaseRequest) -> str:
    """The route's pattern (bounded label values), or ``unmatched``. Only for
    a request the application saw (aiohttp's own 400s have no match info)."""
    if not isinstance(request, web.Request):
        return "unmatched"
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def write_line(
    logger: logging.Logger,
    metrics: Metrics,
    request: web.BaseRequest,
    status: int,
    route: str,
    sent: int,
    duration: float,
    ended: str,
    error: str | None = None,
) -> None:
    """One access line and the request's metrics. A rejected request has no
    method or path to tell (aiohttp puts a placeholder there): ``-``, with
    aiohttp's reason as ``error``."""
    method, path = ("-", "-") if ended == "rejected" else (request.method, request.path)
    metrics.requests.labels(route, method, str(status)).inc()
    metrics.latency.labels(route).observe(duration)
    if ended not in ("complete", "rejected"):
        metrics.requests_cut_short.labels(route, ended).inc()
    fields: dict[str, object] = {
        "method": method,
        "path": path,
        "status": status,
        "bytes": sent,
        "duration_ms": round(duration * 1000, 2),
        "remote": request.remote,
        "request_id": request_id.get(),
        "ended": ended,
    }
    if error:
        fields["error"] = error
    logger.info(
        "%s %s %s %s %s%s",
        method,
        path,
        status,
        sent,
        ended,
        f" ({error})" if error else "",
        extra={"fields": fields},
    )


class _DropParseErrorTracebacks(logging.Filter):
    """aiohttp logs a traceback for every request it cannot parse; the access
    line says all there is to say about it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


_DROP_PARSE_ERROR_TRACEBACKS = _DropParseErrorTracebacks()


def runner_options(app: web.Application) -> dict[str, Any]:
    """What the server runner of ``app`` needs (``run_app``, tests): the
    access log, bound to the app's metrics."""
    logging.getLogger("aiohttp.server").addFilter(_DROP_PARSE_ERROR_TRACEBACKS)
    metrics = app[METRICS]

    class AppAccessLog(AccessLog):
        pass

    AppAccessLog.metrics = metrics
    return {
        "access_log": ACCESS_LOGGER,
        "access_log_class": AppAccessLog,
    }
