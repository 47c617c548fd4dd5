"""step_links.json: render_run_id -> param_run_id, shared with the AIR backend.

The file format is the backend's: ``{"<render_run_id>": {"param_run_id": "<id>",
"updated_at": <unix seconds>, ...}, ...}``. Keys of a record this service does
not know are kept. Reads take no lock; a parsed copy is cached by the file's
(mtime_ns, size, inode), so a large file is not parsed again per manifest.
Writes lock a file beside it (``flock``), read, modify, write a temp file in the
same folder, fsync it, rename it over the old one and fsync the folder: several
processes writing at once lose nothing, and a crash leaves the old content.
A corrupt file is never overwritten.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LinksFileCorrupt
from .run_ids import run_id_problem

log = logging.getLogger(__name__)

Records = dict[str, Any]
_FileKey = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    key: _FileKey | None  # None: the file does not exist
    records: Records
    problem: str | None  # why the file is unusable, or None


_ABSENT = _Snapshot(None, {}, None)


def _parse(raw: bytes) -> tuple[Records, str | None]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return {}, f"not valid UTF-8 JSON ({error})"
    if not isinstance(data, dict):
        return {}, f"top level is a JSON {type(data).__name__}, not an object"
    return data, None


class LinkStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._snapshot = _ABSENT
        self._reported_key: _FileKey | None = None

    # -- reading ---------------------------------------------------------

    def _current(self) -> _Snapshot:
        try:
            with self.path.open("rb") as handle:
                info = os.fstat(handle.fileno())
                key = (info.st_mtime_ns, info.st_size, info.st_ino)
                cached = self._snapshot
                if cached.key == key:
                    return cached
                raw = handle.read()
        except FileNotFoundError:
            self._snapshot = _ABSENT
            return _ABSENT
        except OSError as error:
            return _Snapshot(None, {}, f"cannot be read ({error.strerror})")
        records, problem = _parse(raw)
        snapshot = _Snapshot(key, records, problem)
        self._snapshot = snapshot
        if problem and self._reported_key != key:
            self._reported_key = key
            log.error("links file %s is unusable: %s; no links are used", self.path, problem)
        return snapshot

    def problem(self) -> str | None:
        """Why the links file cannot be used (for readiness), or None."""
        return self._current().problem

    def record(self, render_run_id: str) -> dict[str, Any] | None:
        """The link of ``render_run_id``; None when absent or the file is unusable."""
        record = self._current().records.get(render_run_id)
        return record if isinstance(record, dict) else None

    def param_run_id_for(self, render_run_id: str) -> str | None:
        """The linked param run id, when there is a valid one."""
        record = self.record(render_run_id)
        value = record.get("param_run_id") if record else None
        if not isinstance(value, str):
            return None
        if run_id_problem(value) is not None:
            log.warning("ignoring link %s -> %r: not a valid run id", render_run_id, value)
            return None
        return value

    # -- writing ---------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Held by one writer at a time: flock locks belong to an open file
        description, and each writer opens the lock file itself, so threads of
        one process exclude each other as other processes do."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def link(self, render_run_id: str, param_run_id: str) -> dict[str, Any]:
        """Set the link, keeping the record's other keys; returns the record."""
        with self._exclusive():
            snapshot = self._current()
            if snapshot.problem:
                raise LinksFileCorrupt(
                    f"the links file is unusable ({snapshot.problem}); it is left as it is"
                )
            records = dict(snapshot.records)
            old = records.get(render_run_id)
            record = dict(old) if isinstance(old, dict) else {}
            record["param_run_id"] = param_run_id
            record["updated_at"] = time.time()
            records[render_run_id] = record
            self._replace(json.dumps(records, ensure_ascii=False, indent=2).encode())
            return record

    def _remove_dead_writers_temp_files(self) -> None:
        """Temp files are only made under the lock, so one found while holding
        it was left by a writer that died before its rename."""
        for leftover in self.path.parent.glob(f".{self.path.name}.*"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()

    def _replace(self, content: bytes) -> None:
        self._remove_dead_writers_temp_files()
        folder = self.path.parent
        try:
            mode = self.path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        handle, temp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=folder)
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(content)
                temp.flush()
                os.fchmod(temp.fileno(), mode)
                os.fsync(temp.fileno())
            os.replace(temp_name, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        folder_handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder_handle)
        finally:
            os.close(folder_handle)
