"""step_links.json: render_run_id -> param_run_id, shared with the AIR backend.

The file format is the backend's: ``{"<render_run_id>": {"param_run_id": "<id>",
"updated_at": <unix seconds>, ...}, ...}``, UTF-8 JSON, read with the same
parser the backend uses (Python's ``json``). Content either parses into links
or the whole file counts as corrupt (not UTF-8, not JSON, nested deeper or with
integers longer than that parser takes, not an object): then no link is used,
readiness says why, and the file is never overwritten.

The file, its symbolic link's target and the lock file are opened without
blocking and must be regular files: a FIFO, a device or a folder there makes
the file unusable (readiness says why, manifests go on without a link, a PUT
is a 503), never a request that waits for a writer that never comes.

Reads take no lock. The parsed links are cached by the file's (mtime_ns, size,
inode); a change is parsed once, by the first reader to see it, while the
others wait for that parse (single-flight) instead of parsing it again.

Writes lock a file beside the real file (the configured path with its
symbolic links resolved, so every writer of one file shares one lock whatever
path reached it), read, modify, write a temp file beside the real file, fsync
it, rename it over the old one and fsync the folder: several processes
writing at once lose nothing, and a crash leaves the old content. A temp
file's name carries its writer's host and process id; a writer removes
only the temp files of dead processes of its own host (one that died before
its rename), never another writer's.

Every record but the one written is copied back byte for byte, so values this
service cannot use (lone surrogates, huge numbers, deep nesting, unknown keys)
are kept exactly as the backend's parser read them, and never break a write.

The service parses at most ``links.max_bytes`` of it: a larger file counts
as unusable (no link is used, readiness says why, a PUT is a 503
``links_file_too_large``) without being read, so neither the parse's memory
nor its hold on the GIL grows with whatever the file holds.

The AIR backend's own helpers, :func:`link_param_to_render` and
:func:`get_param_for_render`, are here with its signatures, writing through the
same lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import math
import os
import re
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from ..config import CONFIG_ENV_VAR, ENV_PREFIX, load_settings
from ..core.run_ids import run_id_problem
from ..errors import (
    ConfigError,
    ExportServiceError,
    LinksFileCorrupt,
    LinksFileTooLarge,
    LinksFileUnwritable,
)

log = logging.getLogger("export_service.links")  # obs/logs.py: LOGGER_NAMES

LINKS_FILE_ENV_VAR = ENV_PREFIX + "LINKS_FILE"
# The most of the links file the service parses (``links.max_bytes``).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024

_FileKey = tuple[int, int, int]


class StoredLink(NamedTuple):
    """One record's usable values: ``param_run_id`` as written (any string),
    ``updated_at`` when it is a finite number, else None. (A tuple of atoms:
    the garbage collector stops tracking it, so 100,000 links do not lengthen
    every full collection.)"""

    param_run_id: str
    updated_at: float | None


Links = dict[str, StoredLink]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    key: _FileKey | None  # None: the file does not exist
    links: Links
    problem: str | None  # why the file is unusable, or None
    # The records that hold no link at all (not an object, no string
    # param_run_id), each with why: passed over, as the backend's helper does.
    unusable: tuple[tuple[str, str], ...] = ()


_ABSENT = _Snapshot(None, {}, None)


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a folder",
    stat.S_IFSOCK: "a socket",
}


class _NotARegularFile(OSError):
    pass


def _open_regular(path: Path, flags: int = os.O_RDONLY) -> int:
    """A descriptor of ``path`` (links followed), opened without blocking and
    checked to be a regular file. Opening a FIFO for reading waits for a
    writer: one such open would hold the parse lock, and every request
    queued behind it, for good; reading a device may never end."""
    fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = _KINDS.get(stat.S_IFMT(mode), "something else")
            raise _NotARegularFile(errno.EINVAL, f"not a regular file but {kind}", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _excerpt(value: str, limit: int = 40) -> str:
    """``value`` for a log line: its repr, cut after ``limit`` characters."""
    return repr(value[:limit]) + (f"... ({len(value)} characters)" if len(value) > limit else "")


def _finite_time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return number if math.isfinite(number) else None


def _each_object(value: dict[str, Any]) -> dict[str, Any]:
    """The parser's object hook: calling back into Python once per object lets
    the event loop's thread take the GIL during a long parse."""
    return value


