"""Issue 12 item 4: a rewritten links file is parsed once, not once per request.

A service whose step_links.json holds 100,000 links (parsed and cached by a
first manifest) sees the file rewritten, then 8 manifests at once, while a
prober calls /healthz every 10 ms. Per round: the prober's worst latency, the
time until all 8 manifests are answered, and the RSS growth (peak VmRSS during
the burst minus VmRSS just before). Targets: /healthz max <= 150 ms, growth
<= 100 MiB.

    python bench/links_reload.py [--links 100000] [--clients 8] [--rounds 3]
                                 [--baseline PATH]

--baseline runs another checkout's export_service (a folder holding the
package, e.g. `mkdir /tmp/main && git archive main | tar -x -C /tmp/main`) side by side
in the same run, round for round, for before/after numbers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import RssSampler, machine, make_workload, rss_kib, service, table

THIS_CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass
class Round:
    healthz_max: float
    burst_seconds: float
    growth_kib: int


class HealthzProber:
    """Calls /healthz every 10 ms over one keep-alive connection; keeps the latencies."""

    def __init__(self, port: int) -> None:
        self.port, self.latencies = port, list[float]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            connection.getresponse().read()
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
        connection.close()

    def __enter__(self) -> HealthzProber:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def write_links(path: Path, count: int, run_id: str, generation: int) -> None:
    records = {
        f"rnd_{index:08d}_{generation}": {
            "param_run_id": f"prm_{index:08d}",
            "updated_at": 1_732_000_000.0 + index,
        }
        for index in range(count)
    }
    records[run_id] = {"param_run_id": f"prm_{generation}", "updated_at": time.time()}
    temp = path.with_name(path.name + ".new")
    temp.write_text(json.dumps(records, indent=2))
    temp.replace(path)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        body: bytes = response.read()
        return body


def burst(
    url: str,
    pid: int,
    port: int,
    clients: int,
    links: Path,
    count: int,
    run_id: str,
    generation: int,
) -> Round:
    write_links(links, count, run_id, generation)
    before = rss_kib(pid)
    with HealthzProber(port) as prober, RssSampler(pid) as sampler:
        time.sleep(0.05)
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(get, [url] * clients))
        burst_seconds = time.perf_counter() - started
        time.sleep(0.05)
    for answer in answers:
        assert json.loads(answer)["render_run_id"] == run_id
    return Round(max(prober.latencies), burst_seconds, sampler.peak_kib - before)


def measure(base: Path, checkout: Path, arguments: argparse.Namespace, rounds: list[Round]) -> None:
    workload = make_workload(base, [1024])
    links = base / "step_links.json"
    write_links(links, arguments.links, workload.run_id, 0)
    with service(workload.config, ("PYTHONPATH", str(checkout))) as svc:
        url = f"{svc.url}/api/air/export/list/{workload.run_id}"
        get(url)  # the first parse, cached
        port = int(svc.url.rsplit(":", 1)[1])
        generation = len(rounds) + 1
        rounds.append(
            burst(
                url,
                svc.pid,
                port,
                arguments.clients,
                links,
                arguments.links,
                workload.run_id,
                generation,
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--links", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    arguments = parser.parse_args()
    checkouts = {"this checkout": THIS_CHECKOUT}
    if arguments.baseline:
        checkouts = {f"baseline ({arguments.baseline})": arguments.baseline.resolve(), **checkouts}
    results: dict[str, list[Round]] = {name: [] for name in checkouts}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-links-") as temp:
        os.chdir(temp)  # `python -m` puts the working folder first on the import path
        for _ in range(arguments.rounds):
            for name, checkout in checkouts.items():
                with tempfile.TemporaryDirectory(dir=temp) as base:
                    measure(Path(base), checkout, arguments, results[name])
    rows = [
        [
            name,
            f"{max(r.healthz_max for r in rounds) * 1000:.0f} ms",
            f"{statistics.median(r.healthz_max for r in rounds) * 1000:.0f} ms",
            f"{statistics.median(r.burst_seconds for r in rounds) * 1000:.0f} ms",
            f"{max(r.growth_kib for r in rounds) / 1024:.0f} MiB",
        ]
        for name, rounds in results.items()
    ]
    print(
        table(
            f"{arguments.clients} manifests after a rewrite of {arguments.links:,} links, "
            f"{arguments.rounds} rounds ({machine()}); targets: /healthz max <= 150 ms, "
            "growth <= 100 MiB",
            rows,
            [
                "service",
                "/healthz max",
                "median of round maxima",
                f"{arguments.clients} manifests",
                "RSS growth max",
            ],
        )
    )
    print(f"(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after)")


if __name__ == "__main__":
    main()
