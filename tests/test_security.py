"""Nothing outside the three roots ever comes back: the helpers that guard the
roots (what lies inside, what opens, and that nothing is left open), then
hostile ids and paths over HTTP."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.core.safe_files import FolderFiles, is_within, open_root_file
from export_service.errors import NotFound, SourceChanged
from tests.helpers import CANARY, AirTree, open_paths_under, raw_get, write
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


def test_is_within_is_strict() -> None:
    assert is_within("/data/root", "/data/root/a")
    assert not is_within("/data/root", "/data/root")
    assert not is_within("/data/root", "/data/rootless/a")
    assert is_within("/", "/etc")


def test_open_root_file_refuses_what_is_not_a_file_inside(tree: AirTree) -> None:
    write(tree.render / "r" / "a.wav", b"a")
    opened = open_root_file(str(tree.render), "r/a.wav")
    assert opened.file.read() == b"a"
    assert opened.info.st_size == 1
    opened.close()
    assert opened.real_path == str((tree.render / "r" / "a.wav").resolve())
    (tree.render / "r" / "out").symlink_to(tree.canary)
    for tail in ["r/out", "r", "r/missing.wav"]:
        with pytest.raises(NotFound):
            open_root_file(str(tree.render), tail)


def test_no_descriptor_is_left_open(tree: AirTree, tmp_path: Path) -> None:
    write(tree.render / "r" / "a.wav", b"a")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        with pytest.raises(NotFound):
            open_root_file(str(tree.render), "r/a.wav/x")
    assert len(os.listdir("/proc/self/fd")) == before


def _read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 20)
    finally:
        os.close(fd)


def test_folder_files_open_by_folder_and_keep_only_a_few_folders_open(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    for index in range(5):
        write(root / "run" / f"d{index}" / "a.wav", bytes([index]))
    write(root / "top.wav", b"top")  # a link target may lie right in the root
    with FolderFiles(keep_open=2) as files:
        for index in range(5):
            fd, info = files.open(str(root / "run" / f"d{index}" / "a.wav"), str(root))
            assert info.st_size == 1
            assert _read_all(fd) == bytes([index])
            assert len(open_paths_under(root)) <= 2
        fd, _ = files.open(str(root / "top.wav"), str(root))
        assert _read_all(fd) == b"top"
    assert open_paths_under(root) == []


def test_folder_files_refuse_what_leads_outside_or_is_no_file(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    write(tmp_path / "outside" / "a.wav", CANARY)
    (root / "run").mkdir(parents=True)
    (root / "run" / "out").symlink_to(tmp_path / "outside")
    (root / "run" / "link.wav").symlink_to(tmp_path / "outside" / "a.wav")
    (root / "run" / "sub").mkdir()
    os.mkfifo(root / "run" / "fifo.wav")
    with FolderFiles() as files:
        with pytest.raises(SourceChanged, match="outside"):
            files.open(str(root / "run" / "out" / "a.wav"), str(root))
        with pytest.raises(OSError) as link:  # a link is not followed
            files.open(str(root / "run" / "link.wav"), str(root))
        assert link.value.errno == errno.ELOOP
        for not_a_file in ("sub", "fifo.wav"):
            with pytest.raises(SourceChanged, match="not a regular file"):
                files.open(str(root / "run" / not_a_file), str(root))
    assert open_paths_under(tmp_path) == []
