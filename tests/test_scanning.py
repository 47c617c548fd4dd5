import os
from pathlib import Path
from typing import Any

import pytest

from export_service import scanning
from export_service.scanning import (
    RunFolderIndex,
    exact_run_folder,
    is_within,
    run_folder_names,
    scan_run_folder,
)
from tests.conftest import AirTree, write


def _listed(root: Path, folder: str) -> dict[str, int | None]:
    return {"/".join(f.parts): f.size for f in scan_run_folder(str(root), folder).files()}


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
    assert len(scan_run_folder(str(tree.render), "escape")) == 0
    assert len(scan_run_folder(str(tree.render), "..")) == 0


@pytest.mark.parametrize("swapped", ["subfolder", "run_folder"])
def test_a_folder_swapped_for_a_link_out_during_the_scan_lists_nothing_from_outside(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch, swapped: str
) -> None:
    """The race the scan must survive: a folder is seen as a folder (by the
    listing of its parent, or by the run-folder check) and swapped for a link
    to a folder outside the root before it is listed itself."""
    outside = tree.base / "outside"
    write(outside / "secret-name.wav", b"s" * 123)
    run = tree.render / "r"
    write(run / "own.wav", b"o")
    write(run / "sub" / "inner.wav", b"i")
    victim = run / "sub" if swapped == "subfolder" else run

    def swap() -> None:
        if not victim.is_symlink():
            victim.rename(victim.with_name(victim.name + ".moved"))
            victim.symlink_to(outside)

    if swapped == "subfolder":
        real_open_child = scanning._Walk.open_child

        def swap_then_open_child(walk: Any, parent: Any, item: Any) -> None:
            swap()
            real_open_child(walk, parent, item)

        monkeypatch.setattr(scanning._Walk, "open_child", swap_then_open_child)
    else:
        real_open_folder = scanning.open_folder_inside

        def swap_then_open(path: str, root_real: str) -> tuple[int, str] | None:
            swap()
            return real_open_folder(path, root_real)

        monkeypatch.setattr(scanning, "open_folder_inside", swap_then_open)
    listed = _listed(tree.render, "r")
    assert "secret-name.wav" not in {name.rsplit("/", 1)[-1] for name in listed}
    assert 123 not in listed.values()
    if swapped == "subfolder":
        assert listed == {"own.wav": 1}


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
    index = RunFolderIndex(str(tree.midi))
    assert index.newest("run_1") == "20261102_090000_run_1"
    assert index.newest("run_10") == "run_10"
    assert index.newest("run_2") is None
    assert index.newest("..") is None
    assert index.candidates("run_1") == [
        "20261105_000000_run_1",
        "20261104_000000_run_1",
        "20261102_090000_run_1",
        "20261101_100000_run_1",
    ]


def test_the_index_sees_a_folder_created_after_it_was_built(tree: AirTree) -> None:
    old = 1_600_000_000
    (tree.midi / "20261101_run_1").mkdir()
    os.utime(tree.midi, (old, old))  # a settled root: the listing is trusted
    index = RunFolderIndex(str(tree.midi))
    assert index.newest("run_1") == "20261101_run_1"
    assert index.newest("run_2") is None
    (tree.midi / "20261102_run_2").mkdir()  # changes the root's mtime
    assert index.newest("run_2") == "20261102_run_2"


def test_the_index_does_not_list_a_settled_root_again(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    import export_service.scanning as scanning

    (tree.midi / "20261101_run_1").mkdir()
    os.utime(tree.midi, (1_600_000_000, 1_600_000_000))
    listings: list[str] = []
    real_listing = scanning.run_folder_names

    def counting_listing(root: str) -> list[str]:
        listings.append(root)
        return real_listing(root)

    monkeypatch.setattr(scanning, "run_folder_names", counting_listing)
    index = RunFolderIndex(str(tree.midi))
    for _ in range(5):
        assert index.newest("run_1") == "20261101_run_1"
    assert len(listings) == 1


def test_a_root_changed_within_the_last_second_is_listed_again(tree: AirTree) -> None:
    index = RunFolderIndex(str(tree.midi))  # the root was just created: not settled
    assert index.newest("run_3") is None
    (tree.midi / "run_3").mkdir()
    os.utime(tree.midi, ns=(index._mtime_ns or 0, index._mtime_ns or 0))  # same tick
    assert index.newest("run_3") == "run_3"


def test_unlistable_root_gives_no_names(tmp_path: Path) -> None:
    assert run_folder_names(str(tmp_path / "absent")) == []


def test_is_within_is_strict() -> None:
    assert is_within("/data/root", "/data/root/a")
    assert not is_within("/data/root", "/data/root")
    assert not is_within("/data/root", "/data/rootless/a")
    assert is_within("/", "/etc")
