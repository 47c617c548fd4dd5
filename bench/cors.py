"""What CORS costs: the same service without ``[cors]`` and with an allowed
origin, side by side (rounds alternate between the two processes).

Per round: one ZIP download (~64 MiB of stems, curl to /dev/null, with the
page's ``Origin`` header) and 300 manifest requests in a row on one
keep-alive connection (the per-request cost: a hook on every answer). The
medians' ratios (with CORS / without) are the result; the headers are
checked first (the allowed origin answered with CORS; without ``[cors]``
none).

    python bench/cors.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.harness import MIB, curl, machine, make_workload, median, service, table

ORIGIN = "https://air.example.com"
MANIFESTS = 300


async def manifests(url: str) -> float:
    """Seconds for MANIFESTS manifest requests in a row, on one connection."""
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for _ in range(MANIFESTS):
            async with session.get(url, headers={"Origin": ORIGIN}) as answer:
                await answer.read()
                assert answer.status == 200
        return time.perf_counter() - started


async def cors_header(url: str) -> str | None:
    async with (
        aiohttp.ClientSession() as session,
        session.head(url, headers={"Origin": ORIGIN}) as got,
    ):
        return got.headers.get("Access-Control-Allow-Origin")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    variants = {
        "without [cors]": (),
        "with [cors]": (("EXPORT_SERVICE_CORS_ALLOWED_ORIGINS", ORIGIN),),
    }
    zips: dict[str, list[float]] = {name: [] for name in variants}
    lists: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bench-cors-") as temp:
        workload = make_workload(Path(temp) / "air", [8 * MIB] * 8)
        with (
            service(workload.config, *variants["without [cors]"]) as plain,
            service(workload.config, *variants["with [cors]"]) as cors,
        ):
            services = {"without [cors]": plain, "with [cors]": cors}
            for name, svc in services.items():
                found = asyncio.run(cors_header(f"{svc.url}/api/air/export/zip/{workload.run_id}"))
                assert found == (ORIGIN if name == "with [cors]" else None), (name, found)
            for _ in range(arguments.rounds):
                for name, svc in services.items():
                    base = f"{svc.url}/api/air/export"
                    fetched = curl(f"{base}/zip/{workload.run_id}", headers=[f"Origin: {ORIGIN}"])
                    zips[name].append(fetched.seconds)
                    lists[name].append(asyncio.run(manifests(f"{base}/list/{workload.run_id}")))
    rows = [
        [
            name,
            f"{workload.data_bytes / MIB / median(zips[name]):.0f}",
            f"{MANIFESTS / median(lists[name]):.0f}",
        ]
        for name in variants
    ]
    rows.append(
        [
            "ratio with / without",
            f"{median(zips['without [cors]']) / median(zips['with [cors]']):.3f}",
            f"{median(lists['without [cors]']) / median(lists['with [cors]']):.3f}",
        ]
    )
    print(
        table(
            f"CORS on and off, {arguments.rounds} rounds ({machine()})",
            rows,
            ["service", "ZIP MiB/s (median)", "manifests/s (median)"],
        )
    )


if __name__ == "__main__":
    main()
