"""The shared fixtures: an AIR output tree under tmp_path, a client for it,
the run's own temporary folder and a failing disk. What the tests share
besides fixtures is in helpers.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from export_service.http.access import runner_options
from export_service.http.app import create_app
from tests.helpers import CANARY, AirTree, ClientFactory, FailingDisk, write

# The run's temporary folder (temp_folder_left_empty), and for each entry
# found in it after a test, the first test it was found after.
_TEMP_FOLDER = pytest.StashKey[Path]()
_FOUND_AFTER = pytest.StashKey[dict[str, str]]()


@pytest.fixture(scope="session", autouse=True)
def temp_folder_left_empty(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[None]:
    """The run's temporary files, its child processes' included (TMPDIR), go
    to one fresh folder, which must be empty when the run ends: a service
    killed before it removed its sample tree fails the run instead of
    leaving ``export-service-sample-*`` behind. A folder of the run's own,
    not the system's: other runs on the machine write there meanwhile. Under
    pytest -n, each worker is a run: the failure is reported on the
    worker's last test, so it names the test after which each entry was
    first found (pytest_runtest_teardown, below)."""
    tmp_path_factory.getbasetemp()  # tmp_path stays in pytest's own folder
    folder = Path(tempfile.mkdtemp(prefix="export-service-tests-"))
    folder.chmod(0o755)  # tests that run a child as nobody build its tree below
    request.config.stash[_TEMP_FOLDER] = folder
    found_after = request.config.stash.setdefault(_FOUND_AFTER, {})
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        if saved[0] is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        left = sorted(path.name for path in folder.iterdir())
        shutil.rmtree(folder)
        del request.config.stash[_TEMP_FOLDER]
    assert left == [], "the run left these in the temporary folder: " + ", ".join(
        f"{name} (found after {found_after.get(name, 'the last test')})" for name in left
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """Notes, after each test's teardown, what is in the run's temporary folder."""
    yield
    folder = item.config.stash.get(_TEMP_FOLDER, None)
    if folder is not None:
        found_after = item.config.stash[_FOUND_AFTER]
        for name in os.listdir(folder):
            found_after.setdefault(name, item.nodeid)


@pytest.fixture
def failing_disk(tree: AirTree, tmp_path: Path) -> Iterator[FailingDisk]:
    """An ext4 file system on a loop device mounted as the render run ``r``,
    holding ``small.wav`` (4 KiB) and ``big.wav`` (8 MiB) of which only the
    first ``readable`` bytes are still on the (truncated) backing file. Needs
    root, losetup, mkfs.ext4 and filefrag; skipped, saying why, without."""
    if os.geteuid() != 0:
        pytest.skip("a loop device needs root")
    for tool in ("losetup", "mkfs.ext4", "filefrag", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    backing = tmp_path / "disk.img"
    with backing.open("wb") as image:
        image.truncate(64 * 1024 * 1024)
    made = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True
    )
    if made.returncode != 0:
        pytest.skip(f"no loop device: {made.stderr.strip()}")
    device = made.stdout.strip()
    mount_point = tree.render / "r"
    mount_point.mkdir()
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, capture_output=True)
        subprocess.run(["mount", device, str(mount_point)], check=True, capture_output=True)
        mounted = True
        small = write(mount_point / "small.wav", os.urandom(4096), mtime=1_700_000_000)
        big = write(mount_point / "big.wav", os.urandom(8 * 1024 * 1024), mtime=1_700_000_000)
        os.sync()
        for path in (small, big):  # read from the disk from now on, not the page cache
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        extents = subprocess.run(
            ["filefrag", "-e", "-b1", str(big)], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        first = extents[3].replace(":", " ").replace("..", " ").split()  # ext logical.. physical..
        physical, length = int(first[3]), int(first[5])
        readable = min(length, 3 * 1024 * 1024)
        with backing.open("r+b") as image:
            image.truncate(physical + readable)
        subprocess.run(["losetup", "--set-capacity", device], check=True)
        yield FailingDisk(big, small, readable)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)
        subprocess.run(["losetup", "-d", device], check=True)


@pytest.fixture
def tree(tmp_path: Path) -> AirTree:
    base = tmp_path / "air"
    render, midi, param = (
        base / step / "output" for step in ("render", "midi_generation", "param_generation")
    )
    for root in (render, midi, param):
        root.mkdir(parents=True)
    canary = write(base / "secret.txt", CANARY)
    links = base / "projects" / "output" / "step_links.json"
    return AirTree(base, render, midi, param, links, canary)


@pytest.fixture
def make_client(aiohttp_client: Any, tree: AirTree) -> ClientFactory:
    async def factory(**sections: dict[str, Any]) -> TestClient[Any, Any]:
        # The runner options go to start_server (TestServer() would drop them),
        # so tests run with the production access log and its metrics
        # (TestServer cancels a handler whose client hangs up, as serve does).
        server = TestServer(create_app(tree.settings(**sections)))
        await server.start_server(**runner_options(server.app))
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client

    return factory


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[Any, Any]:
    return await make_client()
