"""Where a ZIP of many small files spends its time, per file (target 3's profile).

The same 10,000-file render run as bench/big_runs.py, in one thread and
without HTTP: each stage of a download timed on its own (best of --rounds),
then a cProfile of one whole stream. The budget line is what target 3 (a ZIP
of many small files at >= 50% of the single-download throughput) leaves per
file at the given reference throughput.

    python bench/per_file_costs.py [--files 10000] [--rounds 5] [--reference-mib-s 2000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import MIB, machine, make_workload, table
from export_service.aio.streaming import _next_batch
from export_service.config import load_settings
from export_service.core.manifest import Step
from export_service.core.safe_files import FolderFiles
from export_service.exports import Services, build_export
from export_service.zip import archive, records


def best_of(rounds: int, stage: Callable[[], object]) -> float:
    """The fastest of ``rounds`` runs, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        stage()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reference-mib-s", type=float, default=2000.0)
    arguments = parser.parse_args()
    total = 210 * MIB
    with tempfile.TemporaryDirectory(prefix="bench-per-file-") as temp:
        workload = make_workload(Path(temp), [total // arguments.files] * arguments.files)
        settings = load_settings(workload.config)
        services = Services.from_settings(settings)
        root_reals: dict[Step, str] = {
            step: os.path.realpath(getattr(settings.roots, step)) for step in get_args(Step)
        }
        export = build_export(services, workload.run_id, None)

        def plan() -> archive.ExportArchive:
            # The export's listed files, made again for each plan (as the
            # service's one plan drains them from its export).
            listed = (
                file for step in export.steps for file in step.listed_files(step.scan.records)
            )
            return archive.plan_archive(listed, root_reals, MIB)

        entries = plan().entries

        def system_calls() -> None:
            with FolderFiles() as files:
                for entry in entries:
                    fd, _ = files.open(entry.path, entry.root_real)
                    os.read(fd, entry.size)
                    os.fstat(fd)
                    os.close(fd)

        def zip_records() -> None:
            writer = records.Records()
            for entry in entries:
                writer.local_header(entry, 0)
            for _ in records.footer(entries, [0] * len(entries), 0):
                pass

        def stream(planned: archive.ExportArchive) -> None:
            for _ in planned.chunks():
                pass

        def stream_in_batches(planned: archive.ExportArchive) -> None:
            chunks = planned.chunks()
            while _next_batch(chunks, MIB):
                pass

        def timed_stream(body: Callable[[archive.ExportArchive], None]) -> float:
            times = []
            for _ in range(arguments.rounds):
                planned = plan()  # each stream needs a fresh plan
                started = time.perf_counter()
                body(planned)
                times.append(time.perf_counter() - started)
            return min(times)

        manifest = best_of(arguments.rounds, lambda: build_export(services, workload.run_id, None))
        planning = best_of(arguments.rounds, plan)
        syscalls = best_of(arguments.rounds, system_calls)
        record_time = best_of(arguments.rounds, zip_records)
        streaming = timed_stream(stream)
        batched = timed_stream(stream_in_batches)
        profiler = cProfile.Profile()
        planned = plan()
        profiler.runcall(stream_in_batches, planned)

    files = arguments.files
    per_file = {
        "scan and manifest entries (build_export)": manifest,
        "plan: names, access, layout": planning,
        "stream: open by folder fd, read, fstat, close": syscalls,
        "stream: zipstream-ng's records (local header, central dir)": record_time,
        "stream: our checks, CRC-32, generators": streaming - syscalls - record_time,
        "stream: gathering ~1 MiB batches": batched - streaming,
    }
    all_in = manifest + planning + batched
    budget = (total / (arguments.reference_mib_s * MIB * 0.5)) / files
    rows: list[list[object]] = [
        [stage, f"{seconds / files * 1e6:.1f}"] for stage, seconds in per_file.items()
    ]
    rows += [
        ["total, one thread, no HTTP", f"{all_in / files * 1e6:.1f}"],
        [
            f"budget at 50% of {arguments.reference_mib_s:.0f} MiB/s (target 3)",
            f"{budget * 1e6:.1f}",
        ],
    ]
    print(
        table(
            f"Per-file costs of a {files:,}-file ZIP (best of {arguments.rounds}, {machine()})",
            rows,
            ["stage", "us/file"],
        )
    )
    report = io.StringIO()
    pstats.Stats(profiler, stream=report).sort_stats("tottime").print_stats(12)
    profile = report.getvalue()
    print("cProfile of one stream in batches, by own time:\n")
    print("```\n" + profile[profile.index("   ncalls") :].rstrip() + "\n```")


if __name__ == "__main__":
    main()
