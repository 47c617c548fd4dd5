import errno
import logging
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from export_service.core import safe_files, scanning
from export_service.core.safe_files import resolved
from export_service.core.scanning import (
    FolderScan,
    RunFolderIndex,
    ScanStopped,
    TooManyFolders,
    exact_run_folder,
    run_folder_names,
    scan_run_folder,
)
from export_service.errors import ExportTooLarge
from tests.helpers import (
    DEEP,
    AirTree,
    link_beyond_path_max,
    make_deep,
    open_paths_under,
    remove_deep,
    write,
)


class ScannedFile(NamedTuple):
    """A file of a scan as these tests look at it: its path inside the run
    folder, as named on disk, and its size (None: it could not be stat'ed)."""

    parts: tuple[str, ...]
    size: int | None


def scanned_files(scan: FolderScan) -> list[ScannedFile]:
    """The files of a scan, in its order, from its compact records."""
    return [
        ScannedFile((*scan.folders[folder].parts, name), size)
        for folder, name, size, *_ in scan.records
    ]


def _listed(root: Path, folder: str) -> dict[str, int | None]:
    return {"/".join(f.parts): f.size for f in scanned_files(scan_run_folder(str(root), folder))}


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
        real_open_folder = safe_files.open_folder_inside

        def swap_then_open(path: str, root_real: str) -> tuple[int, str] | None:
            swap()
            return real_open_folder(path, root_real)

        monkeypatch.setattr(scanning, "open_folder_inside", swap_then_open)
    listed = _listed(tree.render, "r")
    assert "secret-name.wav" not in {name.rsplit("/", 1)[-1] for name in listed}
    assert 123 not in listed.values()
    if swapped == "subfolder":
        assert listed == {"own.wav": 1}


