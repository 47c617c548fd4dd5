"""The docs say what the code does, and their commands work as printed: the
site builds with warnings as errors, the reference parts generated from the
code cover it all, and the Quick start, the curl tour of the sample tree and
the CLI examples run (blocks marked ``<!-- check: KIND -->``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from export_service.config import Settings, env_var
from tests.docs_site import DOCS, REPO, hooks, marked_blocks, marked_kinds, pages
from tests.live import free_port, live_service

KINDS = {"quickstart", "tour", "cli"}


def _require(*commands: str) -> None:
    for command in commands:
        if shutil.which(command) is None:
            pytest.skip(f"{command} not installed")


def _bash(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _scripts(kind: str) -> list[tuple[Path, str]]:
    """The blocks marked ``kind``, one script per page: its blocks in order,
    as a reader runs them in one terminal (a later one may use an earlier
    one's variables or files)."""
    scripts: dict[Path, list[str]] = {}
    for page, block in marked_blocks(kind):
        scripts.setdefault(page, []).append(block)
    return [(page, "\n".join(blocks)) for page, blocks in scripts.items()]


# What a make running this suite (CI's `make test`) hands its children; a make
# started from a test would take itself for a sub-make (and print "Entering
# directory" lines around what it is asked for). `make test TEST_WORKERS=0`
# exports TEST_WORKERS too, which would change what `make -n test` prints.
_MAKE_VARIABLES = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "TEST_WORKERS")


