"""One record written back into the links file's own text.

Every record but the one written is copied back byte for byte, so values this
service cannot use (lone surrogates, huge numbers, deep nesting, unknown keys,
duplicate keys) are kept exactly as the backend's parser read them, and never
break a write. Only the new ``param_run_id`` and ``updated_at`` are
serialised.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .records import StoredLink

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


def with_link(text: str, render_run_id: str, link: StoredLink) -> str:
    """``text`` (a JSON object json.loads accepted) with the record of
    ``render_run_id`` set to ``link``: every other member, and the record's
    other keys, copied as they are; the new values escaped to ASCII.
    RecursionError when ``text`` nests deeper than this call stack can
    follow."""
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
