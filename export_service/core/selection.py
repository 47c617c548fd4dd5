"""A selective export: which steps, and which paths inside their run folders.

Made from the ``steps`` and ``prefix`` query parameters (and the CLI's
``--steps`` / ``--prefix``) as one canonical value: the steps in the order
the contract names them (render, midi_generation, param_generation), the
prefixes as tuples of path segments, sorted, deduplicated, and with a prefix
that lies inside another dropped (``stems`` already selects ``stems/drums``).
Two queries that select the same files give the same value, hence the same
ZIP ETag and file name. "All three steps, no prefix" is no selection at all:
:meth:`Selection.parse` returns None for it, and the answers are byte for
byte those without the parameters.

A prefix is matched on whole segments against a file's path inside its run
folder, as the manifest shows it (the rel_path without the run folder's
name): ``stems`` selects ``stems/a.wav`` and a file named ``stems``, never
``stems2/a.wav``; matching is case-sensitive. A trailing ``/`` is ignored;
anything that could name a path outside the run folder (a leading ``/``,
``..``, ``.``, an empty segment, ``\\``, NUL or a control character) is an
:class:`InvalidPrefix`.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InvalidPrefix, InvalidSteps
from .manifest import Step
from .run_ids import SCHEMA_NAME_CHARACTER

# The one fixed order of the steps (the contract's, that of ``missing``).
STEPS: tuple[Step, ...] = ("render", "midi_generation", "param_generation")

# A prefix's segments, as the manifest shows a file's path inside its run.
Prefix = tuple[str, ...]

# Bounds on what one query may ask (its length is bounded by the request line
# as well): each prefix, and how many.
MAX_PREFIX_CHARS = 1024
MAX_PREFIXES = 64
# In a ZIP's file name, the prefixes' part is cut to this many characters.
_NAME_PREFIX_CHARS = 40

# What the OpenAPI document says of one value (tests/test_selection.py checks
# that they accept exactly what parse_steps and parse_prefix accept).
_ONE_STEP = "(" + "|".join(STEPS) + ")"
STEPS_JSON_SCHEMA = {"type": "string", "pattern": f"^{_ONE_STEP}(,{_ONE_STEP})*$"}
_SEGMENT = SCHEMA_NAME_CHARACTER + "+"
PREFIX_JSON_SCHEMA = {
    "type": "string",
    "maxLength": MAX_PREFIX_CHARS,
    "pattern": f"^{_SEGMENT}(/{_SEGMENT})*/*$",
    "not": {"pattern": r"(^|/)\.\.?(/|$)"},
}


def parse_steps(values: Iterable[str]) -> tuple[Step, ...]:
    """The steps named by ``steps`` values (each comma-separated), in the
    fixed order, once each. :class:`InvalidSteps` for an empty or unknown one."""
    named: set[str] = set()
    allowed = ", ".join(STEPS)
    for value in values:
        for step in value.split(","):
            if step not in STEPS:
                shown = "an empty value" if not step else f"{step!r}"
                raise InvalidSteps(
                    f"steps: {shown} is not a step; name one or more of {allowed}, "
                    "comma-separated (steps=render,midi_generation) or repeated"
                )
            named.add(step)
    return tuple(step for step in STEPS if step in named)


def _prefix_problem(value: str) -> str | None:
    if not value.strip("/"):
        return "it is empty"
    if len(value) > MAX_PREFIX_CHARS:
        return f"it is longer than {MAX_PREFIX_CHARS} characters"
    if value.startswith("/"):
        return "it is absolute; give a path inside the run folder, such as stems"
    if "\\" in value:
        return "it contains a backslash; separate folders with /"
    if any(unicodedata.category(char) == "Cc" for char in value):
        return "it contains NUL or a control character"
    segments = value.rstrip("/").split("/")
    if "" in segments:
        return "it has an empty segment (//)"
    if "." in segments or ".." in segments:
        return "it has a . or .. segment"
    return None


def parse_prefix(value: str) -> Prefix:
    """One ``prefix`` value as its segments. :class:`InvalidPrefix` for one
    that could name a path outside the run folder."""
    problem = _prefix_problem(value)
    if problem is not None:
        raise InvalidPrefix(
            f"prefix {value!r} is not a path inside the run folder: {problem} "
            "(a /-separated path such as stems or stems/drums)"
        )
    return tuple(value.rstrip("/").split("/"))


def canonical_prefixes(prefixes: Iterable[Prefix]) -> tuple[Prefix, ...]:
    """Sorted, deduplicated, and without a prefix that another contains."""
    kept: list[Prefix] = []
    for prefix in sorted(set(prefixes)):  # a prefix sorts right before what it contains
        if not (kept and prefix[: len(kept[-1])] == kept[-1]):
            kept.append(prefix)
    return tuple(kept)


def _file_name_part(text: str) -> str:
    """``text`` made safe inside a file name on every system."""
    return "".join(
        "_" if char in '<>:"/\\|?*' or unicodedata.category(char)[0] == "C" else char
        for char in text
    )


@dataclass(frozen=True, slots=True)
class Selection:
    """What a selective export takes: ``steps`` (in the fixed order) and
    ``prefixes`` (canonical; empty: the whole run folders)."""

    steps: tuple[Step, ...] = STEPS
    prefixes: tuple[Prefix, ...] = ()

    @classmethod
    def parse(cls, steps: Iterable[str], prefixes: Iterable[str]) -> Selection | None:
        """The selection of the query's ``steps`` and ``prefix`` values, or
        None when they select everything (no values, or all three steps and
        no prefix). :class:`InvalidSteps`, :class:`InvalidPrefix`."""
        step_values, prefix_values = list(steps), list(prefixes)
        chosen = parse_steps(step_values) if step_values else STEPS
        if len(prefix_values) > MAX_PREFIXES:
            raise InvalidPrefix(f"at most {MAX_PREFIXES} prefix values; {len(prefix_values)} given")
        selection = cls(chosen, canonical_prefixes(map(parse_prefix, prefix_values)))
        return None if selection.is_everything else selection

    @property
    def is_everything(self) -> bool:
        return self.steps == STEPS and not self.prefixes

    def __contains__(self, step: object) -> bool:
        return step in self.steps

    def matches(self, parts: tuple[str, ...]) -> bool:
        """Whether a file whose path inside its run folder is ``parts`` is
        selected (its step aside)."""
        return not self.prefixes or any(parts[: len(p)] == p for p in self.prefixes)

    def folder_choice(self, parts: tuple[str, ...]) -> frozenset[str] | None:
        """For the folder at ``parts`` inside a run: None when it lies inside
        a prefix (all its files are selected), else the names of its own
        files that a prefix names exactly (often none)."""
        if self.matches(parts):
            return None
        depth = len(parts) + 1
        return frozenset(
            prefix[-1] for prefix in self.prefixes if len(prefix) == depth and prefix[:-1] == parts
        )

    @property
    def key(self) -> str:
        """The canonical selection as text, for the ZIP's ETag."""
        return json.dumps({"steps": self.steps, "prefixes": self.prefixes}, ensure_ascii=False)

    def file_name_suffix(self) -> str:
        """What the ZIP's file name gets after ``export_<id>``: the steps
        joined by ``+`` (left out when all three are selected), then the first
        prefix with ``-`` for ``/`` (cut to 40 characters) and ``+N`` for N
        more: ``_render``, ``_render+midi_generation``, ``_render_stems``,
        ``_stems-drums+1``."""
        parts = [] if self.steps == STEPS else ["+".join(self.steps)]
        if self.prefixes:
            first = _file_name_part("-".join(self.prefixes[0]))[:_NAME_PREFIX_CHARS]
            more = len(self.prefixes) - 1
            parts.append(first + (f"+{more}" if more else ""))
        return "".join("_" + part for part in parts)
