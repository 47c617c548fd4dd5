"""Logging: JSON lines (or plain text), request ids, and one line per request.

The request id (``X-Request-ID`` from the client, else generated) lives in a
context variable, so every log line written while serving a request carries
it, also from the I/O threads (``state.run_blocking`` copies the context).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from .state import METRICS

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


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
