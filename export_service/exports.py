"""The service's use cases: a project's export as a manifest or planned as a
ZIP, from the services an app keeps for its life.

Blocking functions, each run off the event loop in one hop by its caller
(the HTTP handlers, or the CLI's one-shot commands).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, get_args

from .config import Settings
from .core.manifest import Export, Step, StepFiles
from .core.safe_files import resolved
from .core.scanning import (
    UNLISTED_REASONS,
    FolderScan,
    RunFolderIndex,
    ScanStopped,
    TooManyFolders,
    exact_run_folder,
    root_problem,
    scan_run_folder,
)
from .core.selection import Selection
from .errors import ExportTooLarge
from .links.store import LinkStore
from .zip.archive import ExportArchive, plan_archive
from .zip.crcs import CrcCache

log = logging.getLogger("export_service.exports")  # obs/logs.py: LOGGER_NAMES


class RootStates:
    """Whether each root could be read at the last export that looked, so
    that the log says it once per change: when a root becomes unreadable
    (each request that misses it counts it in X-Export-Unlisted-Paths), and
    when it can be read again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._problems: dict[Step, str | None] = {}

    def note(self, step: Step, root: str, error: OSError | None) -> None:
        problem = error.strerror if error is not None else None
        with self._lock:
            if self._problems.get(step) == problem:
                return
            was = self._problems.get(step, None)
            self._problems[step] = problem
        if problem is not None:
            log.warning(
                "roots.%s %r cannot be read (%s): its files are left out of every export "
                "until it can",
                step,
                root,
                problem,
            )
        elif was is not None:
            log.info("roots.%s %r can be read again", step, root)


@dataclass(frozen=True, slots=True)
class Services:
    """The services an app (or a CLI command) keeps for its life, which every
    export uses: the settings, the links file's store, the indexes of the run
    folders in the MIDI and param roots, and whether each root could be read."""

    settings: Settings
    links: LinkStore
    midi_folders: RunFolderIndex
    param_folders: RunFolderIndex
    root_states: RootStates = field(default_factory=RootStates)

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        roots = settings.roots
        return cls(
            settings,
            LinkStore(settings.links.file, settings.links.max_bytes),
            RunFolderIndex(str(roots.midi_generation)),
            RunFolderIndex(str(roots.param_generation)),
        )


def build_export(
    services: Services,
    render_run_id: str,
    param_run_id: str | None,
    stop: threading.Event | None = None,
    selection: Selection | None = None,
) -> Export:
    """Collect one project's files from the three roots (blocking).

    Both ids must already be validated. ``param_run_id`` None means: take it
    from the links file. With a ``selection``, a step it leaves out is not
    looked up at all (nor the links file, without param_generation), is
    neither in the export nor ``missing``, and only the files under its
    prefixes are taken (the limits count what the selective scan takes:
    scanning.scan_run_folder). :class:`ExportTooLarge` past
    ``limits.max_files_per_export`` files or ``limits.max_folders_per_export``
    folders (the three steps' together); :class:`ScanStopped` soon after
    ``stop`` is set.
    """
    roots, urls = services.settings.roots, services.settings.urls
    if param_run_id is None and (selection is None or "param_generation" in selection):
        param_run_id = services.links.valid_param_run_id(render_run_id)
    chosen = selection.folder_choice if selection is not None and selection.prefixes else None

    render_root = str(roots.render)
    lookups: list[tuple[Step, str, str, Callable[[], str | None]]] = [
        ("render", render_root, urls.render, lambda: exact_run_folder(render_root, render_run_id)),
        (
            "midi_generation",
            services.midi_folders.root,
            urls.midi_generation,
            lambda: services.midi_folders.newest(render_run_id),
        ),
        (
            "param_generation",
            services.param_folders.root,
            urls.param_generation,
            lambda: services.param_folders.newest(param_run_id) if param_run_id else None,
        ),
    ]
    limits = services.settings.limits
    limit, folder_limit = limits.max_files_per_export, limits.max_folders_per_export
    steps: list[StepFiles] = []
    for step, root, prefix, find_folder in lookups:
        if selection is not None and step not in selection:
            continue
        if stop is not None and stop.is_set():
            raise ScanStopped(f"the export of {render_run_id!r} was stopped")
        folder = find_folder()
        scan = FolderScan()
        # A root the service cannot read is no run without files: it counts
        # as a path that could not be listed (the header, the metric).
        problem = None if folder else root_problem(root)
        services.root_states.note(step, root, problem)
        if problem is not None:
            scan.unlisted[UNLISTED_REASONS.get(problem.errno or 0, "error")] += 1
        if folder:
            try:
                scan = scan_run_folder(
                    root,
                    folder,
                    limit - sum(len(files.scan) for files in steps),
                    folder_limit - sum(len(files.scan.folders) for files in steps),
                    stop,
                    chosen,
                )
            except TooManyFolders:
                raise ExportTooLarge(
                    f"the export of {render_run_id!r} has more than {folder_limit:,} folders,"
                    " the most this service lists for one export"
                    " (limits.max_folders_per_export)"
                ) from None
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
    services: Services,
    render_run_id: str,
    param_run_id: str | None,
    stop: threading.Event | None = None,
    selection: Selection | None = None,
) -> ManifestBody:
    """The manifest as the API sends it (blocking; its JSON for 10,000 files
    takes milliseconds, so it is made in the same hop as the scan)."""
    export = build_export(services, render_run_id, param_run_id, stop, selection)
    return ManifestBody(export.manifest_json(), export.unlisted)


def plan_export_archive(
    services: Services,
    render_run_id: str,
    param_run_id: str | None,
    crcs: CrcCache | None = None,
    stop: threading.Event | None = None,
    selection: Selection | None = None,
) -> ExportArchive:
    """The manifest's files, planned as one download (blocking, one hop).
    With a ``selection``, those it takes, and its key in the ETag."""
    export = build_export(services, render_run_id, param_run_id, stop, selection)
    root_reals: dict[Step, str] = {
        step: resolved(str(getattr(services.settings.roots, step))) or "" for step in get_args(Step)
    }
    archive = plan_archive(
        export.drain_files(),
        root_reals,
        services.settings.limits.read_chunk_bytes,
        crcs,
        selection.key if selection is not None else None,
    )
    archive.unlisted = export.unlisted
    archive.missing = list(export.missing)
    archive.param_run_id = export.param_run_id
    return archive
