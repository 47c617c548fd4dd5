"""The deployment files: Kubernetes manifests valid (kubernetes-validate
--strict), compose valid (docker-compose config), and each leaving the service
the time its shutdown takes (the grace plus 2 s)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from export_service.config import settings_from_mapping
from export_service.shutdown import CANCEL_WAIT_SECONDS

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
EXIT_AFTER_GRACE = 2.0  # the service exits within the grace plus this (tests/test_shutdown.py)
SERVICE_UID = 10001


def _validator() -> str:
    found = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("kubernetes-validate is not installed (dev extra)")
    return found


def _documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def _grace(config_toml: str) -> float:
    data = tomllib.loads(config_toml)
    data["server"]["require_roots"] = False
    return settings_from_mapping(data).server.shutdown_grace_seconds


def test_there_are_two_manifests() -> None:
    assert {path.name for path in MANIFESTS} == {"sidecar.yaml", "scale-out.yaml"}


def test_manifests_are_valid_in_strict_mode() -> None:
    result = subprocess.run(
        [_validator(), "--strict", *MANIFESTS], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == sum(
        len(_documents(path)) for path in MANIFESTS
    )


def test_strict_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        (REPO / "deploy/kubernetes/sidecar.yaml")
        .read_text()
        .replace("terminationGracePeriodSeconds", "terminationGracePeriodSecond")
    )
    result = subprocess.run(
        [_validator(), "--strict", broken], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda path: path.name)
def test_manifest_config_is_valid_and_the_pod_outlives_the_shutdown(manifest: Path) -> None:
    documents = _documents(manifest)
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    grace = _grace(config_map["data"]["config.toml"])
    for deployment in (d for d in documents if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > grace + EXIT_AFTER_GRACE
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == SERVICE_UID
        containers = pod.get("initContainers", []) + pod["containers"]
        (service,) = [c for c in containers if c["name"] == "export-service"]
        assert service["securityContext"]["readOnlyRootFilesystem"] is True
        assert service["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert service["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert service["resources"]["limits"]["cpu"]
        if service in pod.get("initContainers", []):
            assert service["restartPolicy"] == "Always"  # a native sidecar
        writable = [m for m in service["volumeMounts"] if not m.get("readOnly")]
        assert "/data/air/projects/output" in {m["mountPath"] for m in writable}


def test_compose_leaves_room_for_the_shutdown_and_owns_the_links_folder() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grace = _grace((REPO / "deploy" / "config.toml").read_text())
    service = compose["services"]["export-service"]
    stop_grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert stop_grace is not None
    assert int(stop_grace.group(1)) > grace + EXIT_AFTER_GRACE + CANCEL_WAIT_SECONDS
    assert service["healthcheck"]["test"] == ["CMD", "export-service", "healthcheck"]
    init = compose["services"]["links-folder"]
    assert f"chown {SERVICE_UID}:{SERVICE_UID} /data/air/projects/output" in init["entrypoint"][-1]
    assert service["depends_on"]["links-folder"]["condition"] == "service_completed_successfully"
    assert f"--uid {SERVICE_UID}" in (REPO / "Dockerfile").read_text()


def test_compose_file_is_valid() -> None:
    command = shutil.which("docker-compose")
    if command is None:
        pytest.skip("docker-compose is not installed (Debian: apt-get install docker-compose)")
    result = subprocess.run(
        [command, "-f", REPO / "docker-compose.yml", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
