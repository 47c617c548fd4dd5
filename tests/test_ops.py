"""ops: liveness, readiness (and the problems it names) and the metrics route."""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from export_service.http import ops
from export_service.http.keys import METRICS
from export_service.http.ops import OPEN_PATHS, descriptor_problem, readiness_problems
from export_service.links.store import LinkStore
from tests.helpers import AirTree, ClientFactory, wait_until, write

_LIST_422 = {"route": "/api/air/export/list/{render_run_id}", "method": "GET", "status": "422"}


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


async def test_healthz_and_readyz(client: TestClient[Any, Any]) -> None:
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    assert await (await client.get("/readyz")).json() == {"status": "ready"}


async def test_starts_without_a_root_and_becomes_ready_when_it_appears(
    tree: AirTree, make_client: ClientFactory
) -> None:
    later = tree.base / "later" / "render"
    client = await make_client(
        server={"require_roots": False},
        roots={
            "render": str(later),
            "midi_generation": str(tree.midi),
            "param_generation": str(tree.param),
        },
    )
    response = await client.get("/readyz")
    assert response.status == 503
    detail = (await response.json())["detail"]
    assert detail["error"] == "not_ready"
    assert f"roots.render: '{later}' does not exist" in detail["message"]
    later.mkdir(parents=True)
    assert (await client.get("/readyz")).status == 200


async def test_a_corrupt_links_file_degrades_readiness_but_keeps_it_200(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Manifests and ZIPs go on without links, so a backend pod whose sidecar
    has a corrupt links file must stay in rotation: /readyz stays 200 and
    lists the problem, a gauge says which condition, the log says it once."""
    caplog.set_level(logging.INFO, "export_service.ops")
    write(tree.render / "r" / "mix.wav", b"x" * 100)
    write(tree.links, b"[1]")
    for _ in range(3):
        response = await client.get("/readyz")
        assert response.status == 200
        assert await response.json() == {
            "status": "degraded",
            "problems": ["links.file: top level is a JSON list, not an object"],
        }
    assert (await client.get("/api/air/export/zip/r")).status == 200
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "export_readiness_problem", condition="links_file") == 1
    assert _metric(text, "export_readiness_problem", condition="roots") == 0
    changes = [r.getMessage() for r in caplog.records if r.name == "export_service.ops"]
    problem = "links.file: top level is a JSON list, not an object"
    assert changes == [f"degraded (still ready, exports go on): {problem}"]
    tree.links.unlink()
    assert await (await client.get("/readyz")).json() == {"status": "ready"}
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "export_readiness_problem", condition="links_file") == 0
    changes = [r.getMessage() for r in caplog.records if r.name == "export_service.ops"]
    assert changes[1:] == ["ready, no problems"]


async def test_a_root_that_is_gone_is_not_ready_and_lists_the_degraded_problems_too(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    """The service cannot serve a project without its render root: 503."""
    write(tree.links, b"{")
    tree.render.rmdir()
    response = await client.get("/readyz")
    assert response.status == 503
    detail = (await response.json())["detail"]
    assert detail["error"] == "not_ready"
    assert detail["message"].startswith(f"roots.render: '{tree.render}' does not exist")
    assert "; links.file: not valid JSON" in detail["message"]
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "export_readiness_problem", condition="roots") == 1


async def test_a_short_descriptor_reserve_degrades_readiness(
    monkeypatch: pytest.MonkeyPatch, client: TestClient[Any, Any]
) -> None:
    monkeypatch.setattr(ops, "descriptor_headroom", lambda: (3, 64))
    response = await client.get("/readyz")
    assert (response.status, await response.json()) == (
        200,
        {
            "status": "degraded",
            "problems": ["descriptors: 3 free of 64, fewer than limits.descriptor_reserve (32)"],
        },
    )


async def test_metrics_count_requests_bytes_and_skips(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "mix.wav", os.urandom(100_000))
    response = await client.get("/api/air/export/zip/r")
    length = len(await response.read())
    await client.get("/api/air/export/list/bad%2Fid")
    # The access log counts a request once its response is sent, which can
    # be after the client has it all.
    assert client.app is not None
    registry = client.app[METRICS].registry
    await wait_until(
        lambda: registry.get_sample_value("export_http_requests_total", _LIST_422) == 1
    )
    text = await (await client.get("/metrics")).text()
    assert _metric(text, "export_zip_bytes_sent_total") == length
    assert (
        _metric(
            text,
            "export_http_requests_total",
            route="/api/air/export/zip/{render_run_id}",
            method="GET",
            status="200",
        )
        == 1
    )
    assert _metric(text, "export_http_requests_total", **_LIST_422) == 1
    assert _metric(text, "export_zip_streams_in_flight") == 0
    assert "export_http_request_duration_seconds_bucket" in text
    assert "process_open_fds" in text


def test_the_open_paths_are_the_ops_routes() -> None:
    """Auth leaves these open: exactly the routes orchestrators and scrapers use."""
    paths = frozenset(route.path for route in ops.routes if isinstance(route, web.RouteDef))
    assert (paths, len(ops.routes)) == (OPEN_PATHS, len(OPEN_PATHS))


@pytest.mark.parametrize(
    ("free", "problem"),
    [
        (0, "descriptors: none left to open a file with (limit 1024)"),
        (31, "descriptors: 31 free of 1024, fewer than limits.descriptor_reserve (32)"),
        (32, None),
    ],
)
def test_too_few_free_descriptors_is_a_problem_naming_the_reserve(
    monkeypatch: pytest.MonkeyPatch, free: int, problem: str | None
) -> None:
    monkeypatch.setattr(ops, "descriptor_headroom", lambda: (free, 1024))
    assert descriptor_problem(32) == problem


def test_readiness_names_each_root_that_is_no_folder_and_an_unusable_links_file(
    tree: AirTree,
) -> None:
    links = LinkStore(tree.links)
    assert readiness_problems(tree.settings(), links) == []  # no links file yet is fine

    gone = tree.base / "gone"
    settings = tree.settings(
        server={"require_roots": False},
        roots={
            "render": str(tree.render),
            "midi_generation": str(tree.midi),
            "param_generation": str(gone),
        },
    )
    tree.midi.rmdir()  # a root that became a file after the service started
    write(tree.midi, b"a file")
    write(tree.links, b"[1]")
    assert readiness_problems(settings, links) == [
        f"roots.midi_generation: '{tree.midi}' does not exist or is not a folder",
        f"roots.param_generation: '{gone}' does not exist or is not a folder",
        "links.file: top level is a JSON list, not an object",
    ]
