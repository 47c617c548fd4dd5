import json
import os
from typing import Any

from aiohttp.test_utils import TestClient

from export_service.exports import ExportSources, build_export
from tests.conftest import (
    DEEP,
    AirTree,
    ClientFactory,
    link_beyond_path_max,
    make_deep,
    remove_deep,
    write,
)

# Hand-written: what the original AIR export module returns for the tree built
# by _every_case(), in its compact FastAPI rendering.
EXPECTED_RUN_1 = """
{"render_run_id": "run_1", "midi_run_id": "run_1", "param_run_id": "prm_a",
 "files": [
  {"step": "midi_generation", "rel_path": "20261102_090000_run_1/track.mid",
   "url": "/api/midi-generation/output/20261102_090000_run_1/track.mid", "bytes": 4},
  {"step": "param_generation", "rel_path": "20261101_101200_prm_a/params.json",
   "url": "/api/param-generation/output/20261101_101200_prm_a/params.json", "bytes": 2},
  {"step": "render", "rel_path": "run_1/a/b.wav", "url": "/api/audio/run_1/a/b.wav", "bytes": 2},
  {"step": "render", "rel_path": "run_1/a\\\\b.wav", "url": "/api/audio/run_1/a%5Cb.wav",
   "bytes": 1},
  {"step": "render", "rel_path": "run_1/empty.txt", "url": "/api/audio/run_1/empty.txt",
   "bytes": 0},
  {"step": "render", "rel_path": "run_1/mix.wav", "url": "/api/audio/run_1/mix.wav", "bytes": 4},
  {"step": "render", "rel_path": "run_1/naïve #1 100%.wav",
   "url": "/api/audio/run_1/na%C3%AFve%20%231%20100%25.wav", "bytes": 5},
  {"step": "render", "rel_path": "run_1/stems/deep/kick.wav",
   "url": "/api/audio/run_1/stems/deep/kick.wav", "bytes": 3}
 ],
 "missing": []}
"""


def _compact(text: str) -> bytes:
    return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":")).encode()


def _every_case(tree: AirTree) -> None:
    run = tree.render / "run_1"
    write(run / "mix.wav", b"RIFF")
    write(run / "empty.txt")
    write(run / "stems" / "deep" / "kick.wav", b"kkk")
    write(run / "a\\b.wav", b"x")
    write(run / "a" / "b.wav", b"yy")
    write(run / "naïve #1 100%.wav", b"nnnnn")
    write(tree.midi / "20261101_100000_run_1" / "old.mid", b"o")
    write(tree.midi / "20261102_090000_run_1" / "track.mid", b"MThd")
    write(tree.midi / "run_10" / "x.mid", b"x")
    write(tree.midi / "20261103_run_1x" / "y.mid", b"y")
    write(tree.param / "20261101_101200_prm_a" / "params.json", b"{}")
    write(tree.param / "20261101_101300_prm_b" / "params.json", b'{"b":1}')
    write(tree.render / "run_2" / "mix.wav", b"2")
    tree.link(
        {
            "run_1": {"param_run_id": "prm_a", "updated_at": 1.5, "note": "kept"},
            "run_bad": {"param_run_id": "../../etc", "updated_at": 1.0},
        }
    )


async def _manifest(client: TestClient[Any, Any], path: str) -> Any:
    response = await client.get(path)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    return await response.read()


