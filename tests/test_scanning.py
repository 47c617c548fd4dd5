import os
from pathlib import Path

from export_service.scanning import (
    exact_run_folder,
    is_within,
    pick_run_folder,
    run_folder_names,
    scan_run_folder,
)
from tests.conftest import AirTree, write


def _listed(root: Path, folder: str) -> dict[str, int | None]:
    return {"/".join(f.parts): f.size for f in scan_run_folder(str(root), folder)}


def test_scan_is_recursive_and_reports_sizes(tree: AirTree) -> None:
    write(tree.render / "r" / "mix.wav", b"1234")
    write(tree.render / "r" / "stems" / "deep" / "kick.wav", b"k")
    write(tree.render / "r" / "empty.txt")
    assert _listed(tree.render, "r") == {"mix.wav": 4, "stems/deep/kick.wav": 1, "empty.txt": 0}


def test_links_are_followed_only_inside_the_root(tree: AirTree) -> None:
    write(tree.render / "other" / "shared.wav", b"shared")
    run = tree.render / "r"
    write(run / "own.wav", b"o")
    (run / "inside.wav").symlink_to(tree.render / "other" / "shared.wav")
    (run / "inside_dir").symlink_to(tree.render / "other")
    (run / "outside.txt").symlink_to(tree.canary)
    (run / "outside_dir").symlink_to(tree.base)
    (run / "dangling").symlink_to(tree.render / "gone")
    (run / "loop").symlink_to(run)
    assert _listed(tree.render, "r") == {
        "own.wav": 1,
        "inside.wav": 6,
        "inside_dir/shared.wav": 6,
    }


def test_a_run_folder_that_links_out_of_its_root_is_empty(tree: AirTree) -> None:
    (tree.render / "escape").symlink_to(tree.base)
    assert exact_run_folder(str(tree.render), "escape") is None
    assert scan_run_folder(str(tree.render), "escape") == []
    assert scan_run_folder(str(tree.render), "..") == []


def test_fifos_and_sockets_are_left_out(tree: AirTree) -> None:
    run = tree.render / "r"
    write(run / "real.wav", b"r")
    os.mkfifo(run / "pipe")
    assert _listed(tree.render, "r") == {"real.wav": 1}


def test_newest_matching_folder_wins(tree: AirTree) -> None:
    for name in ["20261101_100000_run_1", "20261102_090000_run_1", "run_10", "20261103_run_1x"]:
        (tree.midi / name).mkdir()
    write(tree.midi / "20261104_000000_run_1", b"a file, not a folder")
    (tree.midi / "20261105_000000_run_1").symlink_to(tree.base)  # leads out: ignored
    names = run_folder_names(str(tree.midi))
    assert pick_run_folder(str(tree.midi), names, "run_1") == "20261102_090000_run_1"
    assert pick_run_folder(str(tree.midi), names, "run_10") == "run_10"
    assert pick_run_folder(str(tree.midi), names, "run_2") is None
    assert pick_run_folder(str(tree.midi), names, "..") is None


def test_unlistable_root_gives_no_names(tmp_path: Path) -> None:
    assert run_folder_names(str(tmp_path / "absent")) == []


def test_is_within_is_strict() -> None:
    assert is_within("/data/root", "/data/root/a")
    assert not is_within("/data/root", "/data/root")
    assert not is_within("/data/root", "/data/rootless/a")
    assert is_within("/", "/etc")