def _clean_env() -> dict[str, str]:
    """The environment without the service's own variables or a make's that
    runs the suite, with the interpreter's scripts (export-service) first on
    the PATH: what a user's shell gives a command from the docs."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EXPORT_SERVICE_") and key not in _MAKE_VARIABLES
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_the_readme_stays_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_marked_block_is_of_a_kind_the_tests_run() -> None:
    assert marked_kinds() == KINDS


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    _require("dot")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr
    configuration = (tmp_path / "reference" / "configuration.html").read_text()
    assert "EXPORT_SERVICE_LIMITS_MAX_FILES_PER_EXPORT" in configuration
    assert "so a typo never" in configuration  # config.example.toml, included
    assert "<svg" in (tmp_path / "diagrams" / "request-paths.svg").read_text()
    for page in tmp_path.rglob("*.html"):
        assert "<!-- generated:" not in page.read_text(), page


def test_each_generated_part_is_asked_for_by_a_page() -> None:
    asked = {match[1] for page in pages() for match in hooks().MARKER.finditer(page.read_text())}
    assert asked == set(hooks().GENERATORS)


def test_an_unknown_generated_part_fails_the_build() -> None:
    with pytest.raises(ValueError, match="unknown generated part 'nope'"):
        hooks().generated("<!-- generated: nope -->\n")


def test_the_configuration_reference_has_every_key_of_the_model_and_the_example() -> None:
    rows = {key: variable for key, _, _, _, variable, _ in hooks().config_keys()}
    model = {
        f"{section}.{key}": env_var(section, key)
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    }
    assert rows == model
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    assert set(rows) == {f"{section}.{key}" for section, keys in example.items() for key in keys}
    text = hooks().config_markdown()
    assert "- **`limits.io_threads`**: integer, >= 1, <= 256; default `8`; environment" in text
    assert "`EXPORT_SERVICE_SERVER_PORT`" in text


def test_a_key_without_a_description_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    field = Settings.model_fields["server"].annotation.model_fields["port"]  # type: ignore[union-attr]
    monkeypatch.setattr(field, "description", None)
    with pytest.raises(ValueError, match=r"server\.port has no description"):
        hooks().config_markdown()


def test_the_cli_reference_has_every_command() -> None:
    text = hooks().cli_markdown()
    _, commands = hooks().cli_parsers()
    assert set(commands) == {
        "serve",
        "manifest",
        "zip",
        "link",
        "check-links",
        "healthcheck",
        "check-config",
        "sign-url",
    }
    for name, sub in commands.items():
        assert f"### `export-service {name}`" in text
        assert (sub.description or "").split(".")[0][:40] in text.replace("\n", " ")


async def test_the_api_reference_is_made_from_the_document_the_service_serves(
    client: TestClient[Any, Any],
) -> None:
    served = await (await client.get("/api/air/export/openapi.json")).json()
    generated = hooks().openapi_document()
    assert generated["paths"].keys() == served["paths"].keys()
    assert generated["components"] == served["components"]
    text = hooks().openapi_markdown()
    for path, operations in served["paths"].items():
        for method in operations:
            assert f"### {method.upper()} `{path}`" in text


def test_the_log_reference_names_every_field_a_line_carries() -> None:
    fields = hooks().record_fields()
    assert {"time", "level", "logger", "message", "request_id", "exception"} == set(fields)
    text = hooks().log_fields_markdown()
    for field in ("duration_ms", "ended", "cut_short", "client_gone", "rejected"):
        assert f"`{field}`" in text


def test_the_diagrams_render_offline() -> None:
    _require("dot")
    sources = sorted((DOCS / "diagrams").glob("*.dot"))
    assert {source.stem for source in sources} >= {
        "request-paths",
        "deployment-sidecar",
        "deployment-scale-out",
        "deployment-nginx",
    }
    for source in sources:
        assert hooks().render_diagram(source).lstrip().startswith(b"<?xml")


def _wait_for(url: str, process: subprocess.Popen[str]) -> bytes | None:
    """The body of ``url`` once the process that serves it answers; None
    if it exits or nothing answers in time."""
    deadline = time.monotonic() + 120  # make run may first install the package
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                body: bytes = answer.read()
                return body
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                return None
            time.sleep(0.05)


def test_the_quick_start_runs() -> None:
    """``make run`` serves the sample tree (on a free port here, through the
    environment) until SIGTERM; ``make test`` runs pytest, which CI runs
    through it."""
    _require("make")
    readme = [block for page, block in marked_blocks("quickstart") if page.name == "README.md"]
    assert len(readme) == 1
    commands = [line.split("#")[0].strip() for line in readme[0].splitlines()]
    assert commands == ["make run", "make test"]
    assert all(block == readme[0] for _, block in marked_blocks("quickstart"))
    if subprocess.run(["make", "-q", ".venv/.installed"], cwd=REPO, env=_clean_env()).returncode:
        pytest.skip(".venv is missing or older than pyproject.toml: run make .venv/.installed")
    dry = subprocess.run(
        ["make", "-n", "test"], cwd=REPO, env=_clean_env(), capture_output=True, text=True
    )
    assert dry.stdout.strip() == ".venv/bin/python -m pytest -n 3 --dist loadgroup"
    port = free_port()
    env = {**_clean_env(), "EXPORT_SERVICE_SERVER_PORT": str(port)}
    # Its output through a pipe, read once make and the service it runs have
    # both exited (the pipe ends then): the service removes its sample tree
    # before it exits, and the run's temporary folder must be left empty.
    process = subprocess.Popen(
        ["make", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        manifest = _wait_for(f"http://127.0.0.1:{port}/api/air/export/list/rnd_7f3a9c", process)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # make and the service it runs
        output = process.communicate(timeout=30)[0]
    assert manifest is not None, f"nothing answered on port {port}: {output}"
    assert manifest.startswith(b'{"render_run_id":"rnd_7f3a9c"')
    assert "Traceback" not in output


@pytest.mark.slow
def test_the_tour_runs_against_the_sample_tree(tmp_path: Path) -> None:
    """Each page's curl lines, as printed but for the port, against
    ``export-service serve`` on the sample tree, each page in a folder of
    its own."""
    _require("curl", "unzip")
    assert len(marked_blocks("tour")) >= 6
    outputs = []
    with live_service() as service:
        port = service.base_url.rsplit(":", 1)[1]
        for page, script in _scripts("tour"):
            folder = tmp_path / page.stem
            folder.mkdir()
            done = _bash(script.replace(":8080", f":{port}"), folder, _clean_env())
            assert done.returncode == 0, f"{page.name}:\n{script}\n{done.stdout}{done.stderr}"
            outputs.append(done.stdout)
    text = "".join(outputs)
    assert "HTTP/1.1 304 Not Modified" in text
    assert '"error":"invalid_run_id"' in text
    assert '"error":"invalid_steps"' in text and '"error":"invalid_prefix"' in text
    assert "No errors detected in compressed data of export_rnd_7f3a9c.zip." in text
    assert "No errors detected in compressed data of export.zip." in text


@pytest.mark.slow
def test_the_cli_examples_run(tmp_path: Path) -> None:
    """The CLI examples as printed: from the checkout, whose .venv they
    activate, in the empty folder they make (under ``tmp_path``, by way of
    TMPDIR), with none of the service's variables set."""
    _require("unzip")
    if not (REPO / ".venv" / "bin" / "export-service").exists():
        pytest.skip(".venv has no export-service: run make .venv/.installed")
    outputs = []
    for page, script in _scripts("cli"):
        done = _bash(script, REPO, {**_clean_env(), "TMPDIR": str(tmp_path)})
        assert done.returncode == 0, f"{page.name}:\n{script}\n{done.stdout}{done.stderr}"
        outputs.append(done.stdout + done.stderr)
    text = "".join(outputs)
    assert '"param_run_id":"prm_1"' in text and "render/rnd_1/mix.wav" in text
    assert '"files":[{"step":"render","rel_path":"rnd_1/stems/bass.wav"' in text
    assert "midi_generation/20261101_100900_rnd_1/track.mid" in text
    assert '"lost": 0' in text and '"write_problem": null' in text
    assert "EXPORT_SERVICE_SERVER_PORT: Input should be a valid integer" in text
    assert "EXPORT_SERVICE_SERVER_PROT: unknown variable (did you mean" in text
    assert "-o no-such-folder/export.zip: the folder 'no-such-folder' does not exist" in text
    assert text.count("exit 2") == 3
    assert not list(REPO.glob("air")), "the examples wrote into the checkout"
