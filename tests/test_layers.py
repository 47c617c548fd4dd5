"""The layers of the layout table (docs/explanation/architecture.md, "The
layers") hold: each module, imported alone in a fresh process, loads only
what its row says it may import, and the table names exactly the modules of
the package; and each module has its mirror test file, which imports it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import export_service

LAYERS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "explanation" / "architecture.md"
PACKAGE = Path(export_service.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent
ROW = re.compile(r"\| `(\w+)\.py` \| [^|]+ \| ([^|]+?) \|")
ANY = "all layers"  # the HTTP layer's cell: it may import any module

# The modules issue 16 puts in the domain, whatever the table says.
DOMAIN_BY_DESIGN = {
    "errors",
    "config",
    "cpus",
    "run_ids",
    "descriptors",
    "safe_files",
    "scanning",
    "urls",
    "links",
    "manifest",
    "names",
    "archive",
    "exports",
    "sample",
}

# The backend's proxy relays with aiohttp's client (the light install brings
# aiohttp, never the server's other dependencies); it must not load aiohttp's
# server (aiohttp.web).
AIOHTTP_CLIENT_ONLY = {"fastapi_proxy"}

# Forks once per module, so each import starts from the same clean process
# (one interpreter start for all of them); prints what each one loaded.
_IMPORT_EACH = """
import importlib, json, os, sys

loaded = {}
for name in sys.argv[1:]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            importlib.import_module(name)
            found = sorted(
                module for module in sys.modules
                if module.partition(".")[0] in ("aiohttp", "export_service")
            )
        except BaseException as error:
            found = ["import failed: " + repr(error)]
        with os.fdopen(write_end, "w") as writer:
            writer.write(json.dumps(found))
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        loaded[name] = json.loads(reader.read())
    os.waitpid(pid, 0)
print(json.dumps(loaded))
"""


def _table() -> dict[str, str]:
    """Module name -> its "may import" cell, from the docs' layout table."""
    return {name: cell for name, cell in ROW.findall(LAYERS_PAGE.read_text())}


def _module(name: str) -> str:
    return "export_service" if name == "__init__" else f"export_service.{name}"


def _allowed(table: dict[str, str], name: str) -> set[str] | None:
    """The service's modules ``name`` may load (besides itself and the
    package); None when it may load any."""
    cell = table[name]
    if cell == ANY:
        return None
    if cell == "domain":
        return {_module(other) for other, kind in table.items() if kind == "domain"}
    if cell == "nothing of the service":
        return set()
    assert re.fullmatch(r"`\w+`(?:, `\w+`)*", cell), f"{name}: unknown 'may import' cell {cell!r}"
    return {_module(other) for other in re.findall(r"`(\w+)`", cell)}


@cache
def _loaded() -> dict[str, list[str]]:
    """What importing each checked module alone loads: the service's modules
    and aiohttp's."""
    table = _table()
    checked = [_module(name) for name, cell in table.items() if cell != ANY]
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, *checked],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded: dict[str, list[str]] = json.loads(done.stdout)
    return loaded


def test_the_table_names_every_module_of_the_package_and_no_other() -> None:
    on_disk = {path.stem for path in PACKAGE.glob("*.py")}
    assert set(_table()) == on_disk


def test_every_module_has_its_mirror_test_file() -> None:
    """tests/test_<module>.py for each module, the package's ``__init__`` and
    ``__main__`` aside: a new module comes with its tests."""
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert "zip_response" in modules  # the glob found the package's modules
    missing = sorted(name for name in modules if not (TESTS / f"test_{name}.py").is_file())
    assert missing == [], f"modules without tests/test_<module>.py: {missing}"


def _imported(test_file: Path) -> set[str]:
    """The service's modules a test file imports, in any of the forms
    ``import export_service.m``, ``from export_service.m import ...`` and
    ``from export_service import m``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(test_file.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "export_service":
            found.update(f"export_service.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.slow
def test_every_mirror_imports_its_module() -> None:
    """A mirror that does not import its module tests something else (as
    test_errors once tested app.py's middleware)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    astray = sorted(
        name
        for name in modules
        if (TESTS / f"test_{name}.py").is_file()
        and _module(name) not in _imported(TESTS / f"test_{name}.py")
    )
    assert astray == [], f"tests/test_<module>.py files that do not import their module: {astray}"


def test_the_modules_designed_as_domain_are_domain_in_the_table() -> None:
    table = _table()
    assert {name: table[name] for name in DOMAIN_BY_DESIGN & set(table)} == {
        name: "domain" for name in DOMAIN_BY_DESIGN & set(table)
    }


@pytest.mark.parametrize("name", sorted(name for name, cell in _table().items() if cell != ANY))
@pytest.mark.slow
def test_a_module_loads_only_what_its_layer_may_import(name: str) -> None:
    allowed = _allowed(_table(), name)
    assert allowed is not None
    module = _module(name)
    loaded = set(_loaded()[module])
    assert not any(found.startswith("import failed") for found in loaded), loaded
    if name in AIOHTTP_CLIENT_ONLY:
        assert not {found for found in loaded if found.startswith("aiohttp.web")}, module
    else:
        assert "aiohttp" not in loaded, f"{module} loads aiohttp"
    service_modules = {found for found in loaded if found.startswith("export_service")}
    assert service_modules - {"export_service", module} <= allowed, sorted(
        service_modules - allowed
    )


def test_logs_loads_no_other_module_of_the_service_and_metrics_only_logs() -> None:
    assert _loaded()["export_service.logs"] == ["export_service", "export_service.logs"]
    assert _loaded()["export_service.metrics"] == [
        "export_service",
        "export_service.logs",
        "export_service.metrics",
    ]
