"""manifest: an export's steps, its listed files and its JSON, byte for byte
the original's. (How build_export finds the run folders: test_exports.py.)"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from export_service.core.manifest import Export, ListedFile, Step, StepFiles, manifest_json
from export_service.core.scanning import FolderScan, scan_run_folder
from export_service.exports import Services, build_export
from tests.helpers import AirTree, write


def _step(step: Step, root: Path, folder: str, prefix: str, base: str = "") -> StepFiles:
    return StepFiles.of(step, scan_run_folder(str(root), folder), folder, base, prefix)


def _empty(step: Step) -> StepFiles:
    return StepFiles.of(step, FolderScan(), "", "", "/unused")


def test_manifest_json_is_compact_utf8_bytes() -> None:
    body = manifest_json(
        {
            "render_run_id": "r",
            "midi_run_id": None,
            "param_run_id": "p",
            "files": [
                {"step": "render", "rel_path": "r/é.wav", "url": "/a/r/%C3%A9.wav", "bytes": 1}
            ],
            "missing": ["midi_generation"],
        }
    )
    assert isinstance(body, bytes)
    assert (
        body
        == (
            '{"render_run_id":"r","midi_run_id":null,"param_run_id":"p",'
            '"files":[{"step":"render","rel_path":"r/é.wav","url":"/a/r/%C3%A9.wav","bytes":1}],'
            '"missing":["midi_generation"]}'
        ).encode()
    )


def test_a_step_makes_rel_paths_and_urls_per_folder(tmp_path: Path) -> None:
    write(tmp_path / "run 1" / "a.wav", b"aa")
    write(tmp_path / "run 1" / "sub #2" / "b%.wav", b"b")
    step = _step("render", tmp_path, "run 1", "/api/audio", base="https://air.example.com")
    assert step.rel_starts == ["run 1", "run 1/sub #2"]
    assert step.url_starts == [
        "https://air.example.com/api/audio/run%201",
        "https://air.example.com/api/audio/run%201/sub%20%232",
    ]
    assert step.export_files(step.scan.records) == [
        {
            "step": "render",
            "rel_path": "run 1/a.wav",
            "url": "https://air.example.com/api/audio/run%201/a.wav",
            "bytes": 2,
        },
        {
            "step": "render",
            "rel_path": "run 1/sub #2/b%.wav",
            "url": "https://air.example.com/api/audio/run%201/sub%20%232/b%25.wav",
            "bytes": 1,
        },
    ]


def test_listed_files_carry_what_the_scan_saw_and_no_url(tmp_path: Path) -> None:
    path = write(tmp_path / "r" / "sub" / "a.wav", b"abc")
    step = _step("render", tmp_path, "r", "/api/audio")
    stat = path.stat()
    assert list(step.listed_files(step.scan.records)) == [
        ListedFile(
            "render",
            "r/sub/a.wav",
            str(path),
            3,
            stat.st_mtime_ns,
            stat.st_ctime_ns,
            stat.st_dev,
            stat.st_ino,
        )
    ]


def _export(tmp_path: Path, render_run_id: str = "r") -> Export:
    """An export with a render and a param step found, the MIDI step not."""
    write(tmp_path / "render" / "r" / "mix.wav", b"m")
    write(tmp_path / "param" / "20261101_p" / "params.json", b"{}")
    return Export(
        render_run_id,
        "p",
        [
            _empty("midi_generation"),
            _step("param_generation", tmp_path / "param", "20261101_p", "/param"),
            _step("render", tmp_path / "render", "r", "/audio"),
        ],
        ["midi_generation"],
    )


def test_the_json_lists_the_fields_in_order_and_the_ids_of_the_steps_found(
    tmp_path: Path,
) -> None:
    body = _export(tmp_path).manifest_json()
    assert bytes(body) == (
        b'{"render_run_id":"r","midi_run_id":null,"param_run_id":"p","files":['
        b'{"step":"param_generation","rel_path":"20261101_p/params.json",'
        b'"url":"/param/20261101_p/params.json","bytes":2},'
        b'{"step":"render","rel_path":"r/mix.wav","url":"/audio/r/mix.wav","bytes":1}'
        b'],"missing":["midi_generation"]}'
    )


def test_a_param_run_id_is_null_unless_its_step_found_files(tmp_path: Path) -> None:
    write(tmp_path / "r" / "a.wav", b"a")
    render = _step("render", tmp_path, "r", "/audio")
    export = Export("r", "p", [_empty("param_generation"), render], ["param_generation"])
    manifest = json.loads(export.manifest_json())
    assert (manifest["midi_run_id"], manifest["param_run_id"]) == (None, None)
    assert manifest["missing"] == ["param_generation"]


def test_a_run_id_that_looks_like_the_files_key_stays_a_string(tmp_path: Path) -> None:
    """The JSON is cut at its ``"files":[]`` to write the files in: a run id
    holding those characters must not be cut instead."""
    tricky = 'r "files":[] files'
    manifest = json.loads(_export(tmp_path, tricky).manifest_json())
    assert manifest["render_run_id"] == tricky
    assert [item["rel_path"] for item in manifest["files"]] == [
        "20261101_p/params.json",
        "r/mix.wav",
    ]


def test_files_come_in_the_order_of_the_steps_across_slices(tmp_path: Path) -> None:
    for index in range(2100):  # more than one slice of each step
        write(tmp_path / "render" / "r" / f"{index:04d}.wav", b"r")
        write(tmp_path / "midi" / "m" / f"{index:04d}.mid", b"mm")
    midi = _step("midi_generation", tmp_path / "midi", "m", "/midi")
    render = _step("render", tmp_path / "render", "r", "/audio")
    export = Export("r", None, [midi, render], ["param_generation"])
    expected = midi.export_files(midi.scan.records) + render.export_files(render.scan.records)
    manifest: dict[str, Any] = json.loads(export.manifest_json())
    assert manifest["files"] == expected
    assert len(export) == 4200
    assert [(f.step, f.rel_path) for f in export.drain_files()] == [
        (item["step"], item["rel_path"]) for item in expected
    ]


def test_unlisted_paths_are_summed_over_the_steps() -> None:
    first, second = FolderScan(), FolderScan()
    first.unlisted.update({"permission": 2})
    second.unlisted.update({"permission": 1, "name_too_long": 1})
    export = Export(
        "r",
        None,
        [StepFiles("midi_generation", first, [], []), StepFiles("render", second, [], [])],
        [],
    )
    assert export.unlisted == Counter({"permission": 3, "name_too_long": 1})


def test_draining_the_files_gives_them_in_order_and_empties_the_export(tree: AirTree) -> None:
    """What a ZIP plan uses: the listed files of every record, in manifest
    order, and the scan's records released as they are handed over."""
    for index in range(5000):  # more than one slice
        write(tree.render / "r" / f"{index % 7}" / f"{index:04d}.wav")
    write(tree.midi / "20261101_r" / "track.mid", b"m")
    services = Services.from_settings(tree.settings())
    whole = build_export(services, "r", None)
    expected = [file for step in whole.steps for file in step.listed_files(step.scan.records)]
    export = build_export(services, "r", None)
    assert list(export.drain_files()) == expected
    assert len(expected) == 5001
    assert len(export) == 0
