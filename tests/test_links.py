import asyncio
import contextlib
import errno
import json
import logging
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import aiohttp
import pydantic
import pytest
from aiohttp.test_utils import TestClient

import export_service.links.store as store_module
from export_service.errors import LinksFileCorrupt
from export_service.links import get_param_for_render, link_param_to_render
from export_service.links.records import parse_links
from export_service.links.store import LinkStore
from tests.helpers import AirTree, degraded, write
from tests.live import free_port, live_service
from tests.zips import read_zip

PROCESSES, THREADS, LINKS_PER_THREAD = 2, 4, 60


def _write_links(path: str, process: int) -> None:
    """Run in a separate process: several threads, each writing distinct links."""
    store = LinkStore(Path(path))

    def writer(thread: int) -> None:
        for index in range(LINKS_PER_THREAD):
            store.write_link(f"r_{process}_{thread}_{index}", f"p_{process}_{thread}_{index}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.slow
def test_processes_and_threads_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "links" / "step_links.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"kept": {"param_run_id": "p", "updated_at": 1.0, "x": [1]}}))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_links, args=(str(path), p)) for p in range(PROCESSES)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    records = json.loads(path.read_text())
    assert len(records) == PROCESSES * THREADS * LINKS_PER_THREAD + 1
    assert records["kept"] == {"param_run_id": "p", "updated_at": 1.0, "x": [1]}
    for p in range(PROCESSES):
        for t in range(THREADS):
            for i in range(LINKS_PER_THREAD):
                assert records[f"r_{p}_{t}_{i}"]["param_run_id"] == f"p_{p}_{t}_{i}"
    assert sorted(f.name for f in path.parent.iterdir()) == [
        "step_links.json",
        "step_links.json.lock",
    ]


def test_first_write_creates_the_file_and_its_folder(tmp_path: Path) -> None:
    store = LinkStore(tmp_path / "a" / "b" / "step_links.json")
    assert store.valid_param_run_id("r") is None
    link = store.write_link("r", "p")
    assert link.param_run_id == "p"
    assert isinstance(link.updated_at, float)
    assert store.valid_param_run_id("r") == "p"
    assert oct((tmp_path / "a" / "b" / "step_links.json").stat().st_mode & 0o777) == "0o644"


def test_unknown_keys_of_a_record_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "step_links.json"
    path.write_text(json.dumps({"r": {"param_run_id": "old", "updated_at": 1.0, "by": "ui"}}))
    LinkStore(path).write_link("r", "new")
    assert json.loads(path.read_text())["r"]["by"] == "ui"
    assert json.loads(path.read_text())["r"]["param_run_id"] == "new"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b""])
def test_a_corrupt_file_is_never_overwritten(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "step_links.json", content)
    store = LinkStore(path)
    with caplog.at_level(logging.ERROR):
        assert store.valid_param_run_id("r") is None
        assert store.valid_param_run_id("r") is None
        assert store.problem() is not None
    assert len([r for r in caplog.records if "unusable" in r.message]) == 1  # once per change
    with pytest.raises(LinksFileCorrupt):
        store.write_link("r", "p")
    assert path.read_bytes() == content


@pytest.mark.slow
def test_a_large_file_is_parsed_once_until_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "step_links.json"
    records = {f"r{i}": {"param_run_id": f"p{i}", "updated_at": 1.0} for i in range(100_000)}
    path.write_text(json.dumps(records))
    parses = 0
    real_parse = parse_links

    def counting_parse(raw: bytes) -> Any:
        nonlocal parses
        parses += 1
        return real_parse(raw)

    monkeypatch.setattr(store_module, "parse_links", counting_parse)
    store = LinkStore(path)
    assert [store.valid_param_run_id(f"r{i}") for i in (0, 5, 99_999)] == ["p0", "p5", "p99999"]
    assert parses == 1
    store.write_link("r0", "changed")
    assert store.valid_param_run_id("r0") == "changed"
    assert parses == 2


async def test_a_change_is_parsed_once_while_concurrent_manifests_wait_for_it(
    tree: AirTree, client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tree.render / "r" / "mix.wav", b"m")
    write(tree.param / "20261101_101200_p9" / "params.json", b"{}")
    tree.link({"r": {"param_run_id": "p1"}})
    assert (await client.get("/api/air/export/list/r")).status == 200  # parsed, cached
    parses = 0
    real_parse = parse_links

    def slow_counting_parse(raw: bytes) -> Any:
        nonlocal parses
        parses += 1
        time.sleep(0.3)  # long enough for every request below to arrive meanwhile
        return real_parse(raw)

    monkeypatch.setattr(store_module, "parse_links", slow_counting_parse)
    tree.link({"r": {"param_run_id": "p9"}, "other": {"param_run_id": "p1"}})
    answers = await asyncio.gather(
        *(client.get("/api/air/export/list/r") for _ in range(8)), client.get("/readyz")
    )
    assert [a.status for a in answers] == [200] * 9
    assert [(await a.json())["param_run_id"] for a in answers[:8]] == ["p9"] * 8
    assert parses == 1


CRASHING_WRITER = """
import os, sys, time
from pathlib import Path
from export_service.links.store import LinkStore

def stuck_replace(source, target):
    Path(sys.argv[2]).write_text("temp file written")
    time.sleep(60)  # killed here, between writing the temp file and renaming it

os.replace = stuck_replace
LinkStore(Path(sys.argv[1])).write_link("r2", "p2")
"""


