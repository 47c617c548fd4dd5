"""Validation of run ids taken from URLs, query strings, bodies and the links file.

A run id names one folder directly below a root, so anything that could step
outside it (separators, dot segments, control characters) is refused.
"""

from __future__ import annotations

import re

from ..errors import ExportServiceError, InvalidParamRunId, InvalidRunId

MAX_RUN_ID_LENGTH = 200

# Unicode's categories Cc (C0/C1 controls, NUL and DEL: fixed forever by
# Unicode's stability policy) and Cs (lone surrogates, which percent-decoding
# of invalid UTF-8 can produce and which no JSON encoder or file name
# accepts), as one character class: a regex search is a fraction of the cost
# of asking unicodedata per character, and every link of the links file is
# checked when it is read. ZIP entry names drop the same characters (zip/names.py).
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


# The same rule as a JSON Schema, for the OpenAPI document: no separator or
# control character, at least one non-space, not "." or "..", 1-200
# characters. (Lone surrogates, also refused, cannot travel in a URL or JSON
# text.) tests/test_properties.py checks the two agree. A selection's prefix
# segments (core/selection.py) allow the same characters.
SCHEMA_NAME_CHARACTER = r"[^/\\\x00-\x1f\x7f-\x9f]"
RUN_ID_JSON_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_RUN_ID_LENGTH,
    "pattern": rf"^{SCHEMA_NAME_CHARACTER}*[^\s/\\\x00-\x1f\x7f-\x9f]{SCHEMA_NAME_CHARACTER}*$",
    "not": {"enum": [".", ".."]},
}


def run_id_problem(value: str) -> str | None:
    """Why ``value`` is not a usable run id, or None when it is."""
    if not value.strip():
        return "must not be empty or blank"
    if len(value) > MAX_RUN_ID_LENGTH:
        return f"must be at most {MAX_RUN_ID_LENGTH} characters"
    if value in {".", ".."}:
        return "must not be '.' or '..'"
    if "/" in value or "\\" in value:
        return "must not contain '/' or '\\'"
    if CONTROL_CHARACTERS.search(value):
        return "must not contain control characters"
    return None


def _checked(value: str, name: str, error: type[ExportServiceError]) -> str:
    problem = run_id_problem(value)
    if problem is not None:
        raise error(f"{name} {problem}")
    return value


def check_render_run_id(value: str) -> str:
    return _checked(value, "render_run_id", InvalidRunId)


def check_param_run_id(value: str) -> str:
    return _checked(value, "param_run_id", InvalidParamRunId)


def render_run_id_as_sent(value: str) -> str:
    """A render run id from a URL, taken as the original backend took it:
    surrounding whitespace stripped (``/list/%20abc`` is ``abc``), then checked."""
    return check_render_run_id(value.strip())


def param_run_id_as_sent(value: str | None) -> str | None:
    """An optional ``param_run_id`` from a query, as the original took it:
    stripped, and absent when empty or blank (the link is used then)."""
    stripped = (value or "").strip()
    return check_param_run_id(stripped) if stripped else None


def linked_param_run_id_as_sent(value: str) -> str:
    """The ``param_run_id`` of a link to store (a PUT's body): stripped as
    everywhere else, then checked; here it is required, so blank is refused."""
    return check_param_run_id(value.strip())
