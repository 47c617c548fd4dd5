"""The lowest version of each dependency the pyproject files allow, as pip
constraints, one ``name==version`` a line (markers kept): ``make test-lowest``
installs with them and runs the suite (docs/development.md, "Testing at the
lowest versions").

    python3 tests/lowest_versions.py pyproject.toml clients/backend/pyproject.toml

Every requirement counts: the build system's, the project's and each extra's
(the self-reference ``export-service[fastapi,docs]`` brings nothing of its
own). Each must name its lowest version (``>=``, ``~=`` or ``==``): a
requirement without one is refused, as is a package two files bound below
differently (clients/backend shares the service's bounds). Transitive
dependencies stay unconstrained (pip picks the newest they allow), as with
uv's ``--resolution lowest-direct``. Standard library only: it runs with the
machine's python3 before any venv exists.
"""

import re
import sys
import tomllib
from pathlib import Path

# PEP 508, as the pyproject files write it: name, [extras], specifiers, ; marker.
REQUIREMENT = re.compile(
    r"\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?"
    r"\s*(?P<specifiers>[^;]*?)\s*(?:;\s*(?P<marker>.+?))?\s*$"
)
LOWEST = re.compile(r"(?:>=|~=|==)\s*(?P<version>[0-9][A-Za-z0-9.+!-]*)$")


def canonical(name: str) -> str:
    """The name as the index knows it (PEP 503): pyyaml for PyYAML."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: dict[str, object]) -> list[str]:
    """The build system's, the project's and every extra's requirements,
    without the project's references to itself."""
    build = pyproject.get("build-system", {})
    project = pyproject.get("project", {})
    assert isinstance(build, dict) and isinstance(project, dict)
    found = [*build.get("requires", []), *project.get("dependencies", [])]
    for extra in project.get("optional-dependencies", {}).values():
        found.extend(extra)
    own = canonical(project.get("name", ""))
    return [line for line in found if canonical(_parse(line)["name"]) != own]


def _parse(requirement: str) -> dict[str, str]:
    match = REQUIREMENT.fullmatch(requirement)
    if match is None:
        raise SystemExit(f"cannot read the requirement {requirement!r}")
    return {key: value or "" for key, value in match.groupdict().items()}


def lowest(requirement: str) -> tuple[str, str]:
    """(canonical name, ``name==version`` with the marker) for one
    requirement; SystemExit when it names no lowest version."""
    parts = _parse(requirement)
    versions = [
        found["version"]
        for specifier in parts["specifiers"].split(",")
        if (found := LOWEST.match(specifier.strip()))
    ]
    if len(versions) != 1:
        raise SystemExit(f"{requirement!r}: name its lowest version once (>=, ~= or ==)")
    name = canonical(parts["name"])
    marker = f"; {parts['marker']}" if parts["marker"] else ""
    return name, f"{name}=={versions[0]}{marker}"


def constraints(paths: list[Path]) -> list[str]:
    """One constraint per package, sorted; SystemExit when two files bound
    the same package below differently."""
    chosen: dict[str, tuple[str, Path]] = {}
    for path in paths:
        for requirement in requirements(tomllib.loads(path.read_text())):
            name, line = lowest(requirement)
            if name in chosen and chosen[name][0] != line:
                raise SystemExit(
                    f"{name}: {chosen[name][1]} allows {chosen[name][0]!r} at the lowest,"
                    f" {path} {line!r}: give both the same lower bound"
                )
            chosen[name] = (line, path)
    return sorted(line for line, _ in chosen.values())


if __name__ == "__main__":
    print("\n".join(constraints([Path(argument) for argument in sys.argv[1:]])))
