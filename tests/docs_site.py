"""The docs, for the tests that keep them true: the mkdocs hook module
(docs/hooks.py, which generates the reference parts) and the commands the
pages mark as runnable."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"

# A fenced block right after "<!-- check: KIND -->" is run by tests/test_docs.py.
_MARKED = re.compile(r"^<!-- check: (\w+) -->\n```\w*\n(.*?)^```$", re.M | re.S)


@cache
def hooks() -> ModuleType:
    """docs/hooks.py, imported as mkdocs imports it (from its path)."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    """README.md and every page of the site."""
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def marked_blocks(kind: str) -> list[tuple[Path, str]]:
    """(page, block) of every block marked ``kind``, in page order."""
    found = []
    for page in pages():
        for marked_kind, block in _MARKED.findall(page.read_text()):
            if marked_kind == kind:
                found.append((page, block))
    return found


def marked_kinds() -> set[str]:
    return {kind for page in pages() for kind, _ in _MARKED.findall(page.read_text())}
