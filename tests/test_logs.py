"""logs: JSON and text lines (request ids, tracebacks, nothing forged), the
queue they go through, out-of-resources errors at most once per interval, and
what the log leaves out counted in /metrics."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import resource
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.errors import ConfigError
from export_service.obs import logs
from export_service.obs.logs import (
    JsonFormatter,
    RepeatLimiter,
    RequestIdFilter,
    TextFormatter,
    request_id,
)
from tests.conftest import AirTree
from tests.live import live_service


def _record(message: str, error: BaseException | None, created: float) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, exc_info)
    record.created = created
    return record


def test_an_out_of_resources_error_passes_once_per_interval_with_the_count() -> None:
    limiter = RepeatLimiter(10)
    emfile = OSError(errno.EMFILE, "Too many open files")
    accept = "socket.accept() out of system resource\nsocket: <fd=6>"
    passed = [
        record
        for index in range(300)
        if limiter.filter(record := _record(accept, emfile, 1000 + index / 100))  # 3 s
    ]
    assert len(passed) == 1 and passed[0].exc_info is None
    assert passed[0].getMessage() == (
        "socket.accept() out of system resource (Too many open files;"
        " at most one such line every 10 s)"
    )
    later = _record(accept, emfile, 1010.5)
    assert limiter.filter(later)
    assert "(Too many open files; 299 repeats suppressed in the last 10 s;" in later.getMessage()
    assert limiter.suppressed == 299
    # other messages, and other errors, are not held back
    assert limiter.filter(_record("another", emfile, 1010.6))
    other = _record("boom", ValueError("x"), 1010.7)
    assert limiter.filter(other) and other.exc_info is not None
    assert limiter.filter(_record(accept, OSError(errno.EPIPE, "pipe"), 1010.8))


def test_accept_retries_that_fire_after_the_server_closed_are_dropped_and_counted() -> None:
    """What asyncio logs for each retry of accepting that its refused accepts
    armed, when the listening socket has closed since (CPython gh-151615)."""
    limiter = RepeatLimiter(10)
    retry = (
        "Exception in callback BaseSelectorEventLoop._start_serving(<aiohttp.web_...>, "
        "<socket.socke...pe=1, proto=0>, None, <Server sockets=()>, 128, None, None)\n"
        "handle: <TimerHandle when=12189.1 BaseSelectorEventLoop._start_serving(...)>"
    )
    invalid = ValueError("Invalid file descriptor: -1")
    assert not any(limiter.filter(_record(retry, invalid, 1000 + index)) for index in range(300))
    assert limiter.suppressed == 300
    # another callback's ValueError, or this callback failing otherwise, is logged
    other = _record("Exception in callback Other._start_serving()", invalid, 1300)
    assert limiter.filter(other) and other.exc_info is not None
    assert limiter.filter(_record(retry, RuntimeError("x"), 1301))
    assert limiter.suppressed == 300


def _lowest_free_descriptor(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(number for number in range(len(used) + 1) if number not in used)


def test_a_service_out_of_descriptors_logs_the_accept_error_once(
    tree: AirTree, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[roots]\nrender = "{tree.render}"\nmidi_generation = "{tree.midi}"\n'
        f'param_generation = "{tree.param}"\n[links]\nfile = "{tree.links}"\n'
    )
    with live_service(["--config", str(config)]) as service:
        pid = service.process.pid
        limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_descriptor(pid), limits[1]))
        port = int(service.base_url.rsplit(":", 1)[1])
        try:
            with socket.create_connection(("127.0.0.1", port)):
                # The fault lasts 3 s (the behaviour under test: asyncio tries
                # the pending connection again and again meanwhile).
                time.sleep(3)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
        with urllib.request.urlopen(f"{service.base_url}/metrics", timeout=10) as answer:
            metrics = answer.read().decode()
        code, output = service.stop()
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    accept = [line for line in lines if "socket.accept() out of system resource" in line["message"]]
    assert len(accept) == 1, len(accept)
    assert "exception" not in accept[0] and "Too many open files" in accept[0]["message"]
    assert len(output) < 20_000
    (suppressed,) = [
        line
        for line in metrics.splitlines()
        if line.startswith("export_log_repeats_suppressed_total ")
    ]
    # asyncio tries the pending connection again many times a second; how
    # often depends on the machine's load, that it was suppressed does not.
    assert float(suppressed.split()[1]) >= 2


@pytest.mark.parametrize("seconds", [0, -1])
def test_the_interval_must_be_positive(seconds: float, tree: AirTree) -> None:
    with pytest.raises(ConfigError, match=r"logging\.repeated_error_seconds"):
        tree.settings(logging={"repeated_error_seconds": seconds})


def _counter(metrics: str, name: str) -> float:
    (line,) = [line for line in metrics.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


async def test_lines_dropped_by_a_full_log_queue_are_counted_in_metrics(
    client: TestClient[Any, Any],
) -> None:
    before = _counter(await (await client.get("/metrics")).text(), "export_log_lines_dropped_total")
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.setup_logging("INFO", "json", queue_size=1)
        logs.stop_logging()  # no writer left: one line fills the queue
        for number in range(3):
            logging.getLogger("export_service.test").info("line %d", number)
    finally:
        root.handlers, root.level = saved_handlers, saved_level
    after = _counter(await (await client.get("/metrics")).text(), "export_log_lines_dropped_total")
    assert after == before + 2


def test_error_lines_are_json_with_the_request_id_and_exception() -> None:
    token = request_id.set("req-9")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            record = logging.getLogger("t").makeRecord(
                "t", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info()
            )
        assert RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "failed x" and line["level"] == "ERROR"
    assert line["request_id"] == "req-9"
    assert "ValueError: boom" in line["exception"]


def test_logging_goes_through_a_queue_and_keeps_tracebacks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import export_service.obs.logs as logs

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.setup_logging("INFO", "json")
        token = request_id.set("q-1")
        try:
            raise KeyError("lost")
        except KeyError:
            logging.getLogger("export_service.test").exception("failed %d", 7)
        finally:
            request_id.reset(token)
        logs.stop_logging()  # writes out the queue
    finally:
        root.handlers, root.level = saved_handlers, saved_level
    (line,) = [json.loads(text) for text in capsys.readouterr().err.splitlines()]
    assert line["message"] == "failed 7"
    assert line["request_id"] == "q-1"
    assert "KeyError: 'lost'" in line["exception"]


def test_text_tracebacks_are_indented_and_escaped() -> None:
    try:
        raise ValueError("boom\n2026-11-24 00:00:00,000 INFO forged")
    except ValueError as error:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "a\\b %s", ("\x00",), None)
        record.exc_info = (ValueError, error, error.__traceback__)
    lines = TextFormatter().format(record).split("\n")
    assert lines[0].endswith("ERROR t a\\\\b \\x00")
    assert all(line.startswith("  ") for line in lines[1:])
    assert "  2026-11-24 00:00:00,000 INFO forged" in lines


def test_text_lines_carry_the_json_fields_readably() -> None:
    """Request id, duration, client address and the time in UTC with its
    zone, as in JSON (a text line had none of them); the fields the message
    shows already are not repeated; a value with a space is quoted."""
    record = logging.LogRecord(
        "export_service.access", logging.INFO, __file__, 1, "GET /a 200", (), None
    )
    record.created = 1796632200.025  # 2026-12-07 08:30:00.025 UTC
    record.request_id = "r-1"
    record.fields = {
        "method": "GET",
        "status": 200,
        "duration_ms": 1.5,
        "remote": "::1",
        "error": "Bad status line",
        "empty": "",
    }
    assert TextFormatter().format(record) == (
        "2026-12-07T08:30:00.025+00:00 INFO export_service.access GET /a 200 request_id=r-1 "
        'duration_ms=1.5 remote=::1 error="Bad status line" empty=""'
    )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["time"] == "2026-12-07T08:30:00.025+00:00"


def test_every_logger_of_the_package_has_a_name_from_the_one_list() -> None:
    """Operators filter on logger names, so they outlive module moves: each
    module names its logger with a literal from LOGGER_NAMES, never
    ``__name__`` (which changes when a module moves), and each listed name
    is used."""
    package = Path(logs.__file__).resolve().parent.parent
    call = re.compile(r"logging\.getLogger\(([^)]*)\)")
    used = set()
    for path in package.rglob("*.py"):
        for argument in call.findall(path.read_text()):
            if argument in ('"aiohttp.server"', '"asyncio"', ""):
                continue
            assert argument.startswith('"'), f"{path.name}: getLogger({argument})"
            used.add(argument.strip('"'))
    assert used == set(logs.LOGGER_NAMES)
