"""The export manifest: which files of a project exist, with their URLs.

``build_export`` is one blocking function (link lookup, folder lookups, three
scans) that callers run off the event loop in one hop. The JSON is byte for
byte the original AIR export module's: same field order, compact separators,
UTF-8, as FastAPI renders it. An export keeps its scans' compact records (one
small tuple per scanned file) and makes its listed files from them slice by
slice: as ``ExportFile`` dicts while it writes the JSON, each slice serialized
by a pydantic ``TypeAdapter`` (a run of 200,000 files never holds 200,000
dicts at once), or as :class:`ListedFile` tuples for a ZIP's plan. (The
stages of a file and their names: archive.py.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pydantic import TypeAdapter
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from .config import Settings
from .errors import ExportTooLarge
from .links import LinkStore
from .scanning import (
    FileRecord,
    FolderScan,
    RunFolderIndex,
    display_name,
    exact_run_folder,
    scan_run_folder,
)
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


@dataclass(frozen=True, slots=True)
class ExportSources:
    """Where exports come from: the settings, the links file, and the indexes
    of the run folders in the MIDI and param roots (kept for the app's life)."""

    settings: Settings
    links: LinkStore
    midi_folders: RunFolderIndex
    param_folders: RunFolderIndex

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportSources:
        roots = settings.roots
        return cls(
            settings,
            LinkStore(settings.links.file),
            RunFolderIndex(str(roots.midi_generation)),
            RunFolderIndex(str(roots.param_generation)),
        )


class ListedFile(NamedTuple):
    """A listed file as a ZIP's plan takes it: its step and rel_path as the
    manifest lists them, and what the scan saw of it on disk (no URL: a ZIP
    has none, and making 10,000 of them was a fifth of the plan)."""

    step: Step
    rel_path: str
    path: str  # resolved absolute path; never leaves the service
    size: int | None  # None when the file could not be stat'ed
    mtime_ns: int
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
            folder, name, size, mtime_ns, dev, ino, _ = record
            yield ListedFile(
                step, self.rel_path(folder, name), scan.path(record), size, mtime_ns, dev, ino
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

    @property
    def files(self) -> Iterator[ListedFile]:
        """The listed files, in manifest order, made one by one."""
        for step in self.steps:
            records = step.scan.records
            for start in range(0, len(records), _SLICE):
                yield from step.listed_files(records[start : start + _SLICE])

    def take_files(self) -> Iterator[ListedFile]:
        """:attr:`files`, each slice of records dropped once it is handed over
        (the export is empty afterwards). Planning a ZIP keeps what it needs of
        every file: the scan's records need not outlive the plan's entries."""
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


def build_export(sources: ExportSources, render_run_id: str, param_run_id: str | None) -> Export:
    """Collect one project's files from the three roots (blocking).

    Both ids must already be validated. ``param_run_id`` None means: take it
    from the links file.
    """
    roots, urls = sources.settings.roots, sources.settings.urls
    if param_run_id is None:
        param_run_id = sources.links.param_run_id_for(render_run_id)

    render_root = str(roots.render)
    lookups: list[tuple[Step, str, str, str | None]] = [
        ("render", render_root, urls.render, exact_run_folder(render_root, render_run_id)),
        (
            "midi_generation",
            sources.midi_folders.root,
            urls.midi_generation,
            sources.midi_folders.newest(render_run_id),
        ),
        (
            "param_generation",
            sources.param_folders.root,
            urls.param_generation,
            sources.param_folders.newest(param_run_id) if param_run_id else None,
        ),
    ]
    limit = sources.settings.limits.max_files_per_export
    steps: list[StepFiles] = []
    for step, root, prefix, folder in lookups:
        scan = FolderScan()
        if folder:
            try:
                scan = scan_run_folder(
                    root, folder, limit - sum(len(files.scan) for files in steps)
                )
            except ExportTooLarge:
                raise ExportTooLarge(
                    f"the export of {render_run_id!r} has more than {limit:,} files, the "
                    "most this service lists for one export (limits.max_files_per_export)"
                ) from None
        steps.append(StepFiles.of(step, scan, folder or "", urls.base, prefix))
    return Export(
        render_run_id,
        param_run_id,
        sorted(steps, key=lambda files: files.step),  # manifest order: by step, then rel_path
        [files.step for files in steps if not files.scan],
    )


class ManifestBody(NamedTuple):
    json: bytearray
    unlisted: Counter[str]  # paths that could not be listed, by reason


def export_manifest_json(
    sources: ExportSources, render_run_id: str, param_run_id: str | None
) -> ManifestBody:
    """The manifest as the API sends it (blocking; its JSON for 10,000 files
    takes milliseconds, so it is made in the same hop as the scan)."""
    export = build_export(sources, render_run_id, param_run_id)
    return ManifestBody(export.manifest_json(), export.unlisted)
