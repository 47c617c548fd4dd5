"""Logging: JSON lines (or plain text), request ids, and one line per request.

The request id (``X-Request-ID`` from the client, else generated) lives in a
context variable, so every log line written while serving a request carries
it, also from the worker threads (``state.run_blocking`` and ``state.run_zip_work``
copy the context).

Records are handed to a listener thread through a bounded queue, so a slow
log reader (a full pipe, a stalled collector) never blocks the event loop;
when the queue is full, records are dropped and counted instead.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import logging.handlers
import queue
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .state import METRICS

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id,
    the record's ``fields`` extra, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if current_request_id := getattr(record, "request_id", None):
            entry["request_id"] = current_request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Enqueues without ever waiting; a record that does not fit is dropped."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Freeze the message and the traceback's text in the caller's thread,
        leaving the formatting (JSON or text) to the writer."""
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = record.exc_text or _TRACEBACKS.formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            _DroppingQueueHandler.dropped += 1


_TRACEBACKS = logging.Formatter()
_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str, format: str, queue_size: int = 10_000) -> None:
    """Root logging to stderr, written by a background thread."""
    global _listener
    stop_logging()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(
        JsonFormatter()
        if format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    records: queue.Queue[logging.LogRecord] = queue.Queue(queue_size)
    handler = _DroppingQueueHandler(records)
    handler.addFilter(RequestIdFilter())  # runs in the caller, where the request's context is
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()


@atexit.register
def stop_logging() -> None:
    """Write out what is queued and stop the logging thread (idempotent)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def route_name(request: web.BaseRequest) -> str:
    """The route's pattern (bounded label values), or ``unmatched``."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


class AccessLog(AbstractAccessLogger):
    """Called by aiohttp once a response is completely sent: one log line and
    the request metrics, with the final byte count and duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        route = route_name(request)
        app = getattr(request, "app", None)
        if app is not None and METRICS in app:
            metrics = app[METRICS]
            metrics.requests.labels(route, request.method, str(response.status)).inc()
            metrics.latency.labels(route).observe(time)
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "bytes": response.body_length,
            "duration_ms": round(time * 1000, 2),
            "remote": request.remote,
            "request_id": response.headers.get("X-Request-ID"),
        }
        self.logger.info(
            "%s %s %s %s",
            request.method,
            request.path,
            response.status,
            response.body_length,
            extra={"fields": fields},
        )

    @property
    def enabled(self) -> bool:
        return True  # metrics are counted here even when the log level hides the line