def test_a_run_folder_moved_out_of_the_root_during_the_scan_lists_no_more(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subfolders are opened relative to their parent's descriptor: when the
    parent is moved out of the root meanwhile, its children are outside too,
    and are not listed."""
    run = tree.render / "r"
    write(run / "own.wav", b"o")
    write(run / "sub" / "inner.wav", b"i")
    real_open_child = scanning._Walk.open_child

    def move_then_open_child(walk: Any, parent: Any, item: Any) -> None:
        if run.exists():
            run.rename(tree.base / "moved_out")
        real_open_child(walk, parent, item)

    monkeypatch.setattr(scanning._Walk, "open_child", move_then_open_child)
    assert _listed(tree.render, "r") == {"own.wav": 1}


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
    import export_service.core.scanning as scanning

    (tree.midi / "20261101_run_1").mkdir()
    os.utime(tree.midi, (1_600_000_000, 1_600_000_000))
    listings: list[str] = []
    real_listing = scanning.run_folder_names

    def counting_listing(root: str) -> list[str] | None:
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
    seen = os.stat(tree.midi).st_mtime_ns  # the mtime that listing was taken at
    (tree.midi / "run_3").mkdir()
    os.utime(tree.midi, ns=(seen, seen))  # same tick
    assert index.newest("run_3") == "run_3"


def test_unlistable_root_gives_no_names(tmp_path: Path) -> None:
    assert run_folder_names(str(tmp_path / "absent")) is None


def test_a_folder_1100_levels_deep_is_listed(tree: AirTree) -> None:
    run = tree.render / "r"
    write(run / "top.wav", b"t")
    make_deep(run, 1100)
    try:
        assert len(str(run)) + 9 * 1100 > os.pathconf("/", "PC_PATH_MAX")
        scan = scan_run_folder(str(tree.render), "r")
        assert {"/".join(f.parts): f.size for f in scanned_files(scan)} == {
            "/".join([DEEP] * 1100 + ["deep.wav"]): 4,
            "top.wav": 1,
        }
        assert not scan.unlisted
    finally:
        remove_deep(run)


def test_files_come_out_in_the_order_of_their_display_paths(tree: AirTree) -> None:
    run = tree.render / "r"
    for name in ["a b.wav", "a/x.wav", "a-c/y.wav", "a0.wav", "b.wav", "A.wav", "a/b/z.wav"]:
        write(run / name)
    paths = ["/".join(f.parts) for f in scanned_files(scan_run_folder(str(tree.render), "r"))]
    assert paths == sorted(paths)
    assert len(paths) == 7


def test_more_files_than_allowed_are_refused_while_listing(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(50):
        write(tree.render / "r" / f"{index:02d}.wav")
    assert len(scan_run_folder(str(tree.render), "r", max_files=50)) == 50
    recorded = []
    real_record = scanning._Walk.record

    def counting_record(walk: Any, *arguments: Any) -> Any:
        recorded.append(1)
        return real_record(walk, *arguments)

    monkeypatch.setattr(scanning._Walk, "record", counting_record)
    with pytest.raises(ExportTooLarge):
        scan_run_folder(str(tree.render), "r", max_files=10)
    assert len(recorded) == 10  # the 11th file was not even recorded
    assert open_paths_under(tree.render) == []


@pytest.mark.slow
def test_a_link_whose_target_is_too_long_to_resolve_is_counted_as_unlisted(
    tree: AirTree, caplog: pytest.LogCaptureFixture
) -> None:
    """A path the scan cannot resolve (here: a link into a folder beyond
    PATH_MAX) is not silently dropped: it is logged and counted."""
    run = tree.render / "r"
    write(run / "own.wav", b"o")
    link_beyond_path_max(run / "into_deep", tree.render / "elsewhere")
    try:
        scan = scan_run_folder(str(tree.render), "r")
        assert ["/".join(f.parts) for f in scanned_files(scan)] == ["own.wav"]
        assert scan.unlisted == {"name_too_long": 1}
        assert "cannot list r/into_deep" in caplog.text
    finally:
        remove_deep(tree.render / "elsewhere")


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists folders whatever their mode")
def test_an_unreadable_subfolder_is_counted_as_unlisted(tree: AirTree) -> None:
    run = tree.render / "r"
    write(run / "own.wav", b"o")
    write(run / "private" / "hidden.wav", b"h")
    (run / "private").chmod(0)
    try:
        scan = scan_run_folder(str(tree.render), "r")
    finally:
        (run / "private").chmod(0o755)
    assert ["/".join(f.parts) for f in scanned_files(scan)] == ["own.wav"]
    assert scan.unlisted == {"permission": 1}


def test_a_link_swapped_while_it_is_resolved_is_a_missing_path(
    tree: AirTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.path.realpath raises EINVAL when a link it saw (lstat) is a folder
    again when it reads it (readlink): the race of issue 12 item 7, made
    deterministic. Every lookup answers "not there" instead of raising."""
    write(tree.render / "r" / "sub" / "a.wav", b"a")
    (tree.render / "r" / "link.wav").symlink_to(tree.render / "r" / "sub" / "a.wav")
    (tree.midi / "20261101_r").symlink_to(tree.midi / "elsewhere")

    def swapped(path: Any, *arguments: Any, **options: Any) -> str:
        raise OSError(errno.EINVAL, "Invalid argument", path)

    monkeypatch.setattr(os, "readlink", swapped)
    with pytest.raises(OSError) as before:  # what the race did before
        os.path.realpath(str(tree.render / "r" / "link.wav"))
    assert before.value.errno == errno.EINVAL
    assert resolved(str(tree.render / "r" / "link.wav")) is None
    assert RunFolderIndex(str(tree.midi)).newest("r") is None
    scan = scan_run_folder(str(tree.render), "r")
    assert [f.parts for f in scanned_files(scan)] == [("sub", "a.wav")]
    assert not scan.unlisted


def test_a_root_swapped_for_a_folder_of_the_same_mtime_is_listed_again(tree: AirTree) -> None:
    """Issue 22 item 8: the index was keyed on the root's mtime alone, so a
    root swapped for another folder with the same mtime hid its run folders."""
    old = 1_600_000_000
    (tree.midi / "20261101_run_1").mkdir()
    os.utime(tree.midi, (old, old))  # settled: the listing is trusted
    index = RunFolderIndex(str(tree.midi))
    assert index.newest("run_2") is None
    replacement = tree.base / "new_midi"
    (replacement / "20261102_run_2").mkdir(parents=True)
    os.utime(replacement, (old, old))
    tree.midi.rename(tree.base / "old_midi")
    replacement.rename(tree.midi)
    assert os.stat(tree.midi).st_mtime_ns == old * 1_000_000_000
    assert index.newest("run_2") == "20261102_run_2"
    assert index.newest("run_1") is None


def test_more_folders_than_allowed_are_refused_while_listing(tree: AirTree) -> None:
    for index in range(20):
        (tree.render / "r" / f"{index:02d}" / "x").mkdir(parents=True)
    assert len(scan_run_folder(str(tree.render), "r", max_folders=41).folders) == 41
    with pytest.raises(TooManyFolders):
        scan_run_folder(str(tree.render), "r", max_folders=40)  # the run folder counts
    with pytest.raises(TooManyFolders):  # what an export's earlier steps left: none
        scan_run_folder(str(tree.render), "r", max_folders=0)
    assert open_paths_under(tree.render) == []


class StopAfter(threading.Event):
    """A stop flag that is set by its own ``checks``-th check (a client that
    hangs up while the scan is at a known point)."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks
        self.checked = 0

    def is_set(self) -> bool:
        self.checked += 1
        self.left -= 1
        if self.left == 0:
            self.set()
        return super().is_set()


def test_a_scan_stops_at_its_next_folder_once_its_stop_flag_is_set(
    tree: AirTree, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 22 item 4: scans whose clients hung up ran on (8 of them held
    the I/O threads for 60 s): the walk checks its stop flag at each folder."""
    for index in range(200):
        write(tree.render / "r" / f"{index:03d}" / "a.wav", b"a")
    stop = StopAfter(10)
    with (
        caplog.at_level(logging.INFO, logger="export_service.scanning"),
        pytest.raises(ScanStopped),
    ):
        scan_run_folder(str(tree.render), "r", stop=stop)
    assert stop.checked == 10  # it ended at the check that saw the flag
    assert open_paths_under(tree.render) == []
    assert "stopped scanning r after 10 folder(s)" in caplog.text


@pytest.mark.slow
def test_a_huge_single_folder_checks_its_stop_flag_while_it_is_listed(tree: AirTree) -> None:
    for index in range(3000):
        write(tree.render / "r" / f"{index:04d}.wav")
    stop = StopAfter(2)  # the run folder's own check, then the 1,024th entry's
    with pytest.raises(ScanStopped):
        scan_run_folder(str(tree.render), "r", stop=stop)
    assert stop.checked == 2
    assert open_paths_under(tree.render) == []
