"""Shared by the benchmarks: workloads on disk, the service and nginx as real
processes on loopback, curl timings, RSS sampling, and table printing.

Everything runs on this machine only (127.0.0.1) and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
REFERENCE_RUN = "bench_run"


def _require_the_services_dependencies() -> None:
    """One line and exit 2 when this Python cannot run the service: a bare
    ``python bench/huge_runs.py`` made its million files for a minute, then
    each service it started died on ``No module named 'aiohttp'`` and the
    bench failed with "did not come up"."""
    try:
        import export_service.cli  # noqa: F401  (imports every dependency of serve)
    except ModuleNotFoundError as error:
        print(
            f"bench: {sys.executable} cannot import {error.name!r}, which the service needs: "
            "run the benchmarks with .venv/bin/python (make .venv/.installed makes it) "
            "or make bench",
            file=sys.stderr,
        )
        sys.exit(2)


_require_the_services_dependencies()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_random(path: Path, size: int) -> None:
    """Incompressible bytes, like rendered audio."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            block = min(remaining, 8 * MIB)
            handle.write(os.urandom(block))
            remaining -= block


@dataclass
class Workload:
    base: Path
    config: Path
    run_id: str
    files: int
    data_bytes: int

    def run_folder(self, run_id: str | None = None) -> Path:
        """The render run folder of ``run_id`` (default: this workload's run)."""
        return self.base / "render" / "output" / (run_id or self.run_id)


def make_workload(base: Path, file_sizes: Sequence[int], run_id: str = REFERENCE_RUN) -> Workload:
    """A render run of random files (stems/stem_NNNNN.wav) and its config."""
    roots = {
        step: base / step / "output" for step in ("render", "midi_generation", "param_generation")
    }
    for root in roots.values():
        root.mkdir(parents=True, exist_ok=True)
    for index, size in enumerate(file_sizes):
        write_random(roots["render"] / run_id / "stems" / f"stem_{index:05d}.wav", size)
    # Written back now, so no benchmark run competes with the kernel writing
    # the workload to disk (it cost the first run after it a third of its speed).
    os.sync()
    config = base / "config.toml"
    config.write_text(
        '[logging]\nlevel = "WARNING"\n'
        "[roots]\n"
        + "".join(f'{step} = "{root}"\n' for step, root in roots.items())
        + f'[links]\nfile = "{base / "step_links.json"}"\n'
    )
    return Workload(base, config, run_id, len(file_sizes), sum(file_sizes))


