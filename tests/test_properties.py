"""Property tests over arbitrary text: run ids, entry names, their allocation."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_service.core.run_ids import RUN_ID_JSON_SCHEMA, run_id_problem
from export_service.zip.names import ArcnameAllocator, sanitize_arcname, sanitize_arcname_fully

# Text with the characters that matter over-represented.
TRICKY = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('/\\.\x00\n\t\x1f\x7f\x85 <>:"|?*_-é✓')), st.characters()
    ),
    max_size=60,
)
# Names that look plain, with the segments the shortcut must not wave through.
PLAIN_LOOKING = st.lists(
    st.sampled_from(
        [
            "a",
            "mix.wav",
            "CON",
            "con.wav",
            "Nul",
            "LPT9.x",
            "COM0",
            "x.",
            "b ",
            " a",
            "-b",
            "_",
            "..",
            "",
        ]
    ),
    min_size=1,
    max_size=5,
).map("/".join)
_WINDOWS = re.compile(r'[<>:"|?*]')
_DEVICE = re.compile(r"(CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(\.|$)", re.IGNORECASE)
_SCHEMA_PATTERN = re.compile(str(RUN_ID_JSON_SCHEMA["pattern"]))


def _controls(text: str) -> bool:
    return any(unicodedata.category(char) in {"Cc", "Cs"} for char in text)


@given(TRICKY)
@settings(max_examples=500)
@pytest.mark.slow
def test_an_accepted_run_id_cannot_leave_its_root(value: str) -> None:
    accepted = run_id_problem(value) is None
    if accepted:
        assert value.strip() and value not in {".", ".."}
        assert "/" not in value and "\\" not in value and not _controls(value)
        assert len(value) <= 200
    if any("\ud800" <= char <= "\udfff" for char in value):
        return  # a lone surrogate cannot travel in a URL or JSON: the document need not say
    # The OpenAPI document states the same rule.
    schema_accepts = (
        bool(_SCHEMA_PATTERN.fullmatch(value))
        and value not in {".", ".."}
        and 1 <= len(value) <= 200
    )
    assert accepted == schema_accepts


@given(st.one_of(TRICKY, PLAIN_LOOKING))
@settings(max_examples=500)
@pytest.mark.slow
def test_sanitized_names_are_safe_and_stable(name: str) -> None:
    safe = sanitize_arcname(name)
    assert safe and not safe.startswith("/") and "\\" not in safe
    assert not _controls(safe) and not _WINDOWS.search(safe)
    for segment in safe.split("/"):
        assert segment not in {"", ".", ".."} and segment == segment.rstrip(". ")
        assert not _DEVICE.match(segment)
    assert sanitize_arcname(safe) == safe


@given(st.one_of(TRICKY, PLAIN_LOOKING))
@settings(max_examples=500)
@pytest.mark.slow
def test_the_shortcut_for_plain_names_changes_nothing(name: str) -> None:
    assert sanitize_arcname(name) == sanitize_arcname_fully(name)


@given(st.lists(TRICKY, max_size=30))
@settings(max_examples=300)
@pytest.mark.slow
def test_allocated_names_are_unique_never_clash_with_folders_and_are_stable(
    names: list[str],
) -> None:
    def allocate() -> list[str]:
        allocator = ArcnameAllocator()
        return [allocator.allocate(sanitize_arcname(name)) for name in names]

    allocated = allocate()
    assert len(set(allocated)) == len(allocated)
    folders = {"/".join(n.split("/")[:i]) for n in allocated for i in range(1, n.count("/") + 1)}
    assert not folders & set(allocated)
    for name in allocated:
        assert sanitize_arcname(name) == name
    assert allocate() == allocated
