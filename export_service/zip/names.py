"""ZIP entry names: safe, unique, and extractable on Windows and macOS.

A file's listed path (``<step>/<rel_path>``) is sanitized (no absolute or
``..`` path, no control characters, nothing Windows refuses) and then made
unique by :class:`ArcnameAllocator`, which also keeps a file and a folder from
sharing a name and treats names equal but for letter case or Unicode form as
the same name. Plain text in, plain text out: no file system, no ZIP format.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata

from ..core.run_ids import CONTROL_CHARACTERS

# The longest entry name a ZIP can hold, in bytes (its headers keep the
# length in 16 bits). A name past it (260 nested folders of 255-byte names)
# cannot be written at all; plan.py leaves such a file out when it plans
# the download, as it does a file it cannot open.
MAX_ARCNAME_BYTES = 0xFFFF

# Unicode categories Cc (C0 and C1 controls, DEL) and Cs (lone surrogates).
_DROPPED_CHARACTERS = CONTROL_CHARACTERS

_WINDOWS_RESERVED = re.compile(r'[<>:"|?*]')
# Device names Windows will not create a file under, whatever the extension.
_WINDOWS_DEVICE_NAMES = r"(?:CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])"
_WINDOWS_DEVICE = re.compile(_WINDOWS_DEVICE_NAMES + r"(?=\.|\Z)", re.IGNORECASE)
# Names the sanitizing would return unchanged (most of them): segments of
# letters, digits, ``_ - . space``, starting with a letter, digit, ``_`` or
# ``-``, not ending in a dot or space, and no device name.
_PLAIN_SEGMENT = rf"(?!{_WINDOWS_DEVICE_NAMES}(?:[./]|\Z))[\w-][\w .-]*(?<![ .])"
_PLAIN_NAME = re.compile(rf"(?:{_PLAIN_SEGMENT}/)*{_PLAIN_SEGMENT}\Z", re.ASCII | re.IGNORECASE)
_PLAIN_BASE = re.compile(rf"{_PLAIN_SEGMENT}\Z", re.ASCII | re.IGNORECASE)


def _clean_segment(segment: str) -> str:
    """What Windows can extract: reserved characters become ``_``, trailing
    dots and spaces (which Windows drops) are trimmed, and a device name
    gets a ``_`` (``CON.wav`` -> ``CON_.wav``)."""
    cleaned = _WINDOWS_RESERVED.sub("_", segment).rstrip(". ")
    return _WINDOWS_DEVICE.sub(r"\g<0>_", cleaned, count=1)


def sanitize_arcname(name: str) -> str:
    """A safe relative entry name: ``/`` separators only; no empty, ``.`` or
    ``..`` segments; no control characters; no ``<>:"|?*``, no trailing dot
    or space and no Windows device name in a segment; ``file`` when nothing
    is left."""
    return name if _PLAIN_NAME.match(name) else sanitize_arcname_fully(name)


def sanitize_arcname_fully(name: str) -> str:
    """:func:`sanitize_arcname` without its shortcut for plain names."""
    if _DROPPED_CHARACTERS.search(name):
        name = _DROPPED_CHARACTERS.sub("", name)
    segments = [
        cleaned
        for segment in name.replace("\\", "/").split("/")
        if (cleaned := _clean_segment(segment)) not in {"", ".", ".."}
    ]
    return "/".join(segments) or "file"


def _fold(name: str) -> str:
    """What makes two names the same on a case-insensitive file system
    (Windows, macOS): letter case, and for non-ASCII names also the Unicode
    form (macOS treats NFC and NFD spellings as one name)."""
    return name.lower() if name.isascii() else unicodedata.normalize("NFC", name).casefold()


class ArcnameAllocator:
    """Hands out unique entry names: ``a.wav``, ``a__1.wav``, ``a__2.wav``;
    ``b``, ``b__1``. Names equal but for letter case count as the same name
    (``Take.wav`` then ``take.wav`` -> ``take__1.wav``), since Windows and
    macOS would extract one over the other. A file and a folder never share a
    name (no extractor could write both): a file whose name is taken by a
    folder gets a suffix, and a folder whose name is taken (by a file, or by
    another folder spelled in another case) is written as ``name__N/`` for all
    the entries inside it. Folders are placed without recursion, so any depth
    works."""

    def __init__(self) -> None:
        self._taken: set[str] = set()  # folded names of files and folders written
        self._placed_folders: dict[str, str] = {"": ""}  # folder as named -> as written
        self._next_suffix: dict[str, int] = {}
        self._sanitized_folders: dict[str, str] = {}  # folder as listed -> sanitized

    def _unique(self, name: str) -> str:
        folded = _fold(name)
        if folded not in self._taken:
            self._taken.add(folded)
            return name
        stem, extension = posixpath.splitext(name)
        suffix = self._next_suffix.get(folded, 1)
        while _fold(candidate := f"{stem}__{suffix}{extension}") in self._taken:
            suffix += 1
        self._next_suffix[folded] = suffix + 1
        self._taken.add(_fold(candidate))
        return candidate

    def _place_folder(self, folder: str) -> str:
        unplaced = []
        while folder not in self._placed_folders:
            unplaced.append(folder)
            folder = folder.rpartition("/")[0]
        placed = self._placed_folders[folder]
        for named in reversed(unplaced):  # top-down
            base = named.rpartition("/")[2]
            placed = self._placed_folders[named] = self._unique(
                f"{placed}/{base}" if placed else base
            )
        return placed

    def allocate(self, name: str) -> str:
        folder, _, base = name.rpartition("/")
        placed = self._place_folder(folder)
        return self._unique(f"{placed}/{base}" if placed else base)

    def allocate_file(self, folder: str, base: str) -> str:
        """``allocate(sanitize_arcname(f"{folder}/{base}"))``, for the files of
        an export in order: a run's files share a few folders, so each folder
        is sanitized once, and a plain base name is taken as it is."""
        if not _PLAIN_BASE.match(base):
            return self.allocate(sanitize_arcname(f"{folder}/{base}"))
        sanitized = self._sanitized_folders.get(folder)
        if sanitized is None:
            sanitized = self._sanitized_folders[folder] = sanitize_arcname(folder)
        return self._unique(f"{self._place_folder(sanitized)}/{base}")
