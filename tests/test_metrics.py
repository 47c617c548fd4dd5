"""metrics: the names /metrics exposes (a contract with dashboards and alerts:
docs/reference/metrics.md), one registry per application, the log's count read when
scraped. (What requests count: tests/test_access.py, tests/test_ops.py.)"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.metrics import MetricWrapperBase

from export_service.obs import metrics as metrics_module
from export_service.obs.metrics import Metrics
from tests.docs_site import hooks


async def test_the_docs_metric_list_is_what_metrics_exposes(
    client: TestClient[Any, Any],
) -> None:
    """docs/reference/metrics.md's table is generated from the registry
    (docs/hooks.py): it lists each series /metrics exposes, with its labels."""
    documented = {name: labels for name, _, labels, _ in hooks().metric_series()}
    text = await (await client.get("/metrics")).text()
    exposed = {
        line.split()[2]
        for line in text.splitlines()
        if line.startswith("# TYPE ") and not line.split()[2].endswith("_created")
    }
    assert set(documented) == exposed
    table = hooks().metrics_markdown()
    assert "| `export_zip_downloads_cut_short_total` | counter | `reason` |" in table


def test_the_documented_labels_are_the_labels_every_series_carries() -> None:
    """docs/hooks.py reads a metric's label names from prometheus-client's
    private ``_labelnames``: the library has no public accessor, and a
    labelled metric without a child yet has no sample to read them from.
    This pins that coupling by behaviour: every metric, given one child
    through the public ``labels()``, exposes samples carrying exactly the
    labels the reference lists, in that order."""
    documented = {name: labels for name, _, labels, _ in hooks().metric_series()}
    metrics = Metrics()
    labelled = set()
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            family = next(iter(wrapper.describe()))
            name = family.name + ("_total" if family.type == "counter" else "")
            if documented[name]:
                wrapper.labels(*("x" for _ in documented[name].split(", ")))
                labelled.add(name)
    assert len(labelled) == 6  # requests, cut short, latency, ZIPs cut short, unlisted, readiness
    seen = set()
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        for sample in family.samples:
            labels = [label for label in sample.labels if label != "le"]  # a bucket's bound
            assert ", ".join(labels) == documented[name], name
            seen.add(name)
    assert labelled <= seen


def test_labelled_series_carry_their_labels() -> None:
    metrics = Metrics()
    metrics.requests.labels("/r", "GET", "200").inc()
    metrics.requests_cut_short.labels("/r", "client_gone").inc()
    metrics.zips_cut_short.labels("stalled").inc()
    metrics.scan_unlisted.labels("permission").inc(2)
    metrics.latency.labels("/r").observe(0.01)
    sample = metrics.registry.get_sample_value
    assert sample("export_http_requests_total", {"route": "/r", "method": "GET", "status": "200"})
    assert sample("export_http_requests_cut_short_total", {"route": "/r", "ended": "client_gone"})
    assert sample("export_zip_downloads_cut_short_total", {"reason": "stalled"}) == 1
    assert sample("export_scan_unlisted_total", {"reason": "permission"}) == 2
    assert sample("export_http_request_duration_seconds_count", {"route": "/r"}) == 1


def test_each_application_counts_on_its_own() -> None:
    first, second = Metrics(), Metrics()
    first.zip_bytes.inc(100)
    first.zips_in_flight.inc()
    assert first.registry.get_sample_value("export_zip_bytes_sent_total") == 100
    assert second.registry.get_sample_value("export_zip_bytes_sent_total") == 0
    assert second.registry.get_sample_value("export_zip_streams_in_flight") == 0


def test_what_the_log_left_out_is_read_at_each_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    suppressed, dropped = iter([3, 7]), iter([1, 4])
    monkeypatch.setattr(metrics_module, "suppressed_repeats", lambda: next(suppressed))
    monkeypatch.setattr(metrics_module, "dropped_lines", lambda: next(dropped))
    for repeats, lines in ((3, 1), (7, 4)):
        text = metrics.exposition().decode()
        assert f"export_log_repeats_suppressed_total {repeats}.0" in text
        assert f"export_log_lines_dropped_total {lines}.0" in text


def test_readiness_gauges_and_whether_anything_changed() -> None:
    """One gauge per condition; True on the first call and on each change
    only, so that readiness logs once per change, not per probe."""
    metrics = Metrics()
    fine = {"roots": (), "links_file": (), "descriptors": ()}
    corrupt = {**fine, "links_file": ("links.file: not valid JSON",)}
    assert [metrics.record_readiness(p) for p in (fine, fine, corrupt, corrupt, fine)] == [
        True,
        False,
        True,
        False,
        True,
    ]
    metrics.record_readiness(corrupt)
    sample = metrics.registry.get_sample_value
    assert sample("export_readiness_problem", {"condition": "links_file"}) == 1
    assert sample("export_readiness_problem", {"condition": "roots"}) == 0
