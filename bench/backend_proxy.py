"""What the FastAPI proxy router costs the AIR backend, side by side with
direct requests to the service, in one run: a real FastAPI app
(bench/backend_app.py) under uvicorn, one worker, in front of the service.

- manifests: 500 requests, 10 at a time, direct and through each router
  (req/s; target >= 0.8 of direct), while the backend's own ``/health`` route
  is asked every 20 ms (its slowest answer; target <= 50 ms);
- the reference ZIP (210 MiB) with curl, direct and through each router
  (MiB/s; target >= 0.5 of direct), ``/health`` asked meanwhile;
- the backend's RSS after warming up and at the end, and its peak.

``--before FILE`` adds a backend mounting another fastapi_proxy.py (e.g. the
previous version: ``git show main:export_service/fastapi_proxy.py > /tmp/old.py``),
measured in the same alternating rounds.

    python bench/backend_proxy.py [--rounds 5] [--before /tmp/old.py]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    RssSampler,
    backend_app,
    machine,
    median,
    reference_workload,
    rss_kib,
    service,
    table,
)

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
MANIFESTS = 500
AT_ONCE = 10
HEALTH_EVERY = 0.02


@contextmanager
def backend(service_url: str, module: Path | None, python: str) -> Iterator[tuple[str, int]]:
    """bench/backend_app.py under uvicorn (one worker), run by ``python``:
    its URL and pid."""
    env = {"EXPORT_SERVICE_URL": service_url, "EXPORT_SERVICE_AUTH_TOKEN": TOKEN}
    if module is not None:
        env["EXPORT_PROXY_MODULE"] = str(module)
    with backend_app(env, python) as (port, pid):
        yield f"http://127.0.0.1:{port}", pid


@dataclass
class Path_:
    name: str
    url: str  # where the export routes are
    headers: dict[str, str]
    health: str | None  # the backend's own route, if there is a backend
    pid: int | None
    manifest_rates: list[float] = field(default_factory=list)
    zip_rates: list[float] = field(default_factory=list)
    health_during_manifests: list[float] = field(default_factory=list)
    health_during_zip: list[float] = field(default_factory=list)
    rss_start_kib: int = 0


async def _probe(health: str | None, stop: asyncio.Event, times: list[float]) -> None:
    """Ask the backend's /health every HEALTH_EVERY seconds until ``stop``."""
    if health is None:
        return
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(health) as answer:
                await answer.read()
            times.append(time.perf_counter() - started)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEALTH_EVERY)


async def _manifests(path: Path_, run_id: str) -> None:
    url = f"{path.url}/api/air/export/list/{run_id}"
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(path.health, stop, path.health_during_manifests))
    connector = aiohttp.TCPConnector(limit=AT_ONCE)
    async with aiohttp.ClientSession(connector=connector, headers=path.headers) as session:

        async def one() -> None:
            async with session.get(url) as answer:
                assert answer.status == 200, answer.status
                await answer.read()

        queue = list(range(MANIFESTS))

        async def worker() -> None:
            while queue:
                queue.pop()
                await one()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(AT_ONCE)))
        path.manifest_rates.append(MANIFESTS / (time.perf_counter() - started))
    stop.set()
    await probe


async def _zip(path: Path_, run_id: str) -> int:
    stop = asyncio.Event()
    probe = asyncio.create_task(_probe(path.health, stop, path.health_during_zip))
    headers = [
        argument for name, value in path.headers.items() for argument in ("-H", f"{name}: {value}")
    ]
    curl = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total} %{size_download}",
        *headers, f"{path.url}/api/air/export/zip/{run_id}",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, _ = await curl.communicate()
    stop.set()
    await probe
    assert curl.returncode == 0, f"{path.name}: curl failed"
    seconds, size = output.split()
    path.zip_rates.append(int(size) / float(seconds) / MIB)
    return int(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", type=Path, help="another fastapi_proxy.py to measure")
    parser.add_argument(
        "--backend-python",
        default=sys.executable,
        help="the Python that runs the backend (e.g. a venv with uvicorn[standard], whose "
        "httptools and uvloop uvicorn then uses; this checkout's modules are imported)",
    )
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backend-proxy-") as temp, ExitStack() as stack:
        workload = reference_workload(Path(temp) / "air")
        svc = stack.enter_context(service(workload.config, ("EXPORT_SERVICE_AUTH_TOKEN", TOKEN)))
        paths = [Path_("direct", svc.url, {"Authorization": f"Bearer {TOKEN}"}, None, None)]
        routers: dict[str, Path | None] = {"router (this checkout)": None}
        if arguments.before is not None:
            routers["router (--before)"] = arguments.before.resolve()
        for name, module in routers.items():
            url, pid = stack.enter_context(backend(svc.url, module, arguments.backend_python))
            paths.append(Path_(name, url, {}, url + "/health", pid))
        for path in paths:  # warm up: connections, imports, the CRC cache
            asyncio.run(_manifests(path, workload.run_id))
            asyncio.run(_zip(path, workload.run_id))
            path.manifest_rates.clear()
            path.zip_rates.clear()
            path.health_during_manifests.clear()
            path.health_during_zip.clear()
            path.rss_start_kib = rss_kib(path.pid) if path.pid else 0
        samplers = [stack.enter_context(RssSampler(path.pid)) for path in paths if path.pid]
        size = 0
        for _ in range(arguments.rounds):
            for path in paths:
                asyncio.run(_manifests(path, workload.run_id))
                size = asyncio.run(_zip(path, workload.run_id))
        rss_end = {path.name: rss_kib(path.pid) for path in paths if path.pid}
        peaks = dict(zip((path.name for path in paths if path.pid), samplers, strict=True))
        for sampler in samplers:
            sampler.__exit__()
    direct = paths[0]
    rows: list[list[object]] = []
    for path in paths:
        manifests = median(path.manifest_rates)
        zips = median(path.zip_rates)
        rows.append(
            [
                path.name,
                f"{manifests:.0f} req/s",
                f"{manifests / median(direct.manifest_rates):.2f}",
                f"{max(path.health_during_manifests) * 1000:.0f} ms"
                if path.health_during_manifests
                else "-",
                f"{zips:.0f} MiB/s",
                f"{zips / median(direct.zip_rates):.2f}",
                f"{max(path.health_during_zip) * 1000:.0f} ms" if path.health_during_zip else "-",
                f"{path.rss_start_kib // 1024} / {rss_end[path.name] // 1024} / "
                f"{peaks[path.name].peak_kib // 1024} MiB"
                if path.pid
                else "-",
            ]
        )
    print(
        table(
            f"The backend's export routes: {MANIFESTS} manifests {AT_ONCE} at a time and one "
            f"{size / MIB:.0f} MiB ZIP per path ({arguments.rounds} alternating rounds, "
            f"medians, {machine()})",
            rows,
            [
                "path",
                "manifests",
                "vs direct",
                "slowest /health meanwhile",
                "ZIP",
                "vs direct",
                "slowest /health meanwhile",
                "backend RSS start / end / peak",
            ],
        )
    )


if __name__ == "__main__":
    main()