def test_a_writer_killed_before_its_rename_leaves_the_old_content(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "step_links.json"
    LinkStore(path).write_link("r1", "p1")
    before = path.read_bytes()
    marker = tmp_path / "marker"
    writer = subprocess.Popen([sys.executable, "-c", CRASHING_WRITER, str(path), str(marker)])
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert path.read_bytes() == before
    assert len(list(tmp_path.glob(".step_links.json.*"))) == 1  # the dead writer's temp file
    assert LinkStore(path).write_link("r3", "p3").param_run_id == "p3"  # the lock was released
    records = json.loads(path.read_text())
    assert set(records) == {"r1", "r3"}
    assert list(tmp_path.glob(".step_links.json.*")) == []  # cleaned up under the lock


# -- hostile but valid content (issue 12 item 3) ------------------------------

DEEP = b"[" * 2000 + b"]" * 2000
NESTED_500 = b'{"a": ' * 500 + b"1" + b"}" * 500

# (content, why the whole file is corrupt, or None when it parses)
UNPARSABLE = {
    "nesting 2,000 deep": (
        b'{"r": {"param_run_id": "p9", "x": ' + DEEP + b"}}",
        "nested too deeply",
    ),
    "integer of 5,000 digits": (
        b'{"r": {"param_run_id": "p9", "n": ' + b"7" * 5000 + b"}}",
        "integer string conversion",
    ),
    "UTF-8 byte order mark": (b'\xef\xbb\xbf{"r": {"param_run_id": "p9"}}', "not valid JSON"),
}


async def _link_routes(client: TestClient[Any, Any]) -> dict[str, Any]:
    """What every route that touches the links file answers for render run r."""
    manifest = await client.get("/api/air/export/list/r")
    archive = await client.get("/api/air/export/zip/r")
    ready = await client.get("/readyz")
    got = await client.get("/api/air/export/links/r")
    return {
        "manifest": (manifest.status, (await manifest.json()).get("param_run_id")),
        "zip": (archive.status, sorted(read_zip(await archive.read()))),
        "readyz": (ready.status, await ready.json()),
        "get": (got.status, await got.json()),
    }


def _param_tree(tree: AirTree) -> None:
    write(tree.render / "r" / "mix.wav", b"m")
    write(tree.param / "20261101_101200_p9" / "params.json", b"{}")
    write(tree.param / "20261101_101200_p7" / "params.json", b"{}")


@pytest.mark.parametrize(("content", "why"), UNPARSABLE.values(), ids=UNPARSABLE.keys())
async def test_content_the_parser_refuses_counts_as_corrupt_on_every_route(
    tree: AirTree, client: TestClient[Any, Any], content: bytes, why: str
) -> None:
    _param_tree(tree)
    write(tree.links, content)
    answers = await _link_routes(client)
    assert answers["manifest"] == (200, None)  # goes on without the link
    assert answers["zip"] == (200, ["render/r/mix.wav"])
    status, body = answers["readyz"]
    assert status == 200 and "links.file: " in degraded(body)  # the service goes on
    assert why in degraded(body)
    assert answers["get"][0] == 404
    put = await client.put("/api/air/export/links/r", json={"param_run_id": "p7"})
    assert put.status == 503
    assert (await put.json())["detail"]["error"] == "links_file_corrupt"
    assert tree.links.read_bytes() == content


# (content, the link GET answers for r: (param_run_id, updated_at) or None)
PARSABLE = {
    "lone surrogate as the param run id": (b'{"r": {"param_run_id": "\\ud800"}}', None),
    "lone surrogate in another key": (
        b'{"r": {"param_run_id": "p9", "updated_at": 5, "note": "\\ud800"}}',
        ("p9", 5.0),
    ),
    "lone surrogate as a render run id": (
        b'{"\\udfff": {"param_run_id": "p7"}, "r": {"param_run_id": "p9", "updated_at": 1.5}}',
        ("p9", 1.5),
    ),
    "updated_at of 400 digits": (
        b'{"r": {"param_run_id": "p9", "updated_at": 1' + b"0" * 400 + b"}}",
        ("p9", None),
    ),
    "updated_at beyond a float": (
        b'{"r": {"param_run_id": "p9", "updated_at": 1e400}}',
        ("p9", None),
    ),
    "updated_at NaN": (b'{"r": {"param_run_id": "p9", "updated_at": NaN}}', ("p9", None)),
    "updated_at true": (b'{"r": {"param_run_id": "p9", "updated_at": true}}', ("p9", None)),
    "nesting 500 deep in a record": (
        b'{"r": {"param_run_id": "p9", "updated_at": 2, "x": ' + NESTED_500 + b"}}",
        ("p9", 2.0),
    ),
    "integer of 4,000 digits": (
        b'{"r": {"param_run_id": "p9", "updated_at": 3, "n": ' + b"7" * 4000 + b"}}",
        ("p9", 3.0),
    ),
    "param run id with a slash": (b'{"r": {"param_run_id": "../p9"}}', None),
    "record not an object": (b'{"r": [1, 2]}', None),
}


@pytest.mark.parametrize(("content", "served"), PARSABLE.values(), ids=PARSABLE.keys())
async def test_hostile_records_are_skipped_or_served_clean_and_puts_keep_them(
    tree: AirTree, client: TestClient[Any, Any], content: bytes, served: tuple[str, Any] | None
) -> None:
    _param_tree(tree)
    write(tree.links, content)
    answers = await _link_routes(client)
    assert answers["readyz"] == (200, {"status": "ready"})
    if served is None:
        assert answers["manifest"] == (200, None)
        assert answers["get"][0] == 404
        assert answers["zip"] == (200, ["render/r/mix.wav"])
    else:
        assert answers["manifest"] == (200, served[0])
        assert answers["get"] == (
            200,
            {"render_run_id": "r", "param_run_id": served[0], "updated_at": served[1]},
        )
        assert answers["zip"] == (
            200,
            ["param_generation/20261101_101200_p9/params.json", "render/r/mix.wav"],
        )

    # A PUT of another record copies this one back byte for byte, as JSON
    # that Python's parser (the backend's) reads.
    put = await client.put("/api/air/export/links/other", json={"param_run_id": "p7"})
    assert put.status == 200
    written = tree.links.read_bytes()
    record = content[content.index(b'"r": ') : -1]
    assert record in written
    assert json.loads(written)["other"]["param_run_id"] == "p7"
    assert (await client.get("/readyz")).status == 200

    # A PUT of the record itself keeps its other keys as they were.
    put = await client.put("/api/air/export/links/r", json={"param_run_id": "p7"})
    assert put.status == 200
    assert (await put.json())["param_run_id"] == "p7"
    written = tree.links.read_bytes()
    old = json.loads(content)["r"]
    new = json.loads(written)["r"]
    assert new["param_run_id"] == "p7" and isinstance(new["updated_at"], float)
    if isinstance(old, dict):
        for key in set(old) - {"param_run_id", "updated_at"}:
            assert repr(new[key]) == repr(old[key])
    assert (await client.get("/api/air/export/list/r")).status == 200
    assert (await (await client.get("/api/air/export/links/r")).json())["param_run_id"] == "p7"


def test_a_write_keeps_duplicates_unknown_keys_and_formatting_of_other_records(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "step_links.json",
        b'{ "a" :{"param_run_id":"p1"} , "r": {"param_run_id": "old", "k": [1,\n2]},'
        b' "a": {"param_run_id": "p2", "\\u00e9": "\\u00e9"},'
        b' "r": {"param_run_id": "older", "z": 1}}',
    )
    LinkStore(path).write_link("r", "new")
    text = path.read_text()
    assert '"a" :{"param_run_id":"p1"}' in text
    assert '"a": {"param_run_id": "p2", "\\u00e9": "\\u00e9"}' in text
    records = json.loads(text)
    assert records["a"] == {"param_run_id": "p2", "é": "é"}  # the parser keeps the last one
    assert records["r"]["param_run_id"] == "new"
    assert records["r"]["z"] == 1 and "k" not in records["r"]  # the record the parser saw
    assert text.count('"r"') == 1


# -- a links folder that cannot be written (issue 12 item 5) -------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str) -> Iterator[None]:
    """A tmpfs mounted at ``folder`` (root only; a visible skip elsewhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _files(folder: Path) -> dict[str, bytes]:
    """The folder's files and their content, but the lock file (which stays)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.endswith(".lock")}


async def _put_is_refused(client: TestClient[Any, Any], tree: AirTree, why: str) -> None:
    """PUT answers 503 links_file_unwritable naming ``why``; the file and its
    folder are as they were."""
    before = _files(tree.links.parent)
    response = await client.put("/api/air/export/links/r", json={"param_run_id": "p2"})
    assert response.status == 503
    detail = (await response.json())["detail"]
    assert detail["error"] == "links_file_unwritable"
    assert why in detail["message"]
    assert _files(tree.links.parent) == before
    assert (await (await client.get("/api/air/export/links/r")).json())["param_run_id"] == "p1"


async def test_a_read_only_links_folder_is_503_and_degraded(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    with _tmpfs(tree.links.parent, "size=1m"):
        tree.link({"r": {"param_run_id": "p1"}})
        remount = ["mount", "-o", "remount,ro", str(tree.links.parent)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        ready = await client.get("/readyz")
        assert ready.status == 200
        message = degraded(await ready.json())
        assert f"links.file: folder '{tree.links.parent}' is not writable" in message
        await _put_is_refused(client, tree, "Read-only file system")


async def test_a_full_links_folder_is_503_and_leaves_nothing_behind(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    with _tmpfs(tree.links.parent, "size=256k"):
        # A file of 200 KiB: the folder has room (ready), but not for its copy.
        tree.link({"r": {"param_run_id": "p1"}, "pad": {"x": "x" * 200 * 1024}})
        assert (await client.get("/readyz")).status == 200
        await _put_is_refused(client, tree, "No space left on device")
        filler = tree.links.parent / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        ready = await client.get("/readyz")
        assert ready.status == 200
        message = degraded(await ready.json())
        assert f"links.file: folder '{tree.links.parent}' is on a full file system" in message
        filler.unlink()


async def test_a_failing_write_is_503_and_leaves_nothing_behind(
    tree: AirTree, client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test above without a mount: ENOSPC from the temp file's fsync."""
    tree.link({"r": {"param_run_id": "p1"}})

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    await _put_is_refused(client, tree, "No space left on device")


# Runs the service as ``nobody`` when the tests run as root (as CI does), so
# that the links folder, owned by root, is not writable by the service.
_AS_NOBODY = """
import os, pwd, sys
from export_service.cli import main
if os.geteuid() == 0:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)
"""
_SERVE_AS_NOBODY = _AS_NOBODY + "sys.exit(main(sys.argv[1:]))\n"


def _packages_nobody_cannot_read() -> list[str]:
    """The folders of the packages the service imports as it runs that nobody
    may not enter: a checkout in a folder only root may enter (``mktemp -d``)
    leaves the service, once it is nobody, unable to import the rest of
    pydantic and aiohttp."""
    folders = [str(Path(module.__file__ or "").parent) for module in (pydantic, aiohttp)]
    check = "sys.exit(0 if os.access(sys.argv[1], os.R_OK | os.X_OK) else 1)"
    return [
        folder
        for folder in folders
        if subprocess.run([sys.executable, "-c", _AS_NOBODY + check, folder]).returncode
    ]


@pytest.mark.slow
def test_a_links_folder_the_service_cannot_write_is_503_and_degraded() -> None:
    if unreadable := _packages_nobody_cannot_read():
        pytest.skip(f"nobody, whom root's service runs as here, cannot read {unreadable}")
    with tempfile.TemporaryDirectory() as temp:
        base = Path(temp)
        base.chmod(0o755)
        for root in ("render", "midi", "param"):
            (base / root).mkdir()
        links = base / "links" / "step_links.json"
        write(links, json.dumps({"r": {"param_run_id": "p1"}}).encode())
        if os.geteuid() != 0:
            links.parent.chmod(0o555)
        port = free_port()
        env = {
            **os.environ,
            **{f"EXPORT_SERVICE_ROOTS_{k.upper()}": str(base / v) for k, v in ROOTS.items()},
            "EXPORT_SERVICE_LINKS_FILE": str(links),
            "EXPORT_SERVICE_SERVER_HOST": "127.0.0.1",
        }
        with tempfile.TemporaryFile("w+") as log:
            service = subprocess.Popen(
                [sys.executable, "-c", _SERVE_AS_NOBODY, "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                started = _wait_for(url + "/healthz", service)
                log.seek(0)
                assert started, log.read()
                ready = _request("GET", url + "/readyz")
                assert ready[0] == 200
                assert f"links.file: folder '{links.parent}' is not writable" in degraded(
                    json.loads(ready[1])
                )
                put = _request("PUT", url + "/api/air/export/links/r", b'{"param_run_id": "p2"}')
                assert put[0] == 503
                assert '"links_file_unwritable"' in put[1] and "Permission denied" in put[1]
                assert json.loads(links.read_text()) == {"r": {"param_run_id": "p1"}}
                assert sorted(p.name for p in links.parent.iterdir()) == ["step_links.json"]
            finally:
                service.terminate()
                service.wait(30)
            links.parent.chmod(0o755)


ROOTS = {"render": "render", "midi_generation": "midi", "param_generation": "param"}


def _wait_for(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=5).close()
            return True
        time.sleep(0.05)
    return False


def _request(method: str, url: str, body: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# -- a symbolic link as the links file (issue 12 item 6) -----------------------


@pytest.mark.parametrize("relative", [False, True])
async def test_a_put_writes_through_a_symbolic_link_to_its_target(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path, relative: bool
) -> None:
    target = write(tmp_path / "shared" / "real_links.json", b'{"r": {"param_run_id": "p1"}}')
    target.chmod(0o640)
    hop = tmp_path / "hop.json"  # a chain: links -> hop -> target
    hop.symlink_to(target)
    tree.links.parent.mkdir(parents=True)
    tree.links.symlink_to("../../../hop.json" if relative else hop)  # links: air/projects/output
    put = await client.put("/api/air/export/links/r2", json={"param_run_id": "p2"})
    assert put.status == 200
    assert tree.links.is_symlink() and hop.is_symlink()
    assert json.loads(target.read_text()) == {
        "r": {"param_run_id": "p1"},
        "r2": {"param_run_id": "p2", "updated_at": (await put.json())["updated_at"]},
    }
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert sorted(p.name for p in target.parent.iterdir()) == [
        "real_links.json",
        "real_links.json.lock",  # the lock lies beside the real file, shared by every path
    ]
    assert sorted(p.name for p in tree.links.parent.iterdir()) == ["step_links.json"]
    got = await client.get("/api/air/export/links/r2")
    assert (await got.json())["param_run_id"] == "p2"
    assert (await client.get("/readyz")).status == 200


async def test_a_dangling_symbolic_link_gets_its_target_created(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    target = tmp_path / "shared" / "real_links.json"
    target.parent.mkdir()
    tree.links.parent.mkdir(parents=True)
    tree.links.symlink_to(target)
    assert (await client.get("/readyz")).status == 200
    put = await client.put("/api/air/export/links/r", json={"param_run_id": "p1"})
    assert put.status == 200
    assert tree.links.is_symlink()
    assert json.loads(target.read_text())["r"]["param_run_id"] == "p1"


async def test_a_symbolic_link_whose_target_folder_is_missing_is_503_and_degraded(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    tree.links.parent.mkdir(parents=True)
    tree.links.symlink_to(tmp_path / "nowhere" / "real_links.json")
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert "whose folder does not exist" in degraded(await ready.json())
    put = await client.put("/api/air/export/links/r", json={"param_run_id": "p1"})
    assert put.status == 503
    detail = (await put.json())["detail"]
    assert detail["error"] == "links_file_unwritable"
    assert "No such file or directory" in detail["message"]
    assert tree.links.is_symlink() and not (tmp_path / "nowhere").exists()


# -- the AIR backend's helpers (issue 15 item 1) -------------------------------


@pytest.fixture
def links_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "output" / "step_links.json"
    monkeypatch.delenv("EXPORT_SERVICE_CONFIG", raising=False)
    monkeypatch.setenv("EXPORT_SERVICE_LINKS_FILE", str(path))
    return path


def test_the_helpers_strip_ids_and_ignore_empty_ones_as_the_backend_does(links_env: Path) -> None:
    assert get_param_for_render("r") is None
    link_param_to_render("  r \n", "\tp1 ")
    assert json.loads(links_env.read_text())["r"]["param_run_id"] == "p1"
    assert get_param_for_render(" r ") == "p1"
    before = links_env.read_bytes()
    for render, param in [
        ("", "p"),
        ("r", ""),
        ("  ", "p"),
        ("r", " \t"),
        (None, "p"),
        ("r", None),
    ]:
        link_param_to_render(render, param)  # type: ignore[arg-type]
    assert links_env.read_bytes() == before
    assert get_param_for_render("") is None
    assert get_param_for_render("   ") is None
    assert get_param_for_render(None) is None  # type: ignore[arg-type]


def test_get_param_for_render_returns_what_is_stored_as_the_backend_does(links_env: Path) -> None:
    write(
        links_env,
        json.dumps(
            {
                "padded": {"param_run_id": " p 1 "},
                "blank": {"param_run_id": "  "},
                "number": {"param_run_id": 5},
                "not_a_record": "p",
                "a/b": {"param_run_id": "../x"},
            }
        ).encode(),
    )
    assert get_param_for_render("padded") == " p 1 "
    assert get_param_for_render("blank") is None
    assert get_param_for_render("number") is None
    assert get_param_for_render("not_a_record") is None
    assert get_param_for_render("a/b") == "../x"  # the backend's rule: any non-blank string
    assert get_param_for_render("missing") is None


def test_the_helpers_keep_other_records_and_their_unknown_keys(links_env: Path) -> None:
    write(
        links_env, b'{"r": {"param_run_id": "old", "by": "ui", "n": 1e400}, "s": {"x": "\\ud800"}}'
    )
    link_param_to_render("r", "new")
    records = json.loads(links_env.read_text())
    assert records["r"]["param_run_id"] == "new" and records["r"]["by"] == "ui"
    assert records["s"] == {"x": "\ud800"}
    assert '"s": {"x": "\\ud800"}' in links_env.read_text()


@pytest.mark.parametrize("content", [b"{not json", b"[1]", b"", b'{"r": ' + DEEP + b"}"])
def test_the_helpers_leave_a_corrupt_file_untouched_and_do_not_raise(
    links_env: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    write(links_env, content)
    with caplog.at_level(logging.ERROR):
        link_param_to_render("r", "p")
        assert get_param_for_render("r") is None
    assert links_env.read_bytes() == content
    assert "links_file" not in caplog.text  # logged as a sentence, not an error code
    assert "link 'r' -> 'p' not written: the links file is unusable" in caplog.text
    assert sorted(p.name for p in links_env.parent.iterdir()) == [
        "step_links.json",
        "step_links.json.lock",
    ]


def test_the_helpers_log_instead_of_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("EXPORT_SERVICE_LINKS_FILE", raising=False)
    monkeypatch.delenv("EXPORT_SERVICE_CONFIG", raising=False)
    with caplog.at_level(logging.ERROR):
        link_param_to_render("r", "p")
        assert get_param_for_render("r") is None
    assert caplog.text.count("no links file: set EXPORT_SERVICE_LINKS_FILE") == 2
    caplog.clear()
    monkeypatch.setenv("EXPORT_SERVICE_CONFIG", str(tmp_path / "missing.toml"))
    with caplog.at_level(logging.ERROR):
        link_param_to_render("r", "p")
        assert get_param_for_render("r") is None
    assert caplog.text.count("does not exist") == 2
    caplog.clear()
    monkeypatch.setenv("EXPORT_SERVICE_LINKS_FILE", str(tmp_path / "a_file" / "step_links.json"))
    write(tmp_path / "a_file", b"")  # the links folder is a file
    with caplog.at_level(logging.ERROR):
        link_param_to_render("r", "p")
    assert "link 'r' -> 'p' not written: the links file cannot be written" in caplog.text
    with caplog.at_level(logging.ERROR):
        link_param_to_render(5, "p")  # type: ignore[arg-type]
    assert "link 5 -> 'p' not written" in caplog.text


def test_the_helpers_find_the_links_file_in_the_config(
    tree: AirTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        tmp_path / "config.toml",
        (
            f'[roots]\nrender = "{tree.render}"\nmidi_generation = "{tree.midi}"\n'
            f'param_generation = "{tree.param}"\n[links]\nfile = "{tree.links}"\n'
        ).encode(),
    )
    monkeypatch.delenv("EXPORT_SERVICE_LINKS_FILE", raising=False)
    monkeypatch.setenv("EXPORT_SERVICE_CONFIG", str(config))
    link_param_to_render("r", "p1")
    assert json.loads(tree.links.read_text())["r"]["param_run_id"] == "p1"
    assert get_param_for_render("r") == "p1"
    monkeypatch.setenv("EXPORT_SERVICE_LINKS_FILE", str(tmp_path / "other.json"))  # it wins
    assert get_param_for_render("r") is None


def test_importing_the_helpers_does_not_load_aiohttp() -> None:
    code = "import sys, export_service.links; print('aiohttp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


HELPER_PROCESSES, HELPER_THREADS, HELPER_LINKS, PUTS_PER_SERVICE = 2, 4, 40, 80


def _link_with_the_helper(path: str, process: int) -> None:
    """Run in a separate process, as the backend would: threads calling the helper."""
    os.environ["EXPORT_SERVICE_LINKS_FILE"] = path

    def writer(thread: int) -> None:
        for index in range(HELPER_LINKS):
            link_param_to_render(f"h_{process}_{thread}_{index}", f"p_{process}_{thread}_{index}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(HELPER_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _put_links(base_url: str, service: int) -> list[int]:
    statuses = []
    for index in range(PUTS_PER_SERVICE):
        status, _ = _request(
            "PUT",
            f"{base_url}/api/air/export/links/s_{service}_{index}",
            json.dumps({"param_run_id": f"q_{service}_{index}"}).encode(),
        )
        statuses.append(status)
    return statuses


@pytest.mark.parametrize("second_path", ["same", "symlink"])
@pytest.mark.slow
def test_backend_processes_and_two_services_writing_at_once_lose_nothing(
    tree: AirTree, tmp_path: Path, second_path: str
) -> None:
    """Issue 22 item 5: with the second service configured with a symbolic
    link to the file, each locked its own lock file and removed the other's
    live temp file as a dead writer's: 175 of 400 links lost, PUTs got 503."""
    tree.link({"kept": {"param_run_id": "p", "x": [1]}})
    env = {
        **{f"EXPORT_SERVICE_ROOTS_{k.upper()}": str(v) for k, v in tree_roots(tree).items()},
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
        "EXPORT_SERVICE_LOGGING_LEVEL": "WARNING",
    }
    second_env = dict(env)
    if second_path == "symlink":
        elsewhere = tmp_path / "elsewhere" / "links.json"
        elsewhere.parent.mkdir()
        elsewhere.symlink_to(tree.links)
        second_env["EXPORT_SERVICE_LINKS_FILE"] = str(elsewhere)
    context = multiprocessing.get_context("spawn")
    with live_service(env=env) as first, live_service(env=second_env) as second:
        backends = [
            context.Process(target=_link_with_the_helper, args=(str(tree.links), p))
            for p in range(HELPER_PROCESSES)
        ]
        for backend in backends:
            backend.start()
        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(_put_links, [first.base_url, second.base_url], [0, 1]))
        for backend in backends:
            backend.join(120)
            assert backend.exitcode == 0
        assert statuses == [[200] * PUTS_PER_SERVICE] * 2
        records = json.loads(tree.links.read_text())
        assert records.pop("kept") == {"param_run_id": "p", "x": [1]}
        expected = {
            f"h_{p}_{t}_{i}": f"p_{p}_{t}_{i}"
            for p in range(HELPER_PROCESSES)
            for t in range(HELPER_THREADS)
            for i in range(HELPER_LINKS)
        } | {f"s_{s}_{i}": f"q_{s}_{i}" for s in range(2) for i in range(PUTS_PER_SERVICE)}
        assert {key: record["param_run_id"] for key, record in records.items()} == expected
        for render_run_id in ("h_1_3_39", "s_0_79", "s_1_0"):  # each service reads them all
            for service in (first, second):
                status, body = _request(
                    "GET", f"{service.base_url}/api/air/export/links/{render_run_id}"
                )
                assert status == 200 and json.loads(body)["param_run_id"] == expected[render_run_id]
    assert sorted(p.name for p in tree.links.parent.iterdir()) == [
        "step_links.json",
        "step_links.json.lock",
    ]


def tree_roots(tree: AirTree) -> dict[str, Path]:
    return {"render": tree.render, "midi_generation": tree.midi, "param_generation": tree.param}


BACKEND_USE = """
import sys
sys.path.insert(0, sys.argv[1])
from app.air.export.links import get_param_for_render, link_param_to_render
link_param_to_render(" r ", "p1 ")
print(get_param_for_render("r"))
"""


@pytest.mark.parametrize("links_file_set", [False, True])
def test_the_docs_backend_module_uses_the_helpers(tmp_path: Path, links_file_set: bool) -> None:
    page = Path(__file__).parent.parent / "docs" / "how-to" / "backend.md"
    after = page.read_text().split("its `app/air/export/links.py` becomes these two", 1)[1]
    module = after.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(module.splitlines()) == 2
    write(tmp_path / "app" / "air" / "export" / "links.py", module.encode())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXPORT_SERVICE_")}
    chosen = tmp_path / "elsewhere" / "links.json"
    if links_file_set:
        env["EXPORT_SERVICE_LINKS_FILE"] = str(chosen)
    result = subprocess.run(
        [sys.executable, "-c", BACKEND_USE, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert result.stdout == "p1\n", result.stderr
    default = tmp_path / "app" / "air" / "projects" / "output" / "step_links.json"
    written = chosen if links_file_set else default
    assert json.loads(written.read_text())["r"]["param_run_id"] == "p1"
    assert not (default if links_file_set else chosen).exists()


def test_a_writer_deeper_in_its_stack_than_the_parse_refuses_instead_of_crashing(
    tmp_path: Path,
) -> None:
    depth = sys.getrecursionlimit() - 100
    content = b'{"r": {"param_run_id": "p1", "x": ' + b"[" * depth + b"]" * depth + b"}}"
    path = write(tmp_path / "step_links.json", content)
    store = LinkStore(path)
    assert store.valid_param_run_id("r") == "p1"  # parsed from a shallow stack

    def deep(frames: int) -> Any:
        return deep(frames - 1) if frames else store.write_link("r", "p2")

    with pytest.raises(LinksFileCorrupt, match="nests too deeply to be rewritten from here"):
        deep(200)
    assert path.read_bytes() == content
    assert store.write_link("r", "p2").param_run_id == "p2"  # from a shallow stack it works
    assert content[content.index(b"[") : content.rindex(b"]") + 1] in path.read_bytes()


async def test_a_links_folder_out_of_inodes_is_degraded(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    with _tmpfs(tree.links.parent, "size=1m,nr_inodes=8"):
        tree.link({"r": {"param_run_id": "p1"}})
        assert (await client.get("/readyz")).status == 200
        with contextlib.suppress(OSError):
            for index in range(100):
                (tree.links.parent / f"f{index}").touch()
        ready = await client.get("/readyz")
        assert ready.status == 200
        assert "is on a full file system" in degraded(await ready.json())
        await _put_is_refused(client, tree, "No space left on device")
        for leftover in tree.links.parent.glob("f*"):
            leftover.unlink()


def test_a_file_system_without_inode_counts_is_not_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """btrfs reports 0 inodes in total and 0 free: that is not a full disk."""
    real = os.statvfs(tmp_path)
    fields = [getattr(real, f"f_{name}") for name in STATVFS_FIELDS]
    fields[STATVFS_FIELDS.index("files")] = 0
    fields[STATVFS_FIELDS.index("ffree")] = 0
    fields[STATVFS_FIELDS.index("favail")] = 0
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(fields))
    assert LinkStore(tmp_path / "step_links.json").write_problem() is None


STATVFS_FIELDS = ["bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "favail"]
STATVFS_FIELDS += ["flag", "namemax"]


# -- what the links path can be (a FIFO, a device, a folder) ------------------


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "link to a fifo", "link to a device", "folder"])
async def test_a_links_path_that_is_no_regular_file_never_makes_a_request_wait(
    tree: AirTree, client: TestClient[Any, Any], tmp_path: Path, kind: str
) -> None:
    _param_tree(tree)
    tree.links.parent.mkdir(parents=True)
    if kind == "fifo":
        _fifo(tree.links)
    elif kind == "link to a fifo":
        tree.links.symlink_to(_fifo(tmp_path / "elsewhere" / "pipe"))
    elif kind == "link to a device":
        tree.links.symlink_to("/dev/zero")  # reading it never ends
    else:
        tree.links.mkdir()
    async with asyncio.timeout(10):
        answers = await _link_routes(client)
        put = await client.put("/api/air/export/links/r", json={"param_run_id": "p9"})
        put_body = await put.json()
    status, ready = answers["readyz"]
    assert status == 200 and "links.file: cannot be read (not a regular file" in degraded(ready)
    assert answers["manifest"] == (200, None)
    assert answers["zip"] == (200, ["render/r/mix.wav"])
    assert answers["get"][0] == 404
    assert put.status == 503
    assert put_body["detail"]["error"] == "links_file_corrupt"
    assert "not a regular file" in put_body["detail"]["message"]
    # and once the path is a file again, all is well
    if kind == "folder":
        tree.links.rmdir()
    else:
        tree.links.unlink()
    async with asyncio.timeout(10):
        put = await client.put("/api/air/export/links/r", json={"param_run_id": "p9"})
        assert put.status == 200
        assert (await client.get("/readyz")).status == 200
        manifest = await client.get("/api/air/export/list/r")
        assert (await manifest.json())["param_run_id"] == "p9"


async def test_a_fifo_as_lock_file_is_a_503_and_degraded(
    tree: AirTree, client: TestClient[Any, Any]
) -> None:
    _fifo(tree.links.with_name(tree.links.name + ".lock"))
    async with asyncio.timeout(10):
        put = await client.put("/api/air/export/links/r", json={"param_run_id": "p9"})
        ready = await client.get("/readyz")
    assert put.status == 503
    assert (await put.json())["detail"]["error"] == "links_file_unwritable"
    assert ready.status == 200
    assert "is not a regular file" in degraded(await ready.json())


# -- unusable values are reported once per change, never whole ----------------


async def test_unusable_link_values_are_reported_once_per_change_and_cut_short(
    tree: AirTree, client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    huge = "p" * 1_000_000
    records = {"r": {"param_run_id": huge}, "s": {"param_run_id": "\ud800"}}
    records |= {f"t{i}": {"param_run_id": "../../etc"} for i in range(5)}
    write(tree.render / "r" / "mix.wav", b"m")
    tree.link(records)
    caplog.set_level(logging.INFO, logger="export_service.links")
    for _ in range(10):
        for run in ("r", "s", "t0"):
            answer = await client.get(f"/api/air/export/list/{run}")
            assert answer.status == 200 and (await answer.json())["param_run_id"] is None
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "ignoring 7 record(s) that hold no usable link" in message
    assert "'r': its param_run_id 'pppp" in message and "(1000000 characters)" in message
    assert len(message) < 1000
    tree.link({**records, "u": {"param_run_id": "../x"}})  # a change: reported again
    assert (await client.get("/api/air/export/list/r")).status == 200
    assert len(caplog.records) == 2 and "ignoring 8 record(s)" in caplog.records[1].getMessage()


# -- the helpers refuse what the service would refuse --------------------------


def test_a_relative_links_file_is_refused_by_the_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXPORT_SERVICE_CONFIG", raising=False)
    monkeypatch.setenv("EXPORT_SERVICE_LINKS_FILE", "step_links.json")
    with caplog.at_level(logging.ERROR):
        link_param_to_render("r", "p")
        assert get_param_for_render("r") is None
    assert list(tmp_path.iterdir()) == []
    assert caplog.text.count("EXPORT_SERVICE_LINKS_FILE must be an absolute path") == 2


@pytest.mark.parametrize(
    ("render", "param", "why"),
    [
        ("a/b", "p", "render_run_id must not contain '/'"),
        ("r", "p\ud800", "param_run_id must not contain control characters"),
        ("r", "x" * 300, "param_run_id must be at most 200 characters"),
        ("r\x00", "p", "render_run_id must not contain control characters"),
        ("..", "p", "render_run_id must not be '.' or '..'"),
        ("r", "..\\x", "param_run_id must not contain '/'"),
    ],
)
def test_the_helpers_write_no_invalid_run_id(
    links_env: Path, caplog: pytest.LogCaptureFixture, render: str, param: str, why: str
) -> None:
    with caplog.at_level(logging.ERROR):
        link_param_to_render(render, param)
    assert not links_env.exists()
    assert why in caplog.text and len(caplog.text) < 500
    link_param_to_render("r", "p")  # a valid one still goes in
    assert json.loads(links_env.read_text()) == {"r": {"param_run_id": "p", "updated_at": ANY}}


# -- a bound on what is parsed (issue 22 item 6) --------------------------------


async def test_a_links_file_over_max_bytes_is_not_parsed_and_says_so(
    tree: AirTree, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 MB links file took 44 s to a first manifest, 5.6 GB of memory
    and held /healthz past its 3 s budget: over ``links.max_bytes`` the file
    is not read; manifests go on without links, a PUT is a 503, readiness
    names it, the log says it once per change of the file."""
    write(tree.render / "r" / "a.wav", b"a")
    write(tree.param / "p1" / "b.json", b"{}")
    tree.link({"r": {"param_run_id": "p1", "pad": "x" * 200}})
    size = tree.links.stat().st_size
    client = await make_client(links={"file": str(tree.links), "max_bytes": size - 1})
    with caplog.at_level(logging.ERROR, logger="export_service.links"):
        for _ in range(2):
            manifest = await client.get("/api/air/export/list/r")
            assert manifest.status == 200
            assert (await manifest.json())["param_run_id"] is None
        put = await client.put("/api/air/export/links/r", json={"param_run_id": "p2"})
        assert put.status == 503
        detail = (await put.json())["detail"]
        assert detail["error"] == "links_file_too_large"
        assert f"{size:,} bytes, over links.max_bytes ({size - 1:,})" in detail["message"]
        assert json.loads(tree.links.read_text())["r"]["param_run_id"] == "p1"  # untouched
        # Degraded, not unready (issue 21): exports go on without links, so the
        # backend's pod stays in rotation; the body and the log name the file.
        ready = await client.get("/readyz")
        assert ready.status == 200
        body = await ready.json()
        assert body["status"] == "degraded"
        assert any(
            problem.startswith("links.file: " + f"{size:,} bytes, over links.max_bytes")
            for problem in body["problems"]
        )
        assert (await client.get("/api/air/export/links/r")).status == 404
    unusable = [r for r in caplog.records if "is unusable" in r.getMessage()]
    assert len(unusable) == 1  # once for this content of the file, however often it is read
    assert "over links.max_bytes" in unusable[0].getMessage()
    tree.link({"r": {"param_run_id": "p1"}})  # back under the bound: used again
    manifest = await client.get("/api/air/export/list/r")
    assert (await manifest.json())["param_run_id"] == "p1"
    assert await (await client.get("/readyz")).json() == {"status": "ready"}


def test_a_links_file_of_exactly_max_bytes_is_parsed(tmp_path: Path) -> None:
    path = write(tmp_path / "step_links.json", b'{"r": {"param_run_id": "p"}}')
    store = LinkStore(path, max_bytes=path.stat().st_size)
    assert store.valid_param_run_id("r") == "p" and store.problem() is None


def test_a_write_leaves_other_writers_temp_files(tmp_path: Path) -> None:
    """A temp file is removed by another writer only when it is its own
    host's and its process is dead: a live writer that holds another lock
    (an older version, the file reached by a path locked elsewhere) or runs
    in another container keeps its temp file."""
    path = tmp_path / "step_links.json"
    host = socket.gethostname()
    alive = write(tmp_path / f".step_links.json.tmp-{host}-{os.getppid()}.abc")
    other_host = write(tmp_path / ".step_links.json.tmp-other-host-1.abc")
    unnamed = write(tmp_path / ".step_links.json.x1y2z3")  # an older version's name
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    gone = write(tmp_path / f".step_links.json.tmp-{host}-{dead.stdout.strip()}.abc")
    LinkStore(path).write_link("r", "p")
    assert alive.exists() and other_host.exists() and unnamed.exists()
    assert not gone.exists()
