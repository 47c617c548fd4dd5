"""The service behind the AIR backend: one ZIP download direct, through the
README's nginx block, through the FastAPI proxy router, and through the
X-Accel-Redirect pattern (backend authorises, nginx streams).

The nginx blocks are read from README.md, so the README and what is measured
cannot drift apart. Rounds alternate between the paths; the medians' ratios to
the direct download are the result (target for the README block: >= 0.5). A
Range request through each path must give the same 206 and bytes as direct.

    python bench/proxies.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    RssSampler,
    curl,
    ensure_nginx,
    free_port,
    machine,
    median,
    reference_workload,
    service,
    table,
)

REPO = Path(__file__).resolve().parent.parent
README_SERVICE = "127.0.0.1:8080"
README_BACKEND = "127.0.0.1:8000"


def readme_nginx_blocks() -> tuple[str, str]:
    """The README's two nginx blocks: the plain proxy, and X-Accel-Redirect."""
    blocks = re.findall(r"```nginx\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    plain = [block for block in blocks if "location /api/air/export/" in block]
    accel = [block for block in blocks if "internal;" in block]
    assert len(plain) == 1 and len(accel) == 1, "README: expected one block of each kind"
    return plain[0], accel[0]


def without_buffer_sizes(block: str) -> str:
    """The block with nginx's default buffer sizes (what the README had before)."""
    return "".join(
        line
        for line in block.splitlines(keepends=True)
        if not re.match(r"\s*proxy_(buffer_size|buffers|busy_buffers_size)\b", line)
    )


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}") from None
            time.sleep(0.05)


@contextmanager
def nginx_with(binary: str, locations: str) -> Iterator[str]:
    """nginx with one server holding ``locations``, on a free port."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    (work / "nginx.conf").write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work};
    proxy_temp_path {work};
    fastcgi_temp_path {work};
    uwsgi_temp_path {work};
    scgi_temp_path {work};
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
}}
""")
    process = subprocess.Popen([binary, "-c", str(work / "nginx.conf"), "-g", "daemon off;"])
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def backend(service_url: str, mode: str) -> Iterator[tuple[str, int]]:
    """bench/backend_app.py under uvicorn (one worker), as the AIR backend runs."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
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
        cwd=REPO,
        env={**os.environ, "EXPORT_SERVICE_URL": service_url, "BACKEND_EXPORTS": mode},
    )
    try:
        _wait_for_port(port, process)
        yield f"127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        process.wait(10)


def range_check(url: str) -> tuple[int, bytes]:
    result = subprocess.run(
        ["curl", "-sS", "-r", "1000000-1999999", "-w", "\n%{http_code}", url],
        capture_output=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    binary = ensure_nginx()
    plain, accel = readme_nginx_blocks()
    times: dict[str, list[float]] = {}
    ranges: dict[str, tuple[int, bytes]] = {}
    proxy_rss_kib = 0
    with tempfile.TemporaryDirectory(prefix="bench-proxies-") as temp:
        workload = reference_workload(Path(temp) / "air")
        path = f"/api/air/export/zip/{workload.run_id}"
        with (
            service(workload.config) as svc,
            backend(svc.url, "proxy") as (proxy_address, proxy_pid),
            backend(svc.url, "accel") as (accel_address, _),
        ):
            service_address = svc.url.removeprefix("http://")
            urls = {
                "direct": svc.url + path,
                "FastAPI proxy router": f"http://{proxy_address}{path}",
            }
            with (
                nginx_with(binary, plain.replace(README_SERVICE, service_address))
                if binary
                else _none() as readme_nginx,
                nginx_with(
                    binary, without_buffer_sizes(plain).replace(README_SERVICE, service_address)
                )
                if binary
                else _none() as default_nginx,
                nginx_with(
                    binary,
                    accel.replace(README_SERVICE, service_address).replace(
                        README_BACKEND, accel_address
                    ),
                )
                if binary
                else _none() as accel_nginx,
            ):
                if binary is None:
                    print("nginx is not available: only the proxy router is measured")
                else:
                    urls["nginx, README block"] = f"{readme_nginx}{path}"
                    urls["nginx, default buffer sizes"] = f"{default_nginx}{path}"
                    urls["nginx X-Accel-Redirect"] = f"{accel_nginx}{path}"
                size = curl(urls["direct"]).size
                for name, url in urls.items():
                    assert curl(url).size == size, f"{name}: wrong size"  # and warm
                    ranges[name] = range_check(url)
                with RssSampler(proxy_pid) as rss:
                    for _ in range(arguments.rounds):
                        for name, url in urls.items():
                            times.setdefault(name, []).append(curl(url).seconds)
                proxy_rss_kib = rss.peak_kib
    direct = median(times["direct"])
    rows: list[list[object]] = []
    for name, measured in times.items():
        status, body = ranges[name]
        same_range = status == 206 and body == ranges["direct"][1]
        rows.append(
            [
                name,
                f"{size / median(measured) / MIB:.0f} MiB/s",
                f"{direct / median(measured):.2f}",
                "206, same bytes" if same_range else f"{status}, differs",
            ]
        )
    print(
        table(
            f"One {size / MIB:.0f} MiB ZIP through each path ({arguments.rounds} alternating "
            f"rounds, {machine()})",
            rows,
            ["path", "throughput", "vs direct", "Range 1000000-1999999"],
        )
    )
    print(f"FastAPI proxy router: peak RSS of the backend process {proxy_rss_kib / 1024:.0f} MiB")


@contextmanager
def _none() -> Iterator[str]:
    yield ""


if __name__ == "__main__":
    main()
