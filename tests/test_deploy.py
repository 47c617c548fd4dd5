"""The deployment files: Kubernetes manifests valid (kubernetes-validate
--strict), compose valid (docker-compose config), and each leaving the service
the time its shutdown takes (the grace plus 2 s)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from export_service.config import settings_from_mapping
from export_service.http.shutdown import CANCEL_WAIT_SECONDS
from tests.live import free_port, live_service

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
LAYOUTS = [path for path in MANIFESTS if path.name in ("sidecar.yaml", "scale-out.yaml")]
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


def test_there_are_two_layouts_and_their_shared_claim() -> None:
    assert {path.name for path in MANIFESTS} == {"sidecar.yaml", "scale-out.yaml", "air-data.yaml"}


@pytest.mark.slow
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


def _config_text(documents: list[dict[str, Any]]) -> str:
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap"]
    text: str = config_map["data"]["config.toml"]
    return text


def _service_config(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return tomllib.loads(_config_text(documents))


def _all_pods(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in documents if d["kind"] == "Deployment"]


def _pods(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods that run the service (the sidecar's, the scale-out replicas')."""
    return [
        pod
        for pod in _all_pods(documents)
        if any(c["name"] == "export-service" for c in _containers(pod))
    ]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = pod.get("initContainers", []) + pod["containers"]
    return containers


def _service(pod: dict[str, Any]) -> dict[str, Any]:
    (service,) = [c for c in _containers(pod) if c["name"] == "export-service"]
    return service