def _decode(raw: bytes) -> tuple[Any, str | None]:
    """The file's JSON value as the backend's parser reads it, or why it cannot be read."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, f"not valid UTF-8 ({error})"
    try:
        return json.loads(text, object_hook=_each_object), None
    except RecursionError:
        return None, "nested too deeply for a JSON parser"
    except ValueError as error:  # JSONDecodeError, or an integer too long to convert
        return None, f"not valid JSON ({error})"


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "a number"


def _parse(raw: bytes) -> tuple[Links, str | None, tuple[tuple[str, str], ...]]:
    data, problem = _decode(raw)
    if problem:
        return {}, problem, ()
    if not isinstance(data, dict):
        return {}, f"top level is a JSON {type(data).__name__}, not an object", ()
    links = {}
    unusable = []
    for render_run_id, record in data.items():
        if not isinstance(record, dict):
            unusable.append((render_run_id, f"the record is {_json_kind(record)}, not an object"))
            continue
        param_run_id = record.get("param_run_id")
        if isinstance(param_run_id, str):
            links[render_run_id] = StoredLink(param_run_id, _finite_time(record.get("updated_at")))
        elif "param_run_id" not in record:
            unusable.append((render_run_id, "the record has no param_run_id"))
        else:
            unusable.append(
                (render_run_id, f"its param_run_id is {_json_kind(param_run_id)}, not a string")
            )
    return links, None, tuple(unusable)


# -- writing one record back into the file's own text ------------------------

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class _Member:
    key: str
    start: int  # of the key's opening quote
    value_start: int
    end: int  # after the value


def _skip_space(text: str, index: int) -> int:
    match = _SPACE.match(text, index)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _members(text: str, start: int) -> list[_Member]:
    """The members of the JSON object whose ``{`` is at ``start``, with their
    spans in ``text`` (which json.loads accepted)."""
    members: list[_Member] = []
    index = _skip_space(text, start + 1)
    if text[index] == "}":
        return members
    while True:
        key, after_key = _DECODER.raw_decode(text, index)  # a JSON string
        value_start = _skip_space(text, _skip_space(text, after_key) + 1)  # past the ':'
        _, end = _DECODER.raw_decode(text, value_start)
        members.append(_Member(key, index, value_start, end))
        index = _skip_space(text, end)
        if text[index] == "}":
            return members
        index = _skip_space(text, index + 1)  # past the ','


def _with_link(text: str, render_run_id: str, link: StoredLink) -> str:
    """``text`` (a JSON object json.loads accepted) with the record of
    ``render_run_id`` set to ``link``: every other member, and the record's
    other keys, copied as they are; the new values escaped to ASCII."""
    members = _members(text, _skip_space(text, 0))
    kept = [text[m.start : m.end] for m in members if m.key != render_run_id]
    own = [m for m in members if m.key == render_run_id]
    record_members = [
        json.dumps("param_run_id") + ": " + json.dumps(link.param_run_id),
        json.dumps("updated_at") + ": " + repr(link.updated_at),
    ]
    if own and text[own[-1].value_start] == "{":  # the parser keeps the last duplicate
        record_members += [
            text[m.start : m.end]
            for m in _members(text, own[-1].value_start)
            if m.key not in ("param_run_id", "updated_at")
        ]
    kept.append(json.dumps(render_run_id) + ": {" + ", ".join(record_members) + "}")
    return "{\n  " + ",\n  ".join(kept) + "\n}\n"


class LinkStore:
    """The links file of one path: cached, single-flight reads; locked,
    atomic writes that keep every other record as it is.

    Safe to share between threads and with other processes writing the same
    file. The methods block (they read or write the file): the service calls
    them off the event loop. Reading never raises: a file that is missing
    holds no links, and one that cannot be used holds none either and says
    why in :meth:`problem`.
    """

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._snapshot = _ABSENT
        self._reported_key: _FileKey | None = None
        self._parsing = threading.Lock()

    # -- reading ---------------------------------------------------------

    def _current(self) -> _Snapshot:
        # One reader at a time checks the file and, after a change, parses it;
        # the others wait here and then find the new snapshot cached.
        with self._parsing:
            try:
                with open(_open_regular(self.path), "rb") as handle:
                    info = os.fstat(handle.fileno())
                    key = (info.st_mtime_ns, info.st_size, info.st_ino)
                    if self._snapshot.key == key:
                        return self._snapshot
                    raw = self._read_bounded(handle, info.st_size)
                    too_large = self._too_large(max(info.st_size, len(raw)))
                    if too_large:
                        return self._remember_problem(key, too_large)
            except FileNotFoundError:
                self._snapshot = _ABSENT
                return _ABSENT
            except OSError as error:
                return _Snapshot(None, {}, f"cannot be read ({error.strerror})")
            return self._remember(key, raw)

    def _read_bounded(self, handle: BinaryIO, size: int) -> bytes:
        """The file's bytes, never more than one past ``max_bytes`` (nothing
        when its size is already over: a file growing meanwhile is caught by
        the length read)."""
        return b"" if size > self.max_bytes else handle.read(self.max_bytes + 1)

    def _too_large(self, size: int) -> str | None:
        if size <= self.max_bytes:
            return None
        return f"{size:,} bytes, over links.max_bytes ({self.max_bytes:,}); it is not read"

    def _remember_problem(self, key: _FileKey, problem: str) -> _Snapshot:
        snapshot = self._snapshot = _Snapshot(key, {}, problem)
        if self._reported_key != key:
            self._reported_key = key
            log.error("links file %s is unusable: %s; no links are used", self.path, problem)
        return snapshot

    def _remember(self, key: _FileKey, raw: bytes) -> _Snapshot:
        links, problem, unusable = _parse(raw)
        if problem:
            return self._remember_problem(key, problem)
        snapshot = self._snapshot = _Snapshot(key, links, None, unusable)
        if self._reported_key != key:
            self._reported_key = key
            self._report_ignored(snapshot)
        return snapshot

    @staticmethod
    def _ignored(snapshot: _Snapshot) -> list[tuple[str, str]]:
        invalid = [
            (render_run_id, f"its param_run_id {_excerpt(link.param_run_id)} {problem}")
            for render_run_id, link in snapshot.links.items()
            if (problem := run_id_problem(link.param_run_id)) is not None
        ]
        return [*snapshot.unusable, *invalid]

    def _report_ignored(self, snapshot: _Snapshot) -> None:
        """One warning per change of the file for the records it ignores (no
        object, no string param_run_id, or one that is not a valid run id):
        how many, and a few examples, cut short (a value may be megabytes
        long)."""
        ignored = self._ignored(snapshot)
        if ignored:
            examples = "; ".join(f"{_excerpt(r)}: {why}" for r, why in ignored[:3])
            log.warning(
                "links file %s: ignoring %d record(s) that hold no usable link (e.g. %s)",
                self.path,
                len(ignored),
                examples,
            )

    def ignored(self) -> list[tuple[str, str]]:
        """Every record the service passes over, as (render_run_id, why): not
        an object, no string ``param_run_id``, or one that is not a valid run
        id. Empty when the file is missing or unusable."""
        return self._ignored(self._current())

    def problem(self) -> str | None:
        """Why the links file cannot be used (for readiness), or None."""
        return self._current().problem

    def all_stored(self) -> Links:
        """Every record as stored (a copy), whatever its param run id; empty
        when the file is missing or unusable (see :meth:`problem`)."""
        return dict(self._current().links)

    def stored(self, render_run_id: str) -> StoredLink | None:
        """The record of ``render_run_id`` as stored, whatever its param run
        id; None when there is none (or the file is unusable)."""
        return self._current().links.get(render_run_id)

    def link_for(self, render_run_id: str) -> StoredLink | None:
        """The link of ``render_run_id`` when its param run id is a valid run
        id, else None."""
        link = self.stored(render_run_id)
        if link is None or run_id_problem(link.param_run_id) is not None:
            return None  # reported once when the file was read, not per request
        return link

    def param_run_id_for(self, render_run_id: str) -> str | None:
        """The linked param run id, when there is a valid one, else None."""
        link = self.link_for(render_run_id)
        return link.param_run_id if link else None

    def write_problem(self) -> str | None:
        """Why a write would fail now (for readiness), or None: the folders
        that would get the lock file and the temp file must be writable by
        this process, and the file system must have room."""
        target = Path(os.path.realpath(self.path))
        if self.path.is_symlink() and not target.parent.is_dir():
            return f"it is a symbolic link to {str(target)!r}, whose folder does not exist"
        for folder in dict.fromkeys((self.path.parent, target.parent)):
            existing = _nearest_existing(folder)
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"folder {str(existing)!r} is not writable by this process"
            space = os.statvfs(existing)
            # File systems without fixed counts (btrfs has no inode count) report 0 totals.
            if (space.f_blocks and not space.f_bavail) or (space.f_files and not space.f_favail):
                return f"folder {str(existing)!r} is on a full file system"
        lock_path = _lock_path(target)
        if lock_path.exists() and not lock_path.is_file():
            return f"lock file {str(lock_path)!r} is not a regular file"
        if lock_path.exists() and not os.access(lock_path, os.W_OK):
            return f"lock file {str(lock_path)!r} is not writable by this process"
        return None

    # -- writing ---------------------------------------------------------

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[Path]:
        """Held by one writer of the real file at a time; yields that file's
        path. The lock file lies beside the real file, whatever chain of
        symbolic links led there: writers configured with different paths to
        one file share it. flock locks belong to an open file description,
        and each writer opens the lock file itself, so threads of one process
        exclude each other as other processes do. The path is resolved again
        once the lock is held: a link retargeted meanwhile is followed to the
        file it now names, under that file's lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            target = Path(os.path.realpath(self.path))
            lock = _open_regular(_lock_path(target), os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if Path(os.path.realpath(self.path)) == target:
                        yield target
                        return
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            finally:
                os.close(lock)

    def link(self, render_run_id: str, param_run_id: str) -> StoredLink:
        """Set the link, keeping the record's other keys and every other record.

        :class:`LinksFileCorrupt` when the file is unusable (it is left as it
        is), :class:`LinksFileUnwritable` when it cannot be written (nothing
        is left behind).
        """
        try:
            with self._exclusive() as target:
                text = self._validated_text(target)
                link = StoredLink(param_run_id, time.time())
                try:
                    content = _with_link(text, render_run_id, link)
                except RecursionError:
                    # The file was parsed (perhaps cached) from a shallower call
                    # stack than this writer's, e.g. a backend thread deep in
                    # its framework calling link_param_to_render.
                    raise LinksFileCorrupt(
                        "the links file nests too deeply to be rewritten from here;"
                        " it is left as it is"
                    ) from None
                self._replace(target, content.encode())
                return link
        except OSError as error:
            where = error.filename or self.path.parent
            raise LinksFileUnwritable(
                f"the links file cannot be written ({error.strerror}: {str(where)!r})"
            ) from None

    def _validated_text(self, target: Path) -> str:
        """The file's text, read under the lock; "{}" when it does not exist."""
        try:
            with open(_open_regular(target), "rb") as handle:
                info = os.fstat(handle.fileno())
                raw = self._read_bounded(handle, info.st_size)
        except FileNotFoundError:
            return "{}"
        except _NotARegularFile as error:
            raise LinksFileCorrupt(
                f"the links file is unusable ({error.strerror}); it is left as it is"
            ) from None
        key = (info.st_mtime_ns, info.st_size, info.st_ino)
        too_large = self._too_large(max(info.st_size, len(raw)))
        if too_large:
            with self._parsing:
                self._remember_problem(key, too_large)
            raise LinksFileTooLarge(
                f"the links file is unusable ({too_large}); it is left as it is"
            )
        with self._parsing:
            snapshot = self._snapshot if self._snapshot.key == key else self._remember(key, raw)
        if snapshot.problem:
            raise LinksFileCorrupt(
                f"the links file is unusable ({snapshot.problem}); it is left as it is"
            )
        return raw.decode("utf-8")

    @staticmethod
    def _remove_dead_writers_temp_files(target: Path) -> None:
        """The temp files left by writers of this host that died before their
        rename. A temp file is named for its writer's host and process: one
        of another host (another container sharing the folder), of a live
        process, or named otherwise is never touched, so a writer that holds
        another lock (an older version, another path to the file) keeps its
        temp file."""
        own_prefix = _temp_prefix(target, "")
        for leftover in target.parent.iterdir():
            if not leftover.name.startswith(own_prefix):
                continue
            pid_text, _, _ = leftover.name.removeprefix(own_prefix).partition(".")
            if pid_text.isdigit() and not _process_alive(int(pid_text)):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()

    def _replace(self, target: Path, content: bytes) -> None:
        """Write ``content`` to a temp file beside ``target`` and rename it
        over ``target`` (a regular file: the path's symbolic links are
        already resolved, so they keep pointing to it)."""
        self._remove_dead_writers_temp_files(target)
        folder = target.parent
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
        handle, temp_name = tempfile.mkstemp(
            prefix=_temp_prefix(target, f"{os.getpid()}."), dir=folder
        )
        try:
            with os.fdopen(handle, "wb") as temp:
                temp.write(content)
                temp.flush()
                os.fchmod(temp.fileno(), mode)
                os.fsync(temp.fileno())
            os.replace(temp_name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_name)
            raise
        folder_handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder_handle)
        finally:
            os.close(folder_handle)


