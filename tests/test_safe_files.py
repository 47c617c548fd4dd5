"""The helpers that guard the roots: what lies inside, what opens, and that
nothing is left open (their HTTP side is tests/test_file_responses.py's)."""

import errno
import os
from pathlib import Path

import pytest

from export_service.core.safe_files import FolderFiles, is_within, open_root_file
from export_service.errors import NotFound, SourceChanged
from tests.helpers import CANARY, AirTree, open_paths_under, write


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
