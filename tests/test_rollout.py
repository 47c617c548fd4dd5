"""The backend's switch to the service's links helpers (docs/how-to/backend.md,
"Switching the backend's links writer without losing a link"): its old
writer takes no lock, so old and new writers running at once lose links;
stopping every old writer before the first new one starts loses none, and
``export-service check-links --since`` shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import AirTree

pytestmark = pytest.mark.slow  # each test runs processes (the CLI, writers)

# The backend's own helper before the switch, as it wrote step_links.json:
# read, modify, write a temp file, rename; no lock. It writes links until the
# file STOP exists (so that it overlaps the whole run of the new writer).
OLD_WRITER = """
import json, os, sys, time
path, stop = sys.argv[1], sys.argv[2]
sys.stdin.readline()  # wait for the go
count = 0
while count == 0 or not os.path.exists(stop):
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        data = {}
    data[f"old-{count}"] = {"param_run_id": f"p-old-{count}", "updated_at": time.time()}
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w") as handle:
        json.dump(data, handle)
    os.replace(temp, path)
    count += 1
print(count)
"""

# The backend after the switch: export_service.links' drop-in helper.
NEW_WRITER = """
import sys
from export_service.links import link_param_to_render
name, count = sys.argv[1], int(sys.argv[2])
sys.stdin.readline()  # wait for the go
for index in range(count):
    link_param_to_render(f"{name}-{index}", f"p-{name}-{index}")
"""


def _start(script: str, *arguments: str, links: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "EXPORT_SERVICE_LINKS_FILE": str(links)},
    )


def _go(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def _finish(process: subprocess.Popen[str]) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0
    return out


def check_links(*arguments: str | Path) -> tuple[int, dict[str, object]]:
    """``export-service check-links``, as an operator runs it."""
    command = shutil.which("export-service", path=str(Path(sys.executable).parent))
    assert command, f"export-service is not installed beside {sys.executable}"
    result = subprocess.run(
        [command, "check-links", *map(str, arguments)], capture_output=True, text=True, timeout=60
    )
    report: dict[str, object] = json.loads(result.stdout)
    return result.returncode, report


def _present(links: Path) -> set[str]:
    return set(json.loads(links.read_text()))


def test_old_and_new_writers_at_once_lose_links(tree: AirTree, tmp_path: Path) -> None:
    """What the switch must avoid: a rolling update, old and new backend
    processes writing side by side. The new writer locks; the old one
    neither takes the lock nor sees it, and writes back what it read before
    the new writer's rename."""
    tree.links.parent.mkdir(parents=True)
    stop = tmp_path / "stop"
    old = _start(OLD_WRITER, str(tree.links), str(stop), links=tree.links)
    new = _start(NEW_WRITER, "new", "150", links=tree.links)
    _go(old, new)
    _finish(new)
    stop.touch()
    old_count = int(_finish(old))
    written = {f"new-{i}" for i in range(150)} | {f"old-{i}" for i in range(old_count)}
    lost = written - _present(tree.links)
    assert len(lost) > 0  # the reproduction: 259 of 300 were lost on the backend's replica
    print(f"old and new writers at once: {len(lost)} of {len(written)} links lost")


def test_the_documented_order_loses_nothing(tree: AirTree, tmp_path: Path) -> None:
    """The documented order: stop every old writer, check the file and keep a
    copy, start the new writers (any number at once: they lock), then check
    against the copy."""
    tree.links.parent.mkdir(parents=True)
    stop = tmp_path / "stop"
    stop.touch()  # the old backend writes one link, then it is stopped
    old = _start(OLD_WRITER, str(tree.links), str(stop), links=tree.links)
    _go(old)
    assert int(_finish(old)) == 1

    status, report = check_links(tree.links)
    assert (status, report["problem"], report["links"]) == (0, None, 1)
    copy = tmp_path / "step_links.before-switch.json"
    shutil.copy2(tree.links, copy)

    workers = [_start(NEW_WRITER, f"w{n}", "150", links=tree.links) for n in range(2)]
    _go(*workers)
    for worker in workers:
        _finish(worker)

    status, report = check_links(tree.links, "--since", copy)
    assert status == 0, report
    assert report["links"] == 301
    assert report["since"] == {
        "path": str(copy),
        "links": 1,
        "lost": 0,
        "changed": 0,
        "lost_examples": [],
    }
    assert _present(tree.links) == {"old-0"} | {f"w{n}-{i}" for n in range(2) for i in range(150)}


def test_check_links_fails_on_a_lost_link_and_a_corrupt_file(tree: AirTree, tmp_path: Path) -> None:
    tree.links.parent.mkdir(parents=True)
    tree.links.write_text('{"a": {"param_run_id": "p1"}, "b": {"param_run_id": "../x"}}')
    status, report = check_links(tree.links)
    assert (status, report["links"], report["ignored"]) == (0, 1, 1)
    copy = tmp_path / "copy.json"
    shutil.copy2(tree.links, copy)
    tree.links.write_text('{"b": {"param_run_id": "p2"}}')
    status, report = check_links(tree.links, "--since", copy)
    assert status == 1
    assert report["since"] == {
        "path": str(copy),
        "links": 2,
        "lost": 1,
        "changed": 1,
        "lost_examples": ["a"],
    }
    tree.links.write_text('{"a": ')  # cut short by a writer that crashed mid-write
    status, report = check_links(tree.links)
    assert status == 1 and str(report["problem"]).startswith("not valid JSON")


def test_check_links_counts_and_names_every_record_it_ignores(tree: AirTree) -> None:
    """A record that is no object was neither counted nor named (links 0,
    ignored 0, problem null). Ignored records do not fail the check: no
    reader uses them (the backend's helper passes over them too) and every
    writer keeps them as they are."""
    tree.links.parent.mkdir(parents=True)
    tree.links.write_text(
        '{"r1": "20260101_000000_p1", "r2": {"updated_at": 1}, "r3": {"param_run_id": 5},'
        ' "r4": {"param_run_id": "../x"}, "r5": {"param_run_id": "p5"}}'
    )
    status, report = check_links(tree.links)
    assert (status, report["links"], report["ignored"], report["problem"]) == (0, 1, 4, None)
    assert report["ignored_examples"] == [
        {"render_run_id": "r1", "why": "the record is a string, not an object"},
        {"render_run_id": "r2", "why": "the record has no param_run_id"},
        {"render_run_id": "r3", "why": "its param_run_id is a number, not a string"},
        {"render_run_id": "r4", "why": "its param_run_id '../x' must not contain '/' or '\\'"},
    ]
