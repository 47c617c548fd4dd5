"""The use cases: a project's export as its manifest and as a planned ZIP."""

from __future__ import annotations

import json

from export_service.exports import ExportSources, export_manifest_json, plan_export_archive
from tests.conftest import AirTree, write
from tests.zips import read_zip


def _project(tree: AirTree) -> ExportSources:
    write(tree.render / "r" / "mix.wav", b"mix")
    write(tree.render / "r" / "stems" / "kick.wav", b"k")
    write(tree.param / "20261101_p" / "params.json", b"{}")
    tree.link({"r": {"param_run_id": "p"}})
    return ExportSources.from_settings(tree.settings())


def test_a_manifest_takes_the_param_run_from_the_links_file_unless_given(tree: AirTree) -> None:
    sources = _project(tree)
    body = export_manifest_json(sources, "r", None)
    manifest = json.loads(body.json)
    assert (manifest["midi_run_id"], manifest["param_run_id"]) == (None, "p")
    assert [item["rel_path"] for item in manifest["files"]] == [
        "20261101_p/params.json",
        "r/mix.wav",
        "r/stems/kick.wav",
    ]
    assert manifest["missing"] == ["midi_generation"]
    assert body.unlisted.total() == 0
    given = json.loads(export_manifest_json(sources, "r", "other").json)
    assert given["param_run_id"] is None
    assert given["missing"] == ["midi_generation", "param_generation"]


def test_a_zip_plan_holds_the_files_the_manifest_lists(tree: AirTree) -> None:
    sources = _project(tree)
    archive = plan_export_archive(sources, "r", None)
    assert read_zip(b"".join(archive.chunks())) == {
        "param_generation/20261101_p/params.json": b"{}",
        "render/r/mix.wav": b"mix",
        "render/r/stems/kick.wav": b"k",
    }
    assert archive.skipped == [] and archive.unlisted.total() == 0
