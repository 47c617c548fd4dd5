"""The use cases: a project's export as its manifest and as a planned ZIP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from export_service.core.scanning import ScanStopped
from export_service.core.selection import Selection
from export_service.errors import ExportTooLarge
from export_service.exports import Services, export_manifest_json, plan_export_archive
from tests.helpers import DEEP, AirTree, every_case, make_deep, remove_deep, write
from tests.zips import read_zip


def _project(tree: AirTree) -> Services:
    write(tree.render / "r" / "mix.wav", b"mix")
    write(tree.render / "r" / "stems" / "kick.wav", b"k")
    write(tree.param / "20261101_p" / "params.json", b"{}")
    tree.link({"r": {"param_run_id": "p"}})
    return Services.from_settings(tree.settings())


def test_a_manifest_takes_the_param_run_from_the_links_file_unless_given(tree: AirTree) -> None:
    services = _project(tree)
    body = export_manifest_json(services, "r", None)
    manifest = json.loads(body.json)
    assert (manifest["midi_run_id"], manifest["param_run_id"]) == (None, "p")
    assert [item["rel_path"] for item in manifest["files"]] == [
        "20261101_p/params.json",
        "r/mix.wav",
        "r/stems/kick.wav",
    ]
    assert manifest["missing"] == ["midi_generation"]
    assert body.unlisted.total() == 0
    given = json.loads(export_manifest_json(services, "r", "other").json)
    assert given["param_run_id"] is None
    assert given["missing"] == ["midi_generation", "param_generation"]


def test_a_zip_plan_holds_the_files_the_manifest_lists(tree: AirTree) -> None:
    services = _project(tree)
    archive = plan_export_archive(services, "r", None)
    assert read_zip(b"".join(archive.chunks())) == {
        "param_generation/20261101_p/params.json": b"{}",
        "render/r/mix.wav": b"mix",
        "render/r/stems/kick.wav": b"k",
    }
    assert archive.skipped == {} and archive.unlisted.total() == 0


def _manifest(services: Services, render_run_id: str, param_run_id: str | None = None) -> Any:
    return json.loads(export_manifest_json(services, render_run_id, param_run_id).json)


def _services(tree: AirTree, **sections: dict[str, Any]) -> Services:
    return Services.from_settings(tree.settings(**sections))


def test_missing_steps_are_listed_in_order(tree: AirTree) -> None:
    every_case(tree)
    services = _services(tree)
    manifest = _manifest(services, "run_2")
    assert manifest["midi_run_id"] is None
    assert manifest["param_run_id"] is None
    assert manifest["missing"] == ["midi_generation", "param_generation"]

    nothing = export_manifest_json(services, "never_rendered", None).json
    assert nothing == (
        b'{"render_run_id":"never_rendered","midi_run_id":null,"param_run_id":null,'
        b'"files":[],"missing":["render","midi_generation","param_generation"]}'
    )


def test_param_run_that_does_not_exist_is_missing(tree: AirTree) -> None:
    every_case(tree)
    manifest = _manifest(_services(tree), "run_1", "prm_z")
    assert manifest["param_run_id"] is None
    assert manifest["missing"] == ["param_generation"]


def test_a_hostile_link_value_is_ignored(tree: AirTree) -> None:
    every_case(tree)
    write(tree.render / "run_bad" / "mix.wav", b"m")
    manifest = _manifest(_services(tree), "run_bad")
    assert manifest["param_run_id"] is None
    assert "param_generation" in manifest["missing"]


def test_empty_run_folder_counts_as_missing(tree: AirTree) -> None:
    (tree.render / "hollow" / "sub").mkdir(parents=True)
    (tree.midi / "20261101_hollow").mkdir()
    manifest = _manifest(_services(tree), "hollow")
    assert manifest["missing"] == ["render", "midi_generation", "param_generation"]
    assert manifest["midi_run_id"] is None


def test_url_base_and_prefixes_are_configurable(tree: AirTree) -> None:
    write(tree.render / "r" / "a b.wav", b"1")
    services = _services(tree, urls={"base": "https://air.example.com/", "render": "/files/"})
    manifest = _manifest(services, "r")
    assert manifest["files"][0]["url"] == "https://air.example.com/files/r/a%20b.wav"


def test_undecodable_names_give_valid_json_and_a_byte_exact_url(tree: AirTree) -> None:
    run = tree.render / "r"
    run.mkdir()
    (run / "bad\udcff.wav").write_bytes(b"1")  # the name on disk is b"bad\xff.wav"
    manifest = _manifest(_services(tree), "r")
    assert manifest["files"][0]["rel_path"] == "r/bad\ufffd.wav"
    assert manifest["files"][0]["url"] == "/api/audio/r/bad%FF.wav"


def test_no_absolute_path_appears(tree: AirTree) -> None:
    every_case(tree)
    body = export_manifest_json(_services(tree), "run_1", None).json
    assert str(tree.base).encode() not in body


def test_a_run_folder_created_while_serving_is_found_on_the_next_request(tree: AirTree) -> None:
    services = _services(tree)  # one for the app's life, as the app keeps it
    write(tree.render / "run_9" / "mix.wav", b"m")
    write(tree.midi / "20261101_000000_run_8" / "x.mid", b"x")
    settled = 1_600_000_000  # the index trusts a root whose mtime has settled
    os.utime(tree.midi, (settled, settled))
    before = _manifest(services, "run_9")
    assert before["midi_run_id"] is None  # the index of the MIDI root is now built

    write(tree.midi / "20261124_120000_run_9" / "take.mid", b"MThd")  # changes the mtime
    after = _manifest(services, "run_9")
    assert after["midi_run_id"] == "run_9"
    assert [f["rel_path"] for f in after["files"] if f["step"] == "midi_generation"] == [
        "20261124_120000_run_9/take.mid"
    ]


@pytest.mark.slow
def test_a_file_1100_folders_deep_is_listed(tree: AirTree) -> None:
    make_deep(tree.render / "r", 1100)
    try:
        body = export_manifest_json(_services(tree), "r", None)
    finally:
        remove_deep(tree.render / "r")
    path = "/".join([DEEP] * 1100 + ["deep.wav"])
    assert json.loads(body.json)["files"] == [
        {"step": "render", "rel_path": f"r/{path}", "url": f"/api/audio/r/{path}", "bytes": 4}
    ]
    assert body.unlisted.total() == 0


# The exports of one Services, three times, as ``nobody``: the root's checkout
# and the roots below a 0o755 folder are readable by nobody; the param root,
# 0o700, is root's alone.
_THRICE_AS_NOBODY = """
import json, logging, os, pwd, sys
from pathlib import Path
from export_service.config import load_settings
from export_service.exports import Services, export_manifest_json, plan_export_archive
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
services = Services.from_settings(load_settings(Path(sys.argv[1])))
nobody = pwd.getpwnam("nobody")
os.setgroups([])
os.setgid(nobody.pw_gid)
os.setuid(nobody.pw_uid)
for _ in range(3):  # the third after the parent made the root readable
    sys.stdin.readline()
    body = export_manifest_json(services, "r", "p")
    archive = plan_export_archive(services, "r", "p")
    print(json.dumps([json.loads(body.json)["missing"], body.unlisted, archive.unlisted]))
    sys.stdout.flush()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, to run the exports as nobody")
