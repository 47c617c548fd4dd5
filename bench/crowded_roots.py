"""Target 4: 100,000 sibling run folders in the MIDI and param roots.

Manifest latency against the same project with 10 siblings (target: within
1.5x). The suffix lookup keeps an index of folder names per root, refreshed
when the root's mtime changes, instead of listing the root per request.

    python bench/crowded_roots.py [--siblings 100000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import curl, machine, make_workload, median, service, table

RUN = "rnd_crowded"
PARAM = "prm_crowded"


def populate(base: Path, siblings: int) -> Path:
    workload = make_workload(base, [64 * 1024] * 8, run_id=RUN)
    midi = base / "midi_generation" / "output"
    param = base / "param_generation" / "output"
    for index in range(siblings):
        (midi / f"20260101_{index:06d}_rnd_{index:06x}").mkdir()
        (param / f"20260101_{index:06d}_prm_{index:06x}").mkdir()
    for root, name in ((midi, f"20261101_101300_{RUN}"), (param, f"20261101_101200_{PARAM}")):
        (root / name).mkdir()
        (root / name / "data.json").write_bytes(b"{}")
    (base / "step_links.json").write_text(f'{{"{RUN}": {{"param_run_id": "{PARAM}"}}}}')
    settled = time.time() - 5  # as if the roots were last changed a while ago
    for root in (midi, param):
        os.utime(root, (settled, settled))
    return workload.config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--siblings", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=15)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-crowded-") as temp:
        crowded = populate(Path(temp) / "crowded", arguments.siblings)
        sparse = populate(Path(temp) / "sparse", 10)
        with service(crowded) as svc_crowded, service(sparse) as svc_sparse:
            urls = {
                name: f"{svc.url}/api/air/export/list/{RUN}"
                for name, svc in (("crowded", svc_crowded), ("sparse", svc_sparse))
            }
            first = curl(urls["crowded"]).seconds  # builds the index
            curl(urls["sparse"])
            times: dict[str, list[float]] = {"crowded": [], "sparse": []}
            for _ in range(arguments.rounds):
                for name, url in urls.items():
                    times[name].append(curl(url).seconds)
    crowded_ms, sparse_ms = median(times["crowded"]) * 1000, median(times["sparse"]) * 1000
    rows = [
        [
            f"{arguments.siblings:,} siblings: first request",
            f"{first * 1000:.1f} ms",
            "lists the roots",
        ],
        [f"{arguments.siblings:,} siblings: manifest (median)", f"{crowded_ms:.1f} ms", ""],
        ["10 siblings: manifest (median)", f"{sparse_ms:.1f} ms", ""],
        ["crowded / sparse", f"{crowded_ms / sparse_ms:.2f}", "target <= 1.5"],
    ]
    print(
        table(
            f"Crowded roots ({arguments.rounds} rounds, {machine()})",
            rows,
            ["measure", "value", "note"],
        )
    )


if __name__ == "__main__":
    main()
