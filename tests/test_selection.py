"""selection: the ``steps`` and ``prefix`` query as one canonical selection,
and a selective scan, which must equal the full scan filtered on every tree
(a property test over random trees with links). What the routes answer with
a selection: test_export_api.py; the exports: test_exports.py."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export_service.core.scanning import display_name, scan_run_folder
from export_service.core.selection import (
    MAX_PREFIXES,
    PREFIX_JSON_SCHEMA,
    STEPS,
    STEPS_JSON_SCHEMA,
    Selection,
    parse_prefix,
    parse_steps,
)
from export_service.errors import ExportTooLarge, InvalidPrefix, InvalidSteps
from tests.helpers import write
from tests.test_scanning import scanned_files


def test_no_parameters_and_all_three_steps_without_a_prefix_are_no_selection() -> None:
    assert Selection.parse([], []) is None
    assert Selection.parse(["render,midi_generation,param_generation"], []) is None
    assert Selection.parse(["param_generation", "render,midi_generation", "render"], []) is None


def test_steps_are_in_one_fixed_order_whatever_the_query() -> None:
    one = Selection.parse(["midi_generation,render"], [])
    other = Selection.parse(["render", "midi_generation", "midi_generation"], [])
    assert one == other == Selection(("render", "midi_generation"), ())
    assert STEPS == ("render", "midi_generation", "param_generation")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ([""], "an empty value"),
        (["render,"], "an empty value"),
        (["render,,midi_generation"], "an empty value"),
        (["Render"], "'Render'"),
        (["midi"], "'midi'"),
        (["render midi_generation"], "'render midi_generation'"),
    ],
)
def test_an_empty_or_unknown_step_is_refused_naming_it_and_the_allowed_ones(
    values: list[str], named: str
) -> None:
    with pytest.raises(InvalidSteps) as error:
        Selection.parse(values, [])
    assert error.value.status == 422 and error.value.code == "invalid_steps"
    assert named in error.value.message
    assert "render, midi_generation, param_generation" in error.value.message


@pytest.mark.parametrize(
    "value",
    [
        "",
        "/",
        "//",
        "/stems",
        "/etc/passwd",
        "..",
        "../x",
        "stems/../..",
        ".",
        "./stems",
        "stems//drums",
        "stems\\drums",
        "..\\x",
        "a\0b",
        "a\nb",
        "a\x7fb",
        "x" * 1025,
    ],
)
def test_a_prefix_that_could_leave_the_run_folder_is_refused(value: str) -> None:
    with pytest.raises(InvalidPrefix) as error:
        Selection.parse([], [value])
    assert error.value.status == 422 and error.value.code == "invalid_prefix"


def test_a_trailing_slash_is_ignored_and_names_keep_their_case() -> None:
    assert parse_prefix("stems/") == ("stems",)
    assert parse_prefix("Stems/Drums//") == ("Stems", "Drums")
    assert parse_prefix("naïve #1 100%.wav") == ("naïve #1 100%.wav",)


def test_prefixes_are_sorted_deduplicated_and_those_inside_another_dropped() -> None:
    selection = Selection.parse([], ["stems/drums", "mix.wav", "stems", "stems/", "a/b", "a/bc"])
    assert selection == Selection(STEPS, (("a", "b"), ("a", "bc"), ("mix.wav",), ("stems",)))
    assert selection == Selection.parse([], ["stems", "a/bc", "mix.wav", "a/b"])


def test_too_many_prefixes_are_refused() -> None:
    Selection.parse([], [f"p{n}" for n in range(MAX_PREFIXES)])
    with pytest.raises(InvalidPrefix):
        Selection.parse([], [f"p{n}" for n in range(MAX_PREFIXES + 1)])


def test_a_prefix_matches_whole_segments_only() -> None:
    selection = Selection(STEPS, (("stems",),))
    assert selection.matches(("stems", "a.wav"))
    assert selection.matches(("stems",))  # a file named stems
    assert selection.matches(("stems", "deep", "x.wav"))
    assert not selection.matches(("stems2", "x.wav"))
    assert not selection.matches(("Stems", "x.wav"))
    assert not selection.matches(("a", "stems", "x.wav"))
    assert Selection(("render",), ()).matches(("anything",))


def test_a_folders_choice_is_all_inside_a_prefix_else_the_names_a_prefix_ends_with() -> None:
    selection = Selection(STEPS, (("a", "b", "c.wav"), ("a", "d"), ("stems",)))
    assert selection.folder_choice(("stems",)) is None
    assert selection.folder_choice(("stems", "x")) is None
    assert selection.folder_choice(()) == frozenset({"stems"})
    assert selection.folder_choice(("a",)) == frozenset({"d"})
    assert selection.folder_choice(("a", "b")) == frozenset({"c.wav"})
    assert selection.folder_choice(("z",)) == frozenset()


def test_the_zip_file_name_names_the_steps_and_the_first_prefix() -> None:
    assert Selection(("render",), ()).file_name_suffix() == "_render"
    assert (
        Selection(("render", "midi_generation"), ()).file_name_suffix() == "_render+midi_generation"
    )
    assert Selection(("render",), (("stems",),)).file_name_suffix() == "_render_stems"
    assert Selection(STEPS, (("stems", "drums"), ("z",))).file_name_suffix() == "_stems-drums+1"
    assert Selection(STEPS, (('a:b*c"d',),)).file_name_suffix() == "_a_b_c_d"
    long = Selection(STEPS, (("x" * 300,),)).file_name_suffix()
    assert long == "_" + "x" * 40


def test_the_key_tells_apart_every_canonical_selection() -> None:
    selections = [
        Selection(("render",), ()),
        Selection(("render",), (("stems",),)),
        Selection(("render",), (("stems", "a"),)),
        Selection(("render",), (("stems/a",),)),  # a name no prefix can hold, all the same
        Selection(("render", "midi_generation"), ()),
        Selection(STEPS, (("stems",),)),
        Selection(STEPS, (("a",), ("b",))),
        Selection(STEPS, (("a\0b",),)),
    ]
    assert len({selection.key for selection in selections}) == len(selections)


# -- a selective scan equals the full scan, filtered -------------------------

_NAMES = ["a", "b", "stems", "stems2", "St", "x.wav", "caf\u00e9"]
_PATHS = st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3).map(tuple)
# What a node is: a file of some size, a folder, or a link to another node of
# the run, to the root beside the run, out of the root, or to nothing.
_NODES = st.one_of(
    st.tuples(st.just("file"), st.integers(0, 3)),
    st.tuples(st.just("dir"), st.just(0)),
    st.tuples(st.just("link_run"), _PATHS),
    st.tuples(st.just("link_root"), st.just(0)),
    st.tuples(st.just("link_out"), st.just(0)),
    st.tuples(st.just("link_none"), st.just(0)),
)
_TREES = st.lists(st.tuples(_PATHS, _NODES), max_size=14)
_PREFIXES = st.lists(_PATHS, min_size=1, max_size=3)


def _build(base: Path, nodes: list[tuple[tuple[str, ...], tuple[str, object]]]) -> Path:
    root, run = base / "root", base / "root" / "run"
    run.mkdir(parents=True)
    write(root / "beside" / "x.wav", b"beside")
    write(root / "beside" / "stems" / "a", b"beside-a")
    write(base / "outside" / "secret", b"secret")
    for parts, (kind, detail) in nodes:
        path = run.joinpath(*parts)
        if not path.parent.is_dir() or path.parent.is_symlink():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                continue
        if os.path.lexists(path):
            continue
        if kind == "file":
            assert isinstance(detail, int)
            path.write_bytes(b"f" * detail)
        elif kind == "dir":
            path.mkdir()
        elif kind == "link_run":
            assert isinstance(detail, tuple)
            path.symlink_to(run.joinpath(*detail))
        elif kind == "link_root":
            path.symlink_to(root / "beside")
        elif kind == "link_out":
            path.symlink_to(base / "outside")
        else:
            path.symlink_to(base / "nothing")
    return root


def _listing(root: Path, selection: Selection | None) -> list[tuple[tuple[str, ...], int | None]]:
    choose = selection.folder_choice if selection is not None else None
    scan = scan_run_folder(str(root), "run", choose=choose)
    return [(tuple(map(display_name, file.parts)), file.size) for file in scanned_files(scan)]


@given(_TREES, _PREFIXES)
@settings(max_examples=300, deadline=None)
@pytest.mark.slow
def test_a_selective_scan_is_the_full_scan_filtered(
    nodes: list[tuple[tuple[str, ...], tuple[str, object]]], prefixes: list[tuple[str, ...]]
) -> None:
    selection = Selection(STEPS, tuple(prefixes))
    with tempfile.TemporaryDirectory() as base:
        root = _build(Path(base), nodes)
        full = _listing(root, None)
        selective = _listing(root, selection)
    assert selective == [(parts, size) for parts, size in full if selection.matches(parts)]


def test_a_folder_listed_first_through_a_link_stays_there_in_a_selective_scan(
    tmp_path: Path,
) -> None:
    """The case that rules out walking only the prefix's subtree: the full
    scan meets stems/x first as a/l (a < stems) and lists its files there,
    not under stems/x; a walk of stems alone would list them under stems."""
    root = tmp_path / "root"
    write(root / "run" / "stems" / "x" / "kick.wav", b"k")
    write(root / "run" / "stems" / "mix.wav", b"m")
    (root / "run" / "a").mkdir()
    (root / "run" / "a" / "l").symlink_to(root / "run" / "stems" / "x")
    full = _listing(root, None)
    assert (("a", "l", "kick.wav"), 1) in full and (("stems", "x", "kick.wav"), 1) not in full
    assert _listing(root, Selection(STEPS, (("stems",),))) == [(("stems", "mix.wav"), 1)]


def test_a_selective_scan_counts_only_the_files_it_takes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for n in range(5):
        write(root / "run" / "other" / f"{n}.wav", b"o")
    write(root / "run" / "stems" / "a.wav", b"a")
    choose = Selection(STEPS, (("stems",),)).folder_choice
    scan = scan_run_folder(str(root), "run", max_files=1, choose=choose)
    assert [file.parts for file in scanned_files(scan)] == [("stems", "a.wav")]
    with pytest.raises(ExportTooLarge):
        scan_run_folder(str(root), "run", max_files=1)


# -- the OpenAPI document's schemas accept exactly what the parser accepts ---

_TRICKY_PATHS = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("/\\.\x00\n\x1f\x7f\x85\x9f\xa0 a_é")), st.characters()
    ),
    max_size=12,
)


def _schema_accepts(schema: Mapping[str, object], value: str) -> bool:
    """As a JSON Schema validator reads it: an ECMA-262 ``$`` ends the text
    (Python's also matches before a final newline)."""
    pattern = schema["pattern"]
    assert isinstance(pattern, str) and pattern.endswith("$")
    accepted = re.search(pattern[:-1] + r"\Z", value) is not None
    maximum = schema.get("maxLength")
    if isinstance(maximum, int):
        accepted = accepted and len(value) <= maximum
    refused = schema.get("not")
    if isinstance(refused, dict):
        accepted = accepted and re.search(refused["pattern"], value) is None
    return accepted


def _parser_accepts(parse: Callable[[str], object], value: str) -> bool:
    try:
        parse(value)
    except (InvalidPrefix, InvalidSteps):
        return False
    return True


@given(_TRICKY_PATHS)
@settings(max_examples=1000)
@pytest.mark.slow
def test_the_prefix_schema_is_the_parser(value: str) -> None:
    assert _schema_accepts(PREFIX_JSON_SCHEMA, value) == _parser_accepts(parse_prefix, value)


@given(st.lists(st.sampled_from([*STEPS, "", "Render", "x"]), max_size=4).map(",".join))
def test_the_steps_schema_is_the_parser(value: str) -> None:
    accepted = _parser_accepts(lambda one: parse_steps([one]), value)
    assert _schema_accepts(STEPS_JSON_SCHEMA, value) == accepted


@pytest.mark.parametrize("value", ["a/", "a//", "a/b/", "..a", "a..", "a/.b", "x" * 1024])
def test_the_prefix_schema_and_parser_agree_on_the_edges(value: str) -> None:
    assert _schema_accepts(PREFIX_JSON_SCHEMA, value) and _parser_accepts(parse_prefix, value)