def test_a_root_the_service_cannot_read_is_reported_not_taken_for_no_files() -> None:
    """The param root at 0o700, the service another user: the manifest said
    "missing": ["param_generation"] with X-Export-Unlisted-Paths 0, as for a
    run that has no files. It is counted now (the header, the metric), the
    log says it once, not once per request, and once when it is fixed."""
    with tempfile.TemporaryDirectory() as temp:
        base = Path(temp)
        base.chmod(0o755)
        for root in ("render", "midi", "param"):
            (base / root).mkdir()
        write(base / "render" / "r" / "mix.wav", b"mix")
        write(base / "param" / "20261101_p" / "params.json", b"{}")
        (base / "param").chmod(0o700)
        config = base / "config.toml"
        config.write_text(
            f'[roots]\nrender = "{base / "render"}"\nmidi_generation = "{base / "midi"}"\n'
            f'param_generation = "{base / "param"}"\n[links]\nfile = "{base / "links.json"}"\n'
        )
        with subprocess.Popen(
            [sys.executable, "-c", _THRICE_AS_NOBODY, str(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as child:
            assert child.stdin is not None and child.stdout is not None
            lines = []
            for attempt in range(3):
                if attempt == 2:
                    # Made readable: a chmod leaves the root's mtime as it was,
                    # and the failed listing was kept until that changed.
                    (base / "param").chmod(0o755)
                child.stdin.write("go\n")
                child.stdin.flush()
                lines.append(json.loads(child.stdout.readline()))
            child.stdin.close()
            stderr = child.stderr.read() if child.stderr else ""
            assert child.wait(timeout=60) == 0, stderr
    for missing, manifest_unlisted, zip_unlisted in lines[:2]:
        # The MIDI root is readable: its run is missing, not counted.
        assert missing == ["midi_generation", "param_generation"]
        assert manifest_unlisted == zip_unlisted == {"permission": 1}
    assert lines[2] == [["midi_generation"], {}, {}]
    param = str(base / "param")
    assert stderr.splitlines() == [
        f"WARNING export_service.exports roots.param_generation {param!r} cannot be read "
        "(Permission denied): its files are left out of every export until it can",
        f"INFO export_service.exports roots.param_generation {param!r} can be read again",
    ]


def test_the_folder_limit_counts_the_three_steps_together(tree: AirTree) -> None:
    """The project above has 3 folders: the render run, its stems/, the param run."""
    _project(tree)
    for limit, allowed in ((3, True), (2, False)):
        services = Services.from_settings(tree.settings(limits={"max_folders_per_export": limit}))
        try:
            export_manifest_json(services, "r", None)
            refused = None
        except ExportTooLarge as error:
            refused = error.message
        assert (refused is None) == allowed, refused
    assert refused is not None and "more than 2 folders" in refused
    assert "limits.max_folders_per_export" in refused


def test_a_set_stop_flag_ends_the_export_before_its_next_step(tree: AirTree) -> None:
    services = _project(tree)
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScanStopped):
        export_manifest_json(services, "r", None, stop)


def test_an_unselected_step_is_neither_looked_up_nor_scanned(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """steps=render reads no links file and looks in no MIDI or param root;
    the limits count only what the selection scans."""
    services = _project(tree)
    write(tree.midi / "r" / "a" / "b" / "t.mid", b"MThd")  # 3 folders, beyond the limit below
    looked: list[str] = []
    monkeypatch.setattr(services.links, "valid_param_run_id", lambda run: looked.append("links"))
    monkeypatch.setattr(services.midi_folders, "newest", lambda run: looked.append("midi"))
    monkeypatch.setattr(services.param_folders, "newest", lambda run: looked.append("param"))
    render = Selection.parse(["render"], [])
    manifest = json.loads(export_manifest_json(services, "r", None, None, render).json)
    assert [item["rel_path"] for item in manifest["files"]] == ["r/mix.wav", "r/stems/kick.wav"]
    assert manifest["missing"] == [] and looked == []
    narrow = _services(tree, limits={"max_folders_per_export": 2, "max_files_per_export": 1})
    stems = Selection.parse(["render"], ["stems"])
    archive = plan_export_archive(narrow, "r", None, None, None, stems)
    assert [entry.arcname for entry in archive.entries] == ["render/r/stems/kick.wav"]
    assert archive.missing == [] and archive.param_run_id is None
    with pytest.raises(ExportTooLarge):
        plan_export_archive(narrow, "r", None)
