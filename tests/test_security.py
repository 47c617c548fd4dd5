"""Hostile ids and paths: nothing outside the three roots ever comes back."""

import os
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import CANARY, AirTree, raw_get, write
from tests.zips import read_zip

# Ids the run-id rule refuses (422) once the URL is decoded: "." or "..", a
# slash or backslash, a control character.
REFUSED_IDS = [
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "..%2f..",
    "..%2F..%2Fsecret.txt",
    "%2fetc%2fpasswd",
    "..%5c..",
    "..\\..",
    "%00",
    "a%00b",
    "%0a",
    "....//",
    "/",
    "//",
    "r%2f..%2f..%2fsecret.txt",
]
BLANK_IDS = {"%0a"}
# Ids the rule lets through: decoded once, none of the above is left
# ("%252e%252e" is the name "%2e%2e"; "%c0%ae" is no dot). A run of that name
# does not exist: a 200 with nothing in it.
ACCEPTED_IDS = [
    "%252e%252e",
    "%252f",
    "%c0%ae%c0%ae",
    "~",
    "*",
    "%ff",
]


@pytest.fixture
def hostile_tree(tree: AirTree) -> AirTree:
    write(tree.render / "r" / "mix.wav", b"ok")
    (tree.render / "r" / "leak.txt").symlink_to(tree.canary)
    (tree.render / "r" / "leak_dir").symlink_to(tree.base)
    (tree.render / "escape").symlink_to(tree.base)
    (tree.midi / "20261101_r").symlink_to(tree.base)
    (tree.param / "20261101_p").mkdir()
    (tree.param / "20261101_p" / "up").symlink_to(tree.base / "secret.txt")
    tree.link({"r": {"param_run_id": "p"}, "x": {"param_run_id": "../.."}})
    return tree


@pytest.mark.parametrize(
    ("run_id", "status"),
    [(run_id, 422) for run_id in REFUSED_IDS] + [(run_id, 200) for run_id in ACCEPTED_IDS],
)
@pytest.mark.parametrize("endpoint", ["list", "zip"])
async def test_hostile_ids_never_reach_outside(
    hostile_tree: AirTree, client: TestClient[Any, Any], endpoint: str, run_id: str, status: int
) -> None:
    # A blank param_run_id ("%0a") counts as absent, as in the original: the link is used.
    param_status = 200 if run_id in BLANK_IDS else status
    for query in ("", "?param_run_id=" + run_id):
        answer, body = await raw_get(client, f"/api/air/export/{endpoint}/r{query}")
        assert answer == (200 if query == "" else param_status), (answer, body)
        assert CANARY not in body
        answer, body = await raw_get(client, f"/api/air/export/{endpoint}/{run_id}{query}")
        assert answer == status, (answer, body)
        assert CANARY not in body
        assert str(hostile_tree.base).encode() not in body


async def test_links_out_of_the_root_are_skipped_in_list_and_zip(
    hostile_tree: AirTree, client: TestClient[Any, Any]
) -> None:
    manifest = await (await client.get("/api/air/export/list/r")).json()
    assert [f["rel_path"] for f in manifest["files"]] == ["r/mix.wav"]
    assert manifest["missing"] == ["midi_generation", "param_generation"]
    body = await (await client.get("/api/air/export/zip/r")).read()
    assert read_zip(body) == {"render/r/mix.wav": b"ok"}
    escape = await (await client.get("/api/air/export/list/escape")).json()
    assert escape["files"] == []


async def test_a_root_that_is_itself_a_link_still_works(tree: AirTree, aiohttp_client: Any) -> None:
    from export_service.http.app import create_app

    real = tree.base / "real_render"
    write(real / "r" / "mix.wav", b"ok")
    linked = tree.base / "linked_render"
    os.symlink(real, linked)
    settings = tree.settings(
        roots={
            "render": str(linked),
            "midi_generation": str(tree.midi),
            "param_generation": str(tree.param),
        }
    )
    client = await aiohttp_client(create_app(settings))
    body = await (await client.get("/api/air/export/zip/r")).read()
    assert read_zip(body) == {"render/r/mix.wav": b"ok"}
