"""Selective exports: the manifest and the ZIP's plan of a big project, whole
against ``steps=render``, ``prefix=stems`` and both, side by side.

A project of --files files in each of its render and MIDI runs (a tenth of
the render's under ``stems/``, the rest in ``takes/``; the MIDI run's in
``tracks/``) and --files / 10 in its param run. Each round times every
selection once, in turn, in this process (the work of one request's hop:
lookup, scan, JSON or plan), so the figures share the machine's noise;
medians, and each one's ratio to the whole export's.

    python bench/selective_exports.py [--files 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import machine, median, table
from export_service.config import settings_from_mapping
from export_service.core.selection import Selection
from export_service.exports import Services, export_manifest_json, plan_export_archive

RUN = "rnd_big"
SELECTIONS: dict[str, Selection | None] = {
    "whole export": None,
    "steps=render": Selection.parse(["render"], []),
    "prefix=stems": Selection.parse([], ["stems"]),
    "steps=render&prefix=stems": Selection.parse(["render"], ["stems"]),
}


def make_project(base: Path, files: int) -> Services:
    roots = {step: base / step for step in ("render", "midi_generation", "param_generation")}
    layout: dict[Path, list[tuple[str, ...]]] = {
        roots["render"] / RUN: [
            ("stems" if n % 10 == 0 else "takes", f"{n // 100:03d}", f"f{n}.wav")
            for n in range(files)
        ],
        roots["midi_generation"] / f"20261207_000000_{RUN}": [
            ("tracks", f"{n // 100:03d}", f"t{n}.mid") for n in range(files)
        ],
        roots["param_generation"] / "20261207_000000_prm_big": [
            ("params", f"p{n}.json") for n in range(files // 10)
        ],
    }
    for run, paths in layout.items():
        for parts in paths:
            path = run.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 64)
    links = base / "step_links.json"
    links.write_text(f'{{"{RUN}": {{"param_run_id": "prm_big", "updated_at": 1.0}}}}')
    settings = settings_from_mapping(
        {
            "roots": {step: str(root) for step, root in roots.items()},
            "links": {"file": str(links)},
            "limits": {"max_files_per_export": 10 * files},
        }
    )
    return Services.from_settings(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    manifests: dict[str, list[float]] = {name: [] for name in SELECTIONS}
    plans: dict[str, list[float]] = {name: [] for name in SELECTIONS}
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-selective-") as temp:
        services = make_project(Path(temp), arguments.files)
        for _ in range(arguments.rounds + 1):  # the first round warms the caches: not kept
            for name, selection in SELECTIONS.items():
                started = time.perf_counter()
                export_manifest_json(services, RUN, None, None, selection)
                manifests[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                archive = plan_export_archive(services, RUN, None, None, None, selection)
                plans[name].append(time.perf_counter() - started)
                counts[name] = len(archive.entries)
    whole_manifest = median(manifests["whole export"][1:])
    whole_plan = median(plans["whole export"][1:])
    rows = []
    for name in SELECTIONS:
        manifest, plan = median(manifests[name][1:]), median(plans[name][1:])
        rows.append(
            [
                name,
                f"{counts[name]:,}",
                f"{manifest * 1000:.0f} ms",
                f"{manifest / whole_manifest:.2f}",
                f"{plan * 1000:.0f} ms",
                f"{plan / whole_plan:.2f}",
            ]
        )
    total = arguments.files * 2 + arguments.files // 10
    print(
        table(
            f"Selective exports, {total:,} files ({arguments.rounds} rounds, medians, {machine()})",
            rows,
            ["selection", "files", "manifest", "x whole", "ZIP plan", "x whole"],
        )
    )


if __name__ == "__main__":
    main()