def reference_workload(base: Path, total: int = 210 * MIB, stems: int = 12) -> Workload:
    """The issue's reference: ~210 MiB of render stems."""
    return make_workload(base, [total // stems] * stems)


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid


def wait_until_ready(
    ready: Callable[[], object], process: subprocess.Popen[bytes], what: str, seconds: float = 30
) -> None:
    """Call ``ready`` (which raises OSError until ``what`` answers) until it
    succeeds; RuntimeError when ``process`` ends or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            ready()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up") from None
            time.sleep(0.05)


@contextmanager
def backend_app(env: dict[str, str], python: str = sys.executable) -> Iterator[tuple[int, int]]:
    """bench/backend_app.py (a stand-in for the AIR backend) under uvicorn,
    one worker, run by ``python`` with ``env`` added to the environment: its
    port and pid until the block ends."""
    port = free_port()
    process = subprocess.Popen(
        [
            python,
            "-m",
            "uvicorn",
            "bench.backend_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, **env},
    )
    try:
        wait_until_ready(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close(),
            process,
            f"backend on port {port}",
            seconds=30,
        )
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def python_server(
    arguments: Sequence[str], port: int, env: dict[str, str], cwd: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python arguments...`` as a process serving ``/healthz`` on ``port``
    of 127.0.0.1, once it answers: (the process, its URL). Stopped with
    SIGTERM, killed if it has not ended 30 s later."""
    process = subprocess.Popen([sys.executable, *arguments], env=env, cwd=cwd)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(
            lambda: urllib.request.urlopen(url + "/healthz", timeout=2).close(), process, url
        )
        yield process, url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def service(
    config: Path, *extra_env: tuple[str, str], baseline: Path | None = None
) -> Iterator[Service]:
    """The service as a process on a free port; ``baseline``: a folder holding
    another version of the ``export_service`` package to run instead (for a
    side-by-side comparison with, say, ``git archive main export_service``)."""
    port = free_port()
    if baseline is not None:
        extra_env = (*extra_env, ("PYTHONPATH", str(baseline)))
    # Every bench client comes from 127.0.0.1 and stands for a user of its
    # own: no per-client share of the ZIP slots (set in the environment, which
    # a baseline without the key ignores, where the config file would fail).
    extra_env = (("EXPORT_SERVICE_LIMITS_MAX_ZIPS_PER_CLIENT", "10000"), *extra_env)
    arguments = ["-m", "export_service", "serve", "--config", str(config)]
    with python_server(
        [*arguments, "--host", "127.0.0.1", "--port", str(port)],
        port,
        {**os.environ, **dict(extra_env)},
        # Elsewhere than the repository, so that ``-m`` finds the baseline first.
        cwd=baseline,
    ) as (process, url):
        yield Service(process, url)


def add_baseline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a folder holding another export_service package, measured in the same run "
        "(e.g. git archive main export_service | tar -x -C /tmp/baseline)",
    )


def versions_to_measure(baseline: Path | None) -> dict[str, Path | None]:
    """This checkout as "service", and the ``--baseline`` package when given
    (for :func:`service`'s ``baseline``)."""
    versions: dict[str, Path | None] = {"service": None}
    if baseline is not None:
        versions["baseline"] = baseline.resolve()
    return versions


def ensure_nginx() -> str:
    """The nginx binary, installed from Debian when missing and we are root;
    exits when it cannot be had."""
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if found:
        return str(found)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing nginx (apt-get install nginx-light)...", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "nginx-light"],
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if not found:
        sys.exit("nginx is not available (install nginx-light)")
    return str(found)


@contextmanager
def nginx_server(binary: str, server_body: str) -> Iterator[str]:
    """nginx with one server on a free port, holding ``server_body`` (a
    ``root``, or ``location`` blocks); its URL."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work};
    proxy_temp_path {work};
    fastcgi_temp_path {work};
    uwsgi_temp_path {work};
    scgi_temp_path {work};
    server {{
        listen 127.0.0.1:{port};
{server_body}
    }}
}}
""")
    process = subprocess.Popen([binary, "-c", str(conf), "-g", "daemon off;"])
    try:
        wait_until_ready(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close(),
            process,
            f"nginx on {port}",
            seconds=10,
        )
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def nginx(binary: str, root: Path) -> Iterator[str]:
    """nginx serving ``root`` as static files with sendfile, on a free port."""
    for folder in (root, *root.parents):  # its workers run unprivileged
        if folder == Path(tempfile.gettempdir()):
            break
        folder.chmod(folder.stat().st_mode | 0o055)
    for path in root.iterdir():
        path.chmod(path.stat().st_mode | 0o044)
    with nginx_server(binary, f"        root {root};") as url:
        yield url


@dataclass
class Fetch:
    seconds: float
    first_byte: float
    size: int


def curl(url: str, output: str = "/dev/null", headers: Sequence[str] = ()) -> Fetch:
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            output,
            "-w",
            "%{time_total} %{time_starttransfer} %{size_download}",
            *(argument for header in headers for argument in ("-H", header)),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    total, first, size = result.stdout.split()
    return Fetch(float(total), float(first), int(size))


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class RssSampler:
    """Samples a process's resident set every few milliseconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def table(title: str, rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table, so it can go straight into the README."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = [
        f"### {title}",
        "",
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines) + "\n"


def machine() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
