"""The links file's content: parsed into links, with the backend's parser.

The file format is the backend's: ``{"<render_run_id>": {"param_run_id": "<id>",
"updated_at": <unix seconds>, ...}, ...}``, UTF-8 JSON, read with the same
parser the backend uses (Python's ``json``). Content either parses into links
or the whole file counts as corrupt (not UTF-8, not JSON, nested deeper or with
integers longer than that parser takes, not an object): then no link is used.
A record that holds no link (not an object, no string ``param_run_id``) is
passed over, as the backend's helper does, with why.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple


class StoredLink(NamedTuple):
    """One record's usable values: ``param_run_id`` as written (any string),
    ``updated_at`` when it is a finite number, else None. (A tuple of atoms:
    the garbage collector stops tracking it, so 100,000 links do not lengthen
    every full collection.)"""

    param_run_id: str
    updated_at: float | None


Links = dict[str, StoredLink]
# The records that hold no link at all, each with why: (render_run_id, why).
Unusable = tuple[tuple[str, str], ...]


def excerpt(value: str, limit: int = 40) -> str:
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


def parse_links(raw: bytes) -> tuple[Links, str | None, Unusable]:
    """The links of the file's bytes ``raw``, why the whole file is unusable
    (then no links), and the records passed over."""
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
