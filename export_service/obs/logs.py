"""Logging: JSON lines (or plain text) and request ids (the access log: access.py).

The request id (``X-Request-ID`` from the client, else generated) lives in a
context variable, so every log line written while serving a request carries
it, also from the worker threads (the hops in ``offload`` copy the context).

Records are handed to a listener thread through a bounded queue, so a slow
log reader (a full pipe, a stalled collector) never blocks the event loop;
when the queue is full, records are dropped and counted instead.

An error that says the process is out of resources (descriptors, buffers,
memory) is logged at most once per ``repeat_seconds`` per message, without
its traceback, with how many repeats were suppressed: asyncio logs
"socket.accept() out of system resource" for every try of every pending
connection (about 127 a second for one), which would flood the log exactly
when the process can least afford it. Each of those tries also arms a retry
of the listening socket a second later (CPython gh-151615, fixed after 3.11):
when the service stops within that second, every retry fails on the closed
socket ("Exception in callback BaseSelectorEventLoop._start_serving",
``ValueError: Invalid file descriptor: -1``), hundreds of tracebacks of a
server that is already gone. Those are dropped and counted with the repeats.

Every line is one record: JSON escapes control characters by itself, and
the text format escapes them (``\\n``, ``\\x1b``...) and indents a traceback,
so a request path holding ``%0A`` cannot write a line of its own.
"""

from __future__ import annotations

import atexit
import copy
import errno
import json
import logging
import logging.handlers
import queue
import sys
import threading
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

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
            "time": _utc_time(record),
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


# Control characters (C0, DEL, C1) and the Unicode line breaks, as Python
# writes them in a string literal; the backslash too, so an escape in the
# log cannot be mistaken for one in the data.
_ESCAPES = {
    code: repr(chr(code))[1:-1]
    for code in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, ord("\\"))
}


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters written as escapes."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value...``, one line per record, with
    what a JSON line holds: the time in UTC with its zone (as JSON's), the
    request id and the record's ``fields`` (those the message does not
    already show as a word: an access line's method, path, status...). A
    traceback follows on lines indented by two spaces (no line of it starts
    like a record)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        words = set(message.split(" "))
        extra: dict[str, object] = {}
        if current_request_id := getattr(record, "request_id", None):
            extra["request_id"] = current_request_id
        extra.update(getattr(record, "fields", {}))
        pairs = " ".join(
            f"{key}={_text_value(value)}"
            for key, value in extra.items()
            if value is not None and str(value) not in words
        )
        line = escape_controls(
            f"{_utc_time(record)} {record.levelname} {record.name} {message}"
            + (f" {pairs}" if pairs else "")
        )
        exc_text = record.exc_text
        if record.exc_info and not exc_text:
            exc_text = self.formatException(record.exc_info)
        return f"{line}\n{_indent(exc_text)}" if exc_text else line


def _utc_time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _text_value(value: object) -> str:
    """A field's value as one word: quoted (JSON) when it holds a space or
    a quote, or is empty."""
    text = str(value)
    return (
        json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=') else text
    )


def _indent(text: str) -> str:
    return "\n".join("  " + escape_controls(line) for line in text.splitlines())


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


_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# How asyncio reports a retry of accepting that fires after its socket closed.
_RETRY_AFTER_CLOSE = "Exception in callback BaseSelectorEventLoop._start_serving("


class RepeatLimiter(logging.Filter):
    """Lets an out-of-resources error through once per ``seconds`` per
    message (its first line), without the traceback, telling how many
    repeats were suppressed since; drops (and counts) the accept retries that
    fire after the server closed; other records pass untouched."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.suppressed = 0  # in all, for whoever wants to count them
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # message -> (let through, repeats since)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ValueError) and record.getMessage().startswith(_RETRY_AFTER_CLOSE):
            with self._lock:
                self.suppressed += 1
            return False
        if not (isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES):
            return True
        message = record.getMessage().partition("\n")[0]
        with self._lock:
            let_through, repeats = self._last.get(message, (-self.seconds, 0))
            if record.created - let_through < self.seconds:
                self._last[message] = (let_through, repeats + 1)
                self.suppressed += 1
                return False
            self._last[message] = (record.created, 0)
        since = f"; {repeats} repeats suppressed in the last {self.seconds:g} s" if repeats else ""
        record.msg = (
            f"{message} ({error.strerror}{since}; at most one such line every {self.seconds:g} s)"
        )
        record.args = None
        record.exc_info = record.exc_text = None
        return True


# The names of the service's loggers: what operators filter on. They are the
# module names of the flat layout the package had until it was split into
# subpackages, kept as they were so that filters keep working; each module
# names its logger with one of these literals (tests/test_logs.py checks that
# no other name is used), and the log reference lists them from here.
LOGGER_NAMES = {
    "export_service": "the command line: where serve listens, its roots, when it stopped",
    "export_service.access": "the access log: one line per request, however it ended",
    "export_service.app": "an unexpected error, or a failure after the headers went out",
    "export_service.routes": "a ZIP download's end: why it stopped early",
    "export_service.file_urls": "a file URL's end: why it stopped early",
    "export_service.exports": "the roots: a root that became unreadable, or readable again",
    "export_service.scanning": "a run folder's listing: what it skipped, a scan stopped",
    "export_service.archive": "a ZIP's plan: a file left out of it, and why",
    "export_service.links": "the links file: unusable, records ignored, a link not written",
    "export_service.ops": "readiness: each change of its state",
    "export_service.shutdown": "a graceful stop: what it waited for and what it cut",
    "export_service.fastapi_proxy": "the backend's proxy: a relay that failed or was cut short",
}

# asyncio's accept loop and its transports log through this logger.
_ASYNCIO = logging.getLogger("asyncio")
_repeat_limiter: RepeatLimiter | None = None


def suppressed_repeats() -> int:
    """How many out-of-resources errors were held back since logging was set up."""
    return _repeat_limiter.suppressed if _repeat_limiter is not None else 0


def dropped_lines() -> int:
    """How many log lines were dropped because the queue to the writing thread
    was full, since the process started."""
    return _DroppingQueueHandler.dropped


_TRACEBACKS = logging.Formatter()
_listener: logging.handlers.QueueListener | None = None


def setup_logging(
    level: str, format: str, queue_size: int = 10_000, repeat_seconds: float = 10.0
) -> None:
    """Root logging to stderr, written by a background thread; out-of-resources
    errors at most once per ``repeat_seconds`` per message. ``format`` is
    "json", "text", or "auto": text when stderr is a terminal (a person
    reading), JSON otherwise (a container's log, a pipe, a file)."""
    global _listener, _repeat_limiter
    stop_logging()
    if _repeat_limiter is not None:
        _ASYNCIO.removeFilter(_repeat_limiter)
    _repeat_limiter = RepeatLimiter(repeat_seconds)
    _ASYNCIO.addFilter(_repeat_limiter)
    writer = logging.StreamHandler(sys.stderr)
    text = format == "text" or (format == "auto" and sys.stderr.isatty())
    writer.setFormatter(TextFormatter() if text else JsonFormatter())
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
