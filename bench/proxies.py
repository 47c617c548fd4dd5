"""The service behind the AIR backend: one ZIP download direct, through the
README's nginx block, through the FastAPI proxy router, and through the
X-Accel-Redirect pattern (backend authorises, nginx streams).

The nginx blocks are the recipe files docs/how-to/nginx.md includes (deploy/nginx/),
so what users copy and what is measured cannot drift apart. Rounds alternate
between the paths; the medians' ratios to the direct download are the result
(target for the README block: >= 0.5). A Range request through each path
must give the same 206 and bytes as direct, a HEAD the same status and
Content-Length, and an id of ``%2e%2e`` the service's JSON 422. The service
requires a token, which the blocks' and the router's ``Authorization`` must
supply (the browser sends none).

    python bench/proxies.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import (
    MIB,
    RssSampler,
    backend_app,
    curl,
    ensure_nginx,
    machine,
    median,
    nginx_server,
    reference_workload,
    service,
    table,
)

REPO = Path(__file__).resolve().parent.parent
README_SERVICE = "127.0.0.1:8080"
README_BACKEND = "127.0.0.1:8000"
README_TOKEN = "<token>"
TOKEN = "bench-token"


def readme_nginx_blocks() -> tuple[str, str]:
    """The nginx recipes the README points at, as they are: the plain proxy
    (deploy/nginx/export-service.conf) and X-Accel-Redirect
    (deploy/nginx/x-accel.conf)."""
    recipes = REPO / "deploy" / "nginx"
    return (recipes / "export-service.conf").read_text(), (recipes / "x-accel.conf").read_text()


def without_buffer_sizes(block: str) -> str:
    """The block with nginx's default buffer sizes (what the README had before)."""
    return "".join(
        line
        for line in block.splitlines(keepends=True)
        if not re.match(r"\s*proxy_(buffer_size|buffers|busy_buffers_size)\b", line)
    )


@contextmanager
def backend(service_url: str, mode: str) -> Iterator[tuple[str, int]]:
    """bench/backend_app.py under uvicorn (one worker), as the AIR backend runs."""
    env = {
        "EXPORT_SERVICE_URL": service_url,
        "EXPORT_SERVICE_AUTH_TOKEN": TOKEN,
        "BACKEND_EXPORTS": mode,
    }
    with backend_app(env) as (port, pid):
        yield f"127.0.0.1:{port}", pid


def _curl_answer(url: str, *arguments: str) -> tuple[int, bytes]:
    """Status and output of one curl request (its -w adds the status last)."""
    result = subprocess.run(
        ["curl", "-sS", *arguments, "-w", "\n%{http_code}", url],
        capture_output=True,
        check=True,
    )
    body, _, status = result.stdout.rpartition(b"\n")
    return int(status), body


def checks(url: str, headers: list[str]) -> tuple[tuple[int, bytes], str, str]:
    """A Range, a HEAD and a bad id through one path: what each gives."""
    extra = [argument for header in headers for argument in ("-H", header)]
    ranged = _curl_answer(url, "-r", "1000000-1999999", *extra)
    _, head = _curl_answer(url, "-I", *extra)
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    status = head.split(b" ", 2)[1].decode() if head.startswith(b"HTTP/") else "?"
    head_result = f"{status}, {int(length.group(1)) if length else '-'} bytes"
    bad_status, bad_body = _curl_answer(url.rsplit("/", 1)[0] + "/%2e%2e", *extra)
    error = re.search(rb'"error": *"([a-z_]+)"', bad_body)
    bad_result = f"{bad_status} {error.group(1).decode() if error else 'not the JSON shape'}"
    return ranged, head_result, bad_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    binary = ensure_nginx()
    plain, accel = (block.replace(README_TOKEN, TOKEN) for block in readme_nginx_blocks())
    times: dict[str, list[float]] = {}
    answers: dict[str, tuple[tuple[int, bytes], str, str]] = {}
    proxy_rss_kib = 0
    with tempfile.TemporaryDirectory(prefix="bench-proxies-") as temp:
        workload = reference_workload(Path(temp) / "air")
        path = f"/api/air/export/zip/{workload.run_id}"
        with (
            service(workload.config, ("EXPORT_SERVICE_AUTH_TOKEN", TOKEN)) as svc,
            backend(svc.url, "proxy") as (proxy_address, proxy_pid),
            backend(svc.url, "accel") as (accel_address, _),
        ):
            service_address = svc.url.removeprefix("http://")
            urls = {
                "direct": svc.url + path,
                "FastAPI proxy router": f"http://{proxy_address}{path}",
            }
            with (
                nginx_server(binary, plain.replace(README_SERVICE, service_address))
                if binary
                else _none() as readme_nginx,
                nginx_server(
                    binary, without_buffer_sizes(plain).replace(README_SERVICE, service_address)
                )
                if binary
                else _none() as default_nginx,
                nginx_server(
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
                # The browser sends no token; only the direct download brings its own.
                auth = {"direct": [f"Authorization: Bearer {TOKEN}"]}
                size = curl(urls["direct"], headers=auth["direct"]).size
                for name, url in urls.items():
                    headers = auth.get(name, [])
                    assert curl(url, headers=headers).size == size, f"{name}: wrong size"  # warm
                    answers[name] = checks(url, headers)
                with RssSampler(proxy_pid) as rss:
                    for _ in range(arguments.rounds):
                        for name, url in urls.items():
                            fetch = curl(url, headers=auth.get(name, []))
                            times.setdefault(name, []).append(fetch.seconds)
                proxy_rss_kib = rss.peak_kib
    direct = median(times["direct"])
    rows: list[list[object]] = []
    for name, measured in times.items():
        (status, body), head, bad_id = answers[name]
        same_range = status == 206 and body == answers["direct"][0][1]
        rows.append(
            [
                name,
                f"{size / median(measured) / MIB:.0f} MiB/s",
                f"{direct / median(measured):.2f}",
                "206, same bytes" if same_range else f"{status}, differs",
                head,
                bad_id,
            ]
        )
    print(
        table(
            f"One {size / MIB:.0f} MiB ZIP through each path ({arguments.rounds} alternating "
            f"rounds, {machine()})",
            rows,
            ["path", "throughput", "vs direct", "Range 1000000-1999999", "HEAD", "id %2e%2e"],
        )
    )
    print(f"FastAPI proxy router: peak RSS of the backend process {proxy_rss_kib / 1024:.0f} MiB")


@contextmanager
def _none() -> Iterator[str]:
    yield ""


if __name__ == "__main__":
    main()
