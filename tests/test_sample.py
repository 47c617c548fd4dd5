"""sample: the tree ``serve`` without a config writes and serves. (Served by a
real process: tests/test_cli.py.)"""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

from export_service.config import settings_from_mapping
from export_service.exports import Services, export_manifest_json
from export_service.sample import SAMPLE_PARAM_RUN_ID, SAMPLE_RENDER_RUN_ID, create_sample_tree
from tests.helpers import open_paths_under

RUN = SAMPLE_RENDER_RUN_ID


def _files(base: Path) -> dict[str, bytes]:
    return {
        path.relative_to(base).as_posix(): path.read_bytes()
        for path in sorted(base.rglob("*"))
        if path.is_file()
    }


def test_the_tree_holds_one_project_in_all_three_steps(tmp_path: Path) -> None:
    create_sample_tree(tmp_path)
    assert sorted(_files(tmp_path)) == [
        f"midi_generation/output/20261101_100900_{RUN}/track.mid",
        f"midi_generation/output/20261101_101300_{RUN}/midi.json",
        f"midi_generation/output/20261101_101300_{RUN}/track.mid",
        f"param_generation/output/20261101_101200_{SAMPLE_PARAM_RUN_ID}/params.json",
        "projects/output/step_links.json",
        f"render/output/{RUN}/mix.wav",
        f"render/output/{RUN}/preview.mp3",
        f"render/output/{RUN}/render.json",
        f"render/output/{RUN}/stems/bass.wav",
        f"render/output/{RUN}/stems/drums.wav",
        f"render/output/{RUN}/stems/lead synth.wav",
    ]
    links = json.loads((tmp_path / "projects" / "output" / "step_links.json").read_text())
    assert links == {RUN: {"param_run_id": SAMPLE_PARAM_RUN_ID, "updated_at": 1793528100.0}}


def test_the_media_are_real_files_of_their_kind(tmp_path: Path) -> None:
    create_sample_tree(tmp_path)
    render = tmp_path / "render" / "output" / RUN
    for name in ("mix.wav", "stems/bass.wav", "stems/drums.wav", "stems/lead synth.wav"):
        with wave.open(io.BytesIO((render / name).read_bytes())) as tone:
            assert (tone.getnchannels(), tone.getsampwidth(), tone.getframerate()) == (1, 2, 22050)
            assert tone.getnframes() == 11025  # half a second
    mp3 = (render / "preview.mp3").read_bytes()
    assert len(mp3) == 20 * 417 and mp3[:4] == bytes([0xFF, 0xFB, 0x90, 0xC0])
    midi = tmp_path / "midi_generation" / "output" / f"20261101_101300_{RUN}" / "track.mid"
    data = midi.read_bytes()
    assert data.startswith(b"MThd") and data[14:18] == b"MTrk"
    assert data.endswith(b"\x00\xff\x2f\x00")  # end of track


def test_the_same_bytes_and_times_every_time(tmp_path: Path) -> None:
    create_sample_tree(tmp_path / "a")
    create_sample_tree(tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    times = {path.stat().st_mtime for path in (tmp_path / "a").rglob("*") if path.is_file()}
    assert times == {1793528100}  # 2026-11-01 10:15:00 UTC: the sample ZIP never changes


def test_the_mapping_it_returns_serves_it_with_nothing_missing(tmp_path: Path) -> None:
    settings = settings_from_mapping(create_sample_tree(tmp_path))
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8080)
    assert settings.roots.render == tmp_path / "render" / "output"
    services = Services.from_settings(settings)
    manifest = json.loads(export_manifest_json(services, RUN, None).json)
    assert manifest["param_run_id"] == SAMPLE_PARAM_RUN_ID  # from the links file
    assert manifest["missing"] == []
    midi = [f["rel_path"] for f in manifest["files"] if f["step"] == "midi_generation"]
    assert midi == [f"20261101_101300_{RUN}/midi.json", f"20261101_101300_{RUN}/track.mid"]
    assert len(manifest["files"]) == 9  # the older MIDI run's file is not among them
    assert open_paths_under(tmp_path) == []
