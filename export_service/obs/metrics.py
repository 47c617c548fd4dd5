"""Prometheus metrics, one registry per application (so apps never share counts)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .logs import dropped_lines, suppressed_repeats

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 1)


class _LogCounts(Collector):
    """What the log left out, counted by logs.py (which imports no metrics)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "export_log_repeats_suppressed",
            "Out-of-resources errors (no descriptor left to accept with...) not logged "
            "because the same message was logged less than logging.repeated_error_seconds ago, "
            "and the accept retries they armed that failed after the server closed",
            value=suppressed_repeats(),
        )
        yield CounterMetricFamily(
            "export_log_lines_dropped",
            "Log lines dropped because the queue to the log writer was full "
            "(stderr's reader did not keep up)",
            value=dropped_lines(),
        )


class Metrics:
    """The service's Prometheus metrics, in a registry of their own: each app
    counts its own requests and downloads (two apps in one process, as in the
    tests, never share counts). The process's metrics and the log's counts
    (repeats suppressed, lines dropped) are the process's, the same in every
    app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # RSS, CPU, open fds
        self.registry.register(_LogCounts())
        self.requests = Counter(
            "export_http_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.requests_cut_short = Counter(
            "export_http_requests_cut_short",
            "Requests that ended before their response was complete, by route and how "
            "(cut_short: the body stopped early; client_gone, shutdown: cancelled before "
            "the end; error)",
            ["route", "ended"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "export_http_request_duration_seconds",
            "Time from request to the last byte of the response, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.zips_in_flight = Gauge(
            "export_zip_streams_in_flight",
            "ZIP downloads streaming now",
            registry=self.registry,
        )
        self.zip_bytes = Counter(
            "export_zip_bytes_sent", "ZIP bytes written to clients", registry=self.registry
        )
        self.zips_cut_short = Counter(
            "export_zip_downloads_cut_short",
            "ZIP downloads that ended before their last byte, by reason "
            "(source_changed, client_gone, stalled, shutdown, error)",
            ["reason"],
            registry=self.registry,
        )
        self.files_skipped = Counter(
            "export_zip_files_skipped",
            "Files left out of a ZIP because they could not be opened when it was planned "
            "(or their entry name is longer than a ZIP can hold)",
            registry=self.registry,
        )
        self.scan_unlisted = Counter(
            "export_scan_unlisted",
            "Paths below a run folder that could not be listed for a manifest or a ZIP, so "
            "their files are left out, by reason (permission, name_too_long, error)",
            ["reason"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "export_event_loop_lag_seconds",
            "How late a timer that wakes every 20 ms runs: time the event loop was busy "
            "or waited for a CPU",
            buckets=_LAG_BUCKETS,
            registry=self.registry,
        )
        self.readiness_problems = Gauge(
            "export_readiness_problem",
            "1 while a readiness condition has a problem, else 0, by condition: roots (not "
            "ready: /readyz answers 503), links_file and descriptors (degraded: /readyz "
            "answers 200 with the problems, exports go on); updated by /readyz and /metrics",
            ["condition"],
            registry=self.registry,
        )
        self._readiness: dict[str, tuple[str, ...]] | None = None
        self._readiness_lock = threading.Lock()  # /readyz and /metrics run in threads
        self.zips_refused = Counter(
            "export_zip_downloads_refused",
            "ZIP downloads refused because max_concurrent_zips were streaming",
            registry=self.registry,
        )

    def count_unlisted(self, unlisted: Mapping[str, int]) -> None:
        """Count one scan's unlisted paths (a manifest's, a ZIP's), by reason."""
        for reason, count in unlisted.items():
            self.scan_unlisted.labels(reason).inc(count)

    def record_readiness(self, problems: Mapping[str, tuple[str, ...]]) -> bool:
        """Set the readiness gauge of each condition (``problems`` names every
        condition, with no text where it is fine); True when anything changed
        since the last call, so the caller logs once per change."""
        with self._readiness_lock:
            for condition, texts in problems.items():
                self.readiness_problems.labels(condition).set(1 if texts else 0)
            changed = self._readiness != dict(problems)
            self._readiness = dict(problems)
            return changed

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format. Blocking: the process's
        metrics are read from /proc."""
        return generate_latest(self.registry)
