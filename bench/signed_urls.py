"""Signed URLs: does a signed direct download keep the direct throughput?

1. The ~210 MiB reference export as a ZIP, downloaded with curl from the
   service three ways, alternated round by round in one run: with a signed
   URL (the service has a token and a signing secret), with the bearer token
   (the same service), and from an open service (no token, no secret). The
   median throughput of each, and its ratio to the open service's.
2. What checking a signature costs per request (timeit, in-process): the
   verifier on a ZIP URL with a selection, with one secret and with two (a
   rotation, where a URL signed with the old secret is checked against both),
   beside the bearer token's comparison.

    python bench/signed_urls.py [--rounds 21]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MIB, Fetch, curl, machine, median, reference_workload, service, table
from export_service.http.routes import bearer_token_matches
from export_service.signed_urls import sign_url, verify

SECRET = "bench-signing-secret-0123456789abcdef"
OLD_SECRET = "bench-previous-secret-0123456789abcdef"
TOKEN = "bench-token"


def throughput(rounds: int) -> list[list[object]]:
    with tempfile.TemporaryDirectory(prefix="bench-signed-") as temp:
        workload = reference_workload(Path(temp) / "air")
        path = f"/api/air/export/zip/{workload.run_id}"
        guarded_env = (
            ("EXPORT_SERVICE_AUTH_TOKEN", TOKEN),
            ("EXPORT_SERVICE_AUTH_SIGNING_SECRET", SECRET),
        )
        with (
            service(workload.config, *guarded_env) as guarded,
            service(workload.config) as open_service,
        ):
            signed_url = guarded.url + sign_url(path, 3600, SECRET)
            ways: dict[str, Callable[[], Fetch]] = {
                "signed URL": lambda: curl(signed_url),
                "bearer token": lambda: curl(
                    guarded.url + path, headers=[f"Authorization: Bearer {TOKEN}"]
                ),
                "open service": lambda: curl(open_service.url + path),
            }
            for fetch in ways.values():
                fetch()  # warm: page cache, CRC cache, connections
            speeds: dict[str, list[float]] = {name: [] for name in ways}
            names = list(ways)
            for round_ in range(rounds):
                # Each way goes first, second and third in turn.
                for name in names[round_ % 3 :] + names[: round_ % 3]:
                    fetched = ways[name]()
                    speeds[name].append(fetched.size / MIB / fetched.seconds)
    reference = median(speeds["open service"])
    return [
        [
            name,
            f"{median(values):.0f} MiB/s",
            f"{min(values):.0f}-{max(values):.0f} MiB/s",
            f"{median(values) / reference:.2f}",
        ]
        for name, values in speeds.items()
    ]


def check_costs() -> list[list[object]]:
    now = 1_800_000_000
    path = "/api/air/export/zip/rnd_7f3a9c"
    query_of = {
        "current secret": sign_url(
            path + "?param_run_id=prm_51be02&steps=render&prefix=stems", 600, SECRET, now=now
        ),
        "previous secret (rotation)": sign_url(
            path + "?param_run_id=prm_51be02&steps=render&prefix=stems", 600, OLD_SECRET, now=now
        ),
    }
    rows: list[list[object]] = []
    for what, url in query_of.items():
        query = url.partition("?")[2]

        def check(query: str = query) -> None:
            verify("GET", path, query, (SECRET, OLD_SECRET), now=now)

        number = 20_000
        seconds = min(timeit.repeat(check, number=number, repeat=5))
        rows.append([f"verify a signed ZIP URL, {what}", f"{seconds / number * 1e6:.1f} µs"])
    number = 200_000
    seconds = min(
        timeit.repeat(
            lambda: bearer_token_matches(f"Bearer {TOKEN}", TOKEN), number=number, repeat=5
        )
    )
    rows.append(["compare a bearer token (for scale)", f"{seconds / number * 1e6:.2f} µs"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=21)
    arguments = parser.parse_args()
    rows = throughput(arguments.rounds)
    print(
        table(
            f"Signed direct download vs token vs open (~210 MiB ZIP, curl, median of"
            f" {arguments.rounds} alternated rounds; {machine()})",
            rows,
            ["download", "median", "min-max", "median vs open service"],
        )
    )
    print(table("Checking a signature, per request (timeit)", check_costs(), ["check", "cost"]))


if __name__ == "__main__":
    main()