async def test_manifest_is_byte_for_byte_the_original(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _every_case(tree)
    body = await _manifest(client, "/api/air/export/list/run_1")
    assert body == _compact(EXPECTED_RUN_1)


async def test_query_param_run_id_wins_over_the_link(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _every_case(tree)
    manifest = json.loads(await _manifest(client, "/api/air/export/list/run_1?param_run_id=prm_b"))
    assert manifest["param_run_id"] == "prm_b"
    params = [f for f in manifest["files"] if f["step"] == "param_generation"]
    assert params == [
        {
            "step": "param_generation",
            "rel_path": "20261101_101300_prm_b/params.json",
            "url": "/api/param-generation/output/20261101_101300_prm_b/params.json",
            "bytes": 7,
        }
    ]


async def test_missing_steps_are_listed_in_order(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _every_case(tree)
    manifest = json.loads(await _manifest(client, "/api/air/export/list/run_2"))
    assert manifest["midi_run_id"] is None
    assert manifest["param_run_id"] is None
    assert manifest["missing"] == ["midi_generation", "param_generation"]

    nothing = await _manifest(client, "/api/air/export/list/never_rendered")
    assert nothing == (
        b'{"render_run_id":"never_rendered","midi_run_id":null,"param_run_id":null,'
        b'"files":[],"missing":["render","midi_generation","param_generation"]}'
    )


async def test_param_run_that_does_not_exist_is_missing(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _every_case(tree)
    manifest = json.loads(await _manifest(client, "/api/air/export/list/run_1?param_run_id=prm_z"))
    assert manifest["param_run_id"] is None
    assert manifest["missing"] == ["param_generation"]


async def test_an_empty_param_run_id_query_falls_back_to_the_link(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _every_case(tree)
    manifest = json.loads(await _manifest(client, "/api/air/export/list/run_1?param_run_id="))
    assert manifest["param_run_id"] == "prm_a"


async def test_a_hostile_link_value_is_ignored(tree: AirTree, client: TestClient[Any, Any]) -> None:
    _every_case(tree)
    write(tree.render / "run_bad" / "mix.wav", b"m")
    manifest = json.loads(await _manifest(client, "/api/air/export/list/run_bad"))
    assert manifest["param_run_id"] is None
    assert "param_generation" in manifest["missing"]


async def test_empty_run_folder_counts_as_missing(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    (tree.render / "hollow" / "sub").mkdir(parents=True)
    (tree.midi / "20261101_hollow").mkdir()
    manifest = json.loads(await _manifest(client, "/api/air/export/list/hollow"))
    assert manifest["missing"] == ["render", "midi_generation", "param_generation"]
    assert manifest["midi_run_id"] is None


async def test_url_base_and_prefixes_are_configurable(
    tree: AirTree, make_client: ClientFactory
) -> None:
    write(tree.render / "r" / "a b.wav", b"1")
    client = await make_client(urls={"base": "https://air.example.com/", "render": "/files/"})
    manifest = json.loads(await _manifest(client, "/api/air/export/list/r"))
    assert manifest["files"][0]["url"] == "https://air.example.com/files/r/a%20b.wav"


async def test_undecodable_names_give_valid_json_and_a_byte_exact_url(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    run = tree.render / "r"
    run.mkdir()
    (run / "bad\udcff.wav").write_bytes(b"1")  # the name on disk is b"bad\xff.wav"
    manifest = json.loads(await _manifest(client, "/api/air/export/list/r"))
    assert manifest["files"][0]["rel_path"] == "r/bad\ufffd.wav"
    assert manifest["files"][0]["url"] == "/api/audio/r/bad%FF.wav"


async def test_no_absolute_path_appears(tree: AirTree, client: TestClient[Any, Any]) -> None:
    _every_case(tree)
    body = await _manifest(client, "/api/air/export/list/run_1")
    assert str(tree.base).encode() not in body


async def test_a_run_folder_created_while_serving_is_found_on_the_next_request(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "run_9" / "mix.wav", b"m")
    write(tree.midi / "20261101_000000_run_8" / "x.mid", b"x")
    settled = 1_600_000_000  # the index trusts a root whose mtime has settled
    os.utime(tree.midi, (settled, settled))
    before = json.loads(await _manifest(client, "/api/air/export/list/run_9"))
    assert before["midi_run_id"] is None  # the index of the MIDI root is now built

    write(tree.midi / "20261124_120000_run_9" / "take.mid", b"MThd")  # changes the mtime
    after = json.loads(await _manifest(client, "/api/air/export/list/run_9"))
    assert after["midi_run_id"] == "run_9"
    assert [f["rel_path"] for f in after["files"] if f["step"] == "midi_generation"] == [
        "20261124_120000_run_9/take.mid"
    ]


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def test_an_export_of_more_files_than_the_limit_is_refused(
    tree: AirTree, make_client: ClientFactory
) -> None:
    for index in range(4):
        write(tree.render / "r" / f"{index}.wav", b"r")
    write(tree.midi / "20261101_r" / "track.mid", b"m")
    client = await make_client(limits={"max_files_per_export": 4})
    response = await client.get("/api/air/export/list/r")
    assert response.status == 422
    error = (await response.json())["detail"]
    assert error["error"] == "export_too_large"
    assert "more than 4 files" in error["message"]
    assert "limits.max_files_per_export" in error["message"]
    (tree.midi / "20261101_r" / "track.mid").unlink()  # 4 files: at the limit, listed
    response = await client.get("/api/air/export/list/r")
    assert response.status == 200
    assert len((await response.json())["files"]) == 4


async def test_what_could_not_be_listed_is_counted_in_a_header_and_a_metric(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    write(tree.render / "r" / "own.wav", b"o")
    response = await client.get("/api/air/export/list/r")
    assert response.headers["X-Export-Unlisted-Paths"] == "0"
    link_beyond_path_max(tree.render / "r" / "into_deep", tree.render / "elsewhere")
    try:
        response = await client.get("/api/air/export/list/r")
        body = await response.json()
    finally:
        remove_deep(tree.render / "elsewhere")
    assert [f["rel_path"] for f in body["files"]] == ["r/own.wav"]
    assert response.headers["X-Export-Unlisted-Paths"] == "1"
    metrics = await (await client.get("/metrics")).text()
    assert _metric(metrics, 'export_scan_unlisted_total{reason="name_too_long"}') == 1


async def test_a_file_1100_folders_deep_is_listed(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    make_deep(tree.render / "r", 1100)
    try:
        response = await client.get("/api/air/export/list/r")
        body = await response.json()
    finally:
        remove_deep(tree.render / "r")
    path = "/".join([DEEP] * 1100 + ["deep.wav"])
    assert body["files"] == [
        {"step": "render", "rel_path": f"r/{path}", "url": f"/api/audio/r/{path}", "bytes": 4}
    ]
    assert response.headers["X-Export-Unlisted-Paths"] == "0"


def test_taking_the_files_gives_them_in_order_and_drops_them(tree: AirTree) -> None:
    """What a ZIP plan uses: the same entries as ``files``, and the scan's
    records released as they are handed over."""
    for index in range(5000):  # more than one slice
        write(tree.render / "r" / f"{index % 7}" / f"{index:04d}.wav")
    write(tree.midi / "20261101_r" / "track.mid", b"m")
    sources = ExportSources.from_settings(tree.settings())
    expected = list(build_export(sources, "r", None).files)
    export = build_export(sources, "r", None)
    assert list(export.take_files()) == expected
    assert len(expected) == 5001
    assert len(export) == 0
