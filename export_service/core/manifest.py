"""The export manifest: which files of a project exist, with their URLs.

An :class:`Export` is what one lookup of a project's run folders found (made
by :func:`export_service.exports.build_export`, off the event loop). The JSON is byte for
byte the original AIR export module's: same field order, compact separators,
UTF-8, as FastAPI renders it. An export keeps its scans' compact records (one
small tuple per scanned file) and makes its listed files from them slice by
slice: as ``ExportFile`` dicts while it writes the JSON, each slice serialized
by a pydantic ``TypeAdapter`` (a run of 200,000 files never holds 200,000
dicts at once), or as :class:`ListedFile` tuples for a ZIP's plan. (The
stages of a file and their names: zip/plan.py.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from .scanning import FileRecord, FolderScan, display_name
from .urls import url_segment

Step = Literal["param_generation", "midi_generation", "render"]


# A listed file in the manifest's JSON. Its name and the absence of a
# docstring are part of the OpenAPI document (a docstring would become its
# schema's description).
class ExportFile(TypedDict):
    step: Step
    rel_path: str
    url: str
    bytes: int | None


class ExportManifest(TypedDict):
    render_run_id: str
    midi_run_id: str | None
    param_run_id: str | None
    files: list[ExportFile]
    missing: list[Step]


MANIFEST = TypeAdapter(ExportManifest)
_FILES = TypeAdapter(list[ExportFile])
# Listed files made and serialized at once: small enough that a slice
# never holds the GIL for long, large enough that the per-slice cost vanishes.
_SLICE = 2048


def manifest_json(manifest: ExportManifest) -> bytes:
    return MANIFEST.dump_json(manifest)


class ListedFile(NamedTuple):
    """A listed file as a ZIP's plan takes it: its step and rel_path as the
    manifest lists them, and what the scan saw of it on disk (no URL: a ZIP
    has none, and making 10,000 of them was a fifth of the plan)."""

    step: Step
    rel_path: str
    path: str  # resolved absolute path; never leaves the service
    size: int | None  # None when the file could not be stat'ed
    mtime_ns: int
    ctime_ns: int
    dev: int
    ino: int


@dataclass(frozen=True, slots=True)
class StepFiles:
    """One step's scan, with the rel_path and URL prefix of each of its
    folders (a run's files share a few folders: made once per folder)."""

    step: Step
    scan: FolderScan
    rel_starts: list[str]
    url_starts: list[str]

    @classmethod
    def of(cls, step: Step, scan: FolderScan, folder: str, base: str, prefix: str) -> StepFiles:
        run_rel, run_url = display_name(folder), f"{base}{prefix}/{url_segment(folder)}"
        rel_starts, url_starts = [], []
        for scanned in scan.folders:
            rel_starts.append("/".join((run_rel, *map(display_name, scanned.parts))))
            url_starts.append("/".join((run_url, *map(url_segment, scanned.parts))))
        return cls(step, scan, rel_starts, url_starts)

    def rel_path(self, folder: int, name: str) -> str:
        return f"{self.rel_starts[folder]}/{display_name(name)}"

    def export_files(self, records: list[FileRecord]) -> list[ExportFile]:
        step, url_starts = self.step, self.url_starts
        return [
            {
                "step": step,
                "rel_path": self.rel_path(folder, name),
                "url": f"{url_starts[folder]}/{url_segment(name)}",
                "bytes": size,
            }
            for folder, name, size, *_ in records
        ]

    def listed_files(self, records: list[FileRecord]) -> Iterator[ListedFile]:
        step, scan = self.step, self.scan
        for record in records:
            folder, name, size, mtime_ns, ctime_ns, dev, ino, _ = record
            yield ListedFile(
                step,
                self.rel_path(folder, name),
                scan.path(record),
                size,
                mtime_ns,
                ctime_ns,
                dev,
                ino,
            )


@dataclass(frozen=True, slots=True)
class Export:
    render_run_id: str
    param_run_id: str | None
    steps: list[StepFiles]  # in manifest order (by step name), each sorted by rel_path
    missing: list[Step]

    def __len__(self) -> int:
        return sum(len(step.scan) for step in self.steps)

    @property
    def unlisted(self) -> Counter[str]:
        """Paths below the run folders that could not be listed, by reason."""
        return sum((step.scan.unlisted for step in self.steps), Counter())

    def drain_files(self) -> Iterator[ListedFile]:
        """The listed files, in manifest order, made one by one, and the export
        emptied as they go: each slice of records is dropped once it is handed
        over, so that planning a ZIP, which keeps what it needs of every file,
        does not hold the scan's records too. Afterwards the export lists
        nothing."""
        for step in self.steps:
            records = step.scan.records
            records.reverse()  # in place; then slices leave from the end, in O(1)
            while records:
                taken = records[-_SLICE:]
                del records[-_SLICE:]
                taken.reverse()
                yield from step.listed_files(taken)

    def manifest_json(self) -> bytearray:
        """The manifest as the API sends it, written slice by slice into one
        buffer (no second copy of a document that can be tens of MB)."""
        found = {step.step for step in self.steps if step.scan}
        head, _, tail = manifest_json(
            {
                "render_run_id": self.render_run_id,
                "midi_run_id": self.render_run_id if "midi_generation" in found else None,
                "param_run_id": self.param_run_id if "param_generation" in found else None,
                "files": [],
                "missing": self.missing,
            }
        ).partition(b'"files":[]')  # in a JSON string a quote is escaped: the key is the first
        document = bytearray(head)
        document += b'"files":['
        separator = b""
        for step in self.steps:
            for start in range(0, len(step.scan), _SLICE):
                document += separator
                files = step.export_files(step.scan.records[start : start + _SLICE])
                document += memoryview(_FILES.dump_json(files))[1:-1]
                separator = b","
        document += b"]"
        document += tail
        return document