def _probe_problems(pod: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Why the service's probes could not reach it. The kubelet sends an
    httpGet probe to the pod's IP: a service listening on loopback only
    refuses it. An exec probe runs ``export-service healthcheck`` in the
    container, which asks the port its config names on this host."""
    service = _service(pod)
    host = config["server"].get("host", "127.0.0.1")
    port = config["server"].get("port", 8080)
    ports = {p.get("name"): p["containerPort"] for p in service.get("ports", [])}
    env = {e["name"]: e.get("value") for e in service.get("env", [])}
    problems = []
    for kind, live in (("startupProbe", True), ("livenessProbe", True), ("readinessProbe", False)):
        probe = service[kind]
        if "httpGet" in probe:
            get = probe["httpGet"]
            if host not in ("0.0.0.0", "::"):
                problems.append(
                    f"{kind}: httpGet goes to the pod's IP, the service listens on {host}"
                )
            if ports.get(get["port"], get["port"]) != port:
                problems.append(f"{kind}: port {get['port']}, the service listens on {port}")
            if get["path"] != ("/healthz" if live else "/readyz"):
                problems.append(f"{kind}: path {get['path']}")
        elif "exec" in probe:
            expected = ["export-service", "healthcheck", *(["--live"] if live else [])]
            if probe["exec"]["command"] != expected:
                problems.append(f"{kind}: runs {probe['exec']['command']}, not {expected}")
            config_dirs = {
                m["mountPath"]
                for m in service["volumeMounts"]
                for v in pod["volumes"]
                if v["name"] == m["name"] and "configMap" in v
            }
            if env.get("EXPORT_SERVICE_CONFIG") not in {f"{d}/config.toml" for d in config_dirs}:
                problems.append(f"{kind}: healthcheck would not find the ConfigMap's config")
        else:
            problems.append(f"{kind}: neither httpGet nor exec")
    return problems


@pytest.mark.parametrize("manifest", LAYOUTS, ids=lambda path: path.name)
def test_manifest_config_is_valid_and_the_pod_is_safe(manifest: Path) -> None:
    documents = _documents(manifest)
    config = _service_config(documents)
    for pod in _pods(documents):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["fsGroup"] == SERVICE_UID
        service = _service(pod)
        assert service["securityContext"]["readOnlyRootFilesystem"] is True
        assert service["resources"]["limits"]["cpu"]
        if service in pod.get("initContainers", []):
            assert service["restartPolicy"] == "Always"  # a native sidecar
        writable = [m for m in service["volumeMounts"] if not m.get("readOnly")]
        assert "/data/air/projects/output" in {m["mountPath"] for m in writable}
        assert _probe_problems(pod, config) == []
        for container in pod["containers"]:  # the backend calls the port the service has
            urls = [
                e["value"] for e in container.get("env", []) if e["name"] == "EXPORT_SERVICE_URL"
            ]
            assert all(url.endswith(f":{config['server']['port']}") for url in urls)


def test_the_probe_check_catches_http_probes_to_a_loopback_service() -> None:
    """The sidecar's first version: httpGet probes, the service on 127.0.0.1.
    kubernetes-validate passes it; the pod never starts."""
    documents = _documents(REPO / "deploy/kubernetes/sidecar.yaml")
    config = _service_config(documents)
    (pod,) = _pods(documents)
    service = _service(pod)
    service["ports"] = [{"name": "export", "containerPort": 8080}]
    service["startupProbe"] = {"httpGet": {"path": "/healthz", "port": "export"}}
    service["readinessProbe"] = {"httpGet": {"path": "/readyz", "port": "export"}}
    assert config["server"]["host"] == "127.0.0.1"
    assert _probe_problems(pod, config) == [
        "startupProbe: httpGet goes to the pod's IP, the service listens on 127.0.0.1",
        "readinessProbe: httpGet goes to the pod's IP, the service listens on 127.0.0.1",
    ]
    config["server"]["host"] = "0.0.0.0"
    assert _probe_problems(pod, config) == []


def _graceful_timeout(container: dict[str, Any]) -> float:
    """uvicorn's --timeout-graceful-shutdown in the container's command (its
    default is to wait for ever, so it must be explicit)."""
    for argument in container.get("command", []) + container.get("args", []):
        name, _, value = argument.partition("=")
        if name == "--timeout-graceful-shutdown":
            return float(value)
    raise AssertionError(f"{container['name']}: no explicit --timeout-graceful-shutdown")


@pytest.mark.parametrize("manifest", LAYOUTS, ids=lambda path: path.name)
def test_the_pod_outlives_its_containers_shutdowns_in_turn(manifest: Path) -> None:
    """One terminationGracePeriodSeconds for the whole pod: with a native
    sidecar the backend stops first (within its own graceful timeout), and
    only then does the service get SIGTERM and take its grace plus 2 s."""
    documents = _documents(manifest)
    grace = _grace(_config_text(documents))
    for pod in _all_pods(documents):
        if pod not in _pods(documents):  # a backend of its own: its uvicorn's timeout
            budget = sum(_graceful_timeout(c) for c in pod["containers"])
        else:
            budget = grace + EXIT_AFTER_GRACE
            if _service(pod) in pod.get("initContainers", []):
                budget += sum(_graceful_timeout(c) for c in pod["containers"])
        assert pod["terminationGracePeriodSeconds"] >= budget


@pytest.mark.parametrize("manifest", LAYOUTS, ids=lambda path: path.name)
def test_the_init_step_creates_every_shared_folder(manifest: Path, tmp_path: Path) -> None:
    """Run as written against a folder standing in for the volume: every
    subPath a container mounts exists afterwards (else the kubelet creates it
    as root and uid 10001 cannot write it), owned by uid 10001 where the step
    runs as root."""
    for pod in _all_pods(_documents(manifest)):
        (init,) = [c for c in pod["initContainers"] if c["name"] == "links-folder"]
        (volume_mount,) = init["volumeMounts"]
        assert init["command"][:2] == ["sh", "-c"]
        script = init["command"][2].replace(volume_mount["mountPath"], str(tmp_path))
        as_root = init.get("securityContext", {}).get("runAsUser") == 0
        if as_root and os.geteuid() != 0:
            pytest.skip("the step runs as root: chown needs root here too")
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        sub_paths = {
            m["subPath"]
            for c in _containers(pod)
            for m in c.get("volumeMounts", [])
            if m["name"] == volume_mount["name"] and "subPath" in m
        }
        assert "render/output" in sub_paths
        for sub_path in sub_paths:
            folder = tmp_path / sub_path
            assert folder.is_dir(), sub_path
            if as_root:
                assert (folder.stat().st_uid, folder.stat().st_gid) == (SERVICE_UID, SERVICE_UID)
            else:
                assert folder.stat().st_mode & 0o2070 == 0o2070  # group-writable, setgid


def _set_problems(files: dict[str, str]) -> list[str]:
    """Why the manifests (file name -> text) cannot be applied together:
    two objects of one kind and name that differ (the later one silently
    replaces the other), or an object that a pod refers to which neither the
    set creates nor a file names as the user's to create with its command."""
    created: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    problems = []
    for name, text in files.items():
        for document in (d for d in yaml.safe_load_all(text) if d):
            key = (document["kind"], document["metadata"]["name"])
            if key in created and created[key][1] != document:
                problems.append(f"{key[0]} {key[1]!r}: differs in {created[key][0]} and {name}")
            created.setdefault(key, (name, document))
    for name, text in files.items():
        for pod in _all_pods([d for d in yaml.safe_load_all(text) if d]):
            referred = {("ServiceAccount", pod.get("serviceAccountName", "default"))} - {
                ("ServiceAccount", "default")
            }
            for volume in pod.get("volumes", []):
                if "configMap" in volume:
                    referred.add(("ConfigMap", volume["configMap"]["name"]))
                if "secret" in volume:
                    referred.add(("Secret", volume["secret"]["secretName"]))
                if "persistentVolumeClaim" in volume:
                    referred.add(
                        ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
                    )
            for container in _containers(pod):
                for env in container.get("env", []):
                    source = env.get("valueFrom", {})
                    if "secretKeyRef" in source:
                        referred.add(("Secret", source["secretKeyRef"]["name"]))
                    if "configMapKeyRef" in source:
                        referred.add(("ConfigMap", source["configMapKeyRef"]["name"]))
            for kind, object_name in sorted(referred):
                if (kind, object_name) in created:
                    continue
                commands = {
                    "Secret": f"kubectl create secret generic {object_name} ",
                    "ConfigMap": f"kubectl create configmap {object_name} ",
                }
                if kind in commands and commands[kind] in text:
                    continue  # the user's to create, and the file says how
                problems.append(f"{name}: {kind} {object_name!r} is neither created nor named")
    return list(dict.fromkeys(problems))


def test_the_manifests_can_be_applied_together() -> None:
    """`kubectl apply -f deploy/kubernetes/` in one namespace: no object is
    defined twice with different contents, and every ConfigMap, Secret and
    claim a pod uses is in the set or the user's to create with a command."""
    assert _set_problems({path.name: path.read_text() for path in MANIFESTS}) == []


def test_the_set_check_catches_what_the_old_layouts_did() -> None:
    """Both layouts defined ConfigMap export-service-config (host 127.0.0.1
    against 0.0.0.0) and used a claim and a Secret nobody created."""
    files = {path.name: path.read_text() for path in LAYOUTS}
    for name in files:
        old_name = "export-service-config"
        files[name] = re.sub(r"export-service-(sidecar|scale-out)\b", old_name, files[name])
        files[name] = files[name].replace("kubectl create secret generic", "(removed)")
    assert _set_problems(files) == [
        "ConfigMap 'export-service-config': differs in scale-out.yaml and sidecar.yaml",
        "scale-out.yaml: PersistentVolumeClaim 'air-data' is neither created nor named",
        "scale-out.yaml: Secret 'export-service' is neither created nor named",
        "sidecar.yaml: PersistentVolumeClaim 'air-data' is neither created nor named",
        "sidecar.yaml: Secret 'export-service' is neither created nor named",
    ]


def test_the_scale_out_backend_calls_the_service_through_its_service() -> None:
    documents = _documents(REPO / "deploy/kubernetes/scale-out.yaml")
    (service,) = [d for d in documents if d["kind"] == "Service"]
    port = _service_config(documents)["server"]["port"]
    backends = [pod for pod in _all_pods(documents) if pod not in _pods(documents)]
    assert backends, "no backend Deployment"
    for pod in backends:
        (backend,) = pod["containers"]
        env = {e["name"]: e for e in backend["env"]}
        assert env["EXPORT_SERVICE_URL"]["value"] == f"http://{service['metadata']['name']}:{port}"
        assert service["spec"]["ports"][0]["port"] == port
        token = env["EXPORT_SERVICE_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert not token.get("optional")  # the service requires one here


def test_the_sidecar_trusts_the_backend_beside_it_as_a_proxy() -> None:
    """The backend in the pod calls the service over loopback and appends
    each browser's address to X-Forwarded-For; unless the service trusts that
    peer, every browser shares one limits.max_zips_per_client (4 downloads for
    the whole AIR API)."""
    documents = _documents(REPO / "deploy/kubernetes/sidecar.yaml")
    trusted = [
        ipaddress.ip_network(net)
        for net in _service_config(documents)["server"].get("trusted_proxies", [])
    ]
    (pod,) = _pods(documents)
    (backend,) = [c for c in pod["containers"] if c["name"] != "export-service"]
    env = {e["name"]: e for e in backend["env"]}
    host = urlsplit(env["EXPORT_SERVICE_URL"]["value"]).hostname
    assert host is not None
    assert any(ipaddress.ip_address(host) in net for net in trusted), (host, trusted)


def _probe_command(pod: dict[str, Any], kind: str) -> list[str]:
    command: list[str] = _service(pod)[kind]["exec"]["command"]
    found = shutil.which(command[0], path=str(Path(sys.executable).parent))
    assert found, f"{command[0]} is not installed beside {sys.executable}"
    return [found, *command[1:]]


@pytest.mark.slow
def test_the_sidecar_readiness_probe_passes_with_a_corrupt_links_file_not_without_a_root(
    tmp_path: Path,
) -> None:
    """The sidecar's readiness probe, as the manifest runs it, against a real
    service with the manifest's config (its paths moved under tmp_path): a
    corrupt links file keeps the backend pod in rotation, a render root that
    is gone takes it out."""
    documents = _documents(REPO / "deploy/kubernetes/sidecar.yaml")
    (pod,) = _pods(documents)
    port = free_port()
    text = _config_text(documents).replace("/data/air", str(tmp_path / "air"))
    text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text)
    config = tmp_path / "config.toml"
    config.write_text(text)
    settings = tomllib.loads(text)
    for root in settings["roots"].values():
        Path(root).mkdir(parents=True)
    links = Path(settings["links"]["file"])
    links.parent.mkdir(parents=True)
    links.write_text('{"r": {"param_run_id": "p1"')  # cut short by a crashed writer
    env = {e["name"]: e["value"] for e in _service(pod)["env"] if "value" in e}
    assert env["EXPORT_SERVICE_CONFIG"].endswith("/config.toml")
    env["EXPORT_SERVICE_CONFIG"] = str(config)
    probe = _probe_command(pod, "readinessProbe")
    live = _probe_command(pod, "livenessProbe")

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env={**os.environ, **env}, capture_output=True, text=True, timeout=30
        )

    with live_service(["--config", str(config)], port=port) as service:
        assert run(live).returncode == 0
        result = run(probe)
        assert result.returncode == 0, result.stdout + result.stderr
        assert '"degraded"' in result.stdout and "links.file" in result.stdout  # Docker logs it
        with urllib.request.urlopen(service.base_url + "/readyz") as answer:
            body = json.load(answer)
        assert body["status"] == "degraded"
        assert body["problems"][0].startswith("links.file: not valid JSON")
        Path(settings["roots"]["render"]).rmdir()
        result = run(probe)
        assert result.returncode != 0
        assert "roots.render" in result.stdout and "does not exist" in result.stdout
        assert run(live).returncode == 0  # not restarted for it either


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


@pytest.mark.slow
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