def _lock_path(target: Path) -> Path:
    """The lock file of the real links file ``target``."""
    return target.with_name(target.name + ".lock")


def _temp_prefix(target: Path, pid: str) -> str:
    """The start of a temp file's name: the target's, this host's and
    ``pid``'s (a host name is letters, digits, '-' and '.')."""
    return f".{target.name}.tmp-{socket.gethostname()}-{pid}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _nearest_existing(folder: Path) -> Path:
    """``folder``, or its closest ancestor that exists (where mkdir starts)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


# -- the AIR backend's helpers -------------------------------------------------


@functools.lru_cache(maxsize=8)
def _store_at(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> LinkStore:
    return LinkStore(Path(path), max_bytes)


@functools.lru_cache(maxsize=8)
def _links_of_config(config_path: str) -> tuple[str, int]:
    links = load_settings(Path(config_path), os.environ).links
    return str(links.file), links.max_bytes


def _configured_store() -> LinkStore | None:
    """The store of ``EXPORT_SERVICE_LINKS_FILE``, else of the links file in
    the config named by ``EXPORT_SERVICE_CONFIG``; None (logged) when neither
    is set, or when the variable is a relative path (as the config, it must
    be absolute: a relative one would depend on the caller's folder)."""
    path = os.environ.get(LINKS_FILE_ENV_VAR, "").strip()
    if path and not os.path.isabs(path):
        log.error("%s must be an absolute path, not %s", LINKS_FILE_ENV_VAR, _excerpt(path))
        return None
    if not path:
        config_path = os.environ.get(CONFIG_ENV_VAR, "").strip()
        if not config_path:
            log.error("no links file: set %s or %s", LINKS_FILE_ENV_VAR, CONFIG_ENV_VAR)
            return None
        return _store_at(*_links_of_config(config_path))
    return _store_at(path)


def link_param_to_render(render_run_id: str, param_run_id: str) -> None:
    """Record ``render_run_id`` -> ``param_run_id`` (the AIR backend's helper).

    Both ids are stripped; nothing happens when either is empty. Either id
    that breaks the service's run-id rules (a separator, a control character,
    over 200 characters...) is logged and nothing is written: the file is
    shared, and the backend only ever generates valid ids. Best-effort, as
    the backend calls it: any failure (corrupt or unwritable file, no file
    configured) is logged, never raised.
    """
    try:
        render = (render_run_id or "").strip()
        param = (param_run_id or "").strip()
        if not render or not param:
            return
        for name, value in (("render_run_id", render), ("param_run_id", param)):
            problem = run_id_problem(value)
            if problem is not None:
                log.error(
                    "link %s -> %s not written: %s %s",
                    _excerpt(render),
                    _excerpt(param),
                    name,
                    problem,
                )
                return
        store = _configured_store()
        if store is not None:
            store.link(render, param)
    except (ExportServiceError, ConfigError) as error:
        log.error("link %r -> %r not written: %s", render_run_id, param_run_id, error)
    except Exception:
        log.exception("link %r -> %r not written", render_run_id, param_run_id)


def get_param_for_render(render_run_id: str) -> str | None:
    """The param run linked to ``render_run_id`` (the AIR backend's helper).

    The id is stripped; None when it is empty, when there is no record, or
    when its ``param_run_id`` is not a string with a non-blank character.
    Any other string is returned as stored, as the backend's helper did, even
    one the service ignores as not a valid run id (the caller decides what
    to do with it). Never raises: failures are logged and give None.
    """
    try:
        render = (render_run_id or "").strip()
        store = _configured_store() if render else None
        link = store.stored(render) if store is not None else None
        return link.param_run_id if link is not None and link.param_run_id.strip() else None
    except ConfigError as error:
        log.error("link of %r not read: %s", render_run_id, error)
        return None
    except Exception:
        log.exception("link of %r not read", render_run_id)
        return None
