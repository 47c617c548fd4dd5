"""The command line as users run it: real processes, real ports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from export_service import config as config_module
from export_service.cli import main
from export_service.sample import SAMPLE_RENDER_RUN_ID
from tests.helpers import AirTree, content_length, make_deep, remove_deep, write
from tests.live import free_port, live_service
from tests.zips import read_zip, unzip_test

pytestmark = pytest.mark.slow  # each test runs the CLI as a process


def _cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export_service", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _config(tree: AirTree, path: Path, extra: str = "") -> Path:
    path.write_text(
        f'[roots]\nrender = "{tree.render}"\nmidi_generation = "{tree.midi}"\n'
        f'param_generation = "{tree.param}"\n[links]\nfile = "{tree.links}"\n{extra}'
    )
    return path


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def test_serve_without_config_serves_the_sample_and_stops_on_sigterm(tmp_path: Path) -> None:
    with live_service() as service:
        base = f"{service.base_url}/api/air/export"
        manifest = json.loads(_get(f"{base}/list/{SAMPLE_RENDER_RUN_ID}"))
        assert manifest["missing"] == []
        assert manifest["param_run_id"] == "prm_51be02"
        body = _get(f"{base}/zip/{SAMPLE_RENDER_RUN_ID}")
        entries = read_zip(body)
        assert "render/rnd_7f3a9c/stems/lead synth.wav" in entries
        assert entries["render/rnd_7f3a9c/mix.wav"].startswith(b"RIFF")
        code, output = service.stop()
    assert code == 0, output
    assert "Traceback" not in output
    unzip_test(body, tmp_path)


@pytest.mark.parametrize("command", ["serve", "manifest", "zip", "link", "check-config"])
def test_every_command_has_help(command: str) -> None:
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout


def test_manifest_and_zip_commands_give_what_the_endpoints_give(
    tree: AirTree, tmp_path: Path
) -> None:
    write(tree.render / "r" / "mix.wav", os.urandom(50_000))
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    config = _config(tree, tmp_path / "config.toml")
    with live_service(["--config", str(config)]) as service:
        endpoint_manifest = _get(f"{service.base_url}/api/air/export/list/r")
        endpoint_zip = _get(f"{service.base_url}/api/air/export/zip/r")
    manifest = _cli("manifest", "r", "--config", str(config))
    assert manifest.returncode == 0, manifest.stderr
    assert manifest.stdout.encode() == endpoint_manifest + b"\n"
    output = tmp_path / "out.zip"
    archive = _cli("zip", "r", "-o", str(output), "--config", str(config))
    assert archive.returncode == 0, archive.stderr
    assert output.read_bytes() == endpoint_zip
    bad = _cli("zip", "..", "-o", str(tmp_path / "bad.zip"), "--config", str(config))
    assert (bad.returncode, bad.stderr) == (
        2,
        "export-service zip: argument render_run_id: '..': a run id must not be '.' or '..' "
        "(see export-service zip --help)\n",
    )
    assert not (tmp_path / "bad.zip").exists()


def test_steps_and_prefix_give_what_the_endpoints_give_with_the_same_query(
    tree: AirTree, tmp_path: Path
) -> None:
    write(tree.render / "r" / "mix.wav", os.urandom(5_000))
    write(tree.render / "r" / "stems" / "kick.wav", os.urandom(3_000))
    write(tree.render / "r" / "stems" / "deep" / "snare.wav", os.urandom(2_000))
    write(tree.midi / "20261101_r" / "t.mid", b"MThd")
    config = _config(tree, tmp_path / "config.toml")
    query = "?steps=render&steps=midi_generation&prefix=stems/&prefix=t.mid"
    with live_service(["--config", str(config)]) as service:
        endpoint_manifest = _get(f"{service.base_url}/api/air/export/list/r{query}")
        endpoint_zip = _get(f"{service.base_url}/api/air/export/zip/r{query}")
    selection = ["--steps", "render", "--steps", "midi_generation"]
    selection += ["--prefix", "stems/", "--prefix", "t.mid"]
    manifest = _cli("manifest", "r", *selection, "--config", str(config))
    assert manifest.returncode == 0, manifest.stderr
    assert manifest.stdout.encode() == endpoint_manifest + b"\n"
    assert len(json.loads(manifest.stdout)["files"]) == 3
    output = tmp_path / "out.zip"
    archive = _cli("zip", "r", "-o", str(output), *selection, "--config", str(config))
    assert (archive.returncode, archive.stderr) == (0, "")
    assert output.read_bytes() == endpoint_zip
    nothing = _cli("manifest", "r", "--steps", "param_generation", "--config", str(config))
    assert nothing.stderr == (
        "export-service: the manifest of 'r' has no files of param_generation (no param run "
        "linked to 'r'): nothing was found, so it is empty\n"
    )
    bad = _cli("zip", "r", "-o", str(tmp_path / "bad.zip"), "--prefix", "../x")
    assert bad.returncode == 2
    assert bad.stderr.startswith("export-service zip: argument --prefix: prefix '../x' is not")
    bad = _cli("manifest", "r", "--steps", "midi")
    assert bad.returncode == 2
    assert "argument --steps: steps: 'midi' is not a step" in bad.stderr


@pytest.mark.parametrize(
    ("output", "says"),
    [
        ("{tmp}", "-o {tmp}: is a folder; name the file to write, such as -o {tmp}/export.zip"),
        (
            "{tmp}/no such folder/x.zip",
            "-o {tmp}/no such folder/x.zip: the folder '{tmp}/no such folder' does not exist; "
            "create it first",
        ),
        # A folder nobody may create a file in, root included.
        (
            "/proc/x.zip",
            "-o /proc/x.zip: cannot be written (No such file or directory); "
            "choose a file in a folder you can write to",
        ),
    ],
)
def test_zip_to_an_output_it_cannot_write_is_one_line_before_any_work(
    tree: AirTree, tmp_path: Path, output: str, says: str
) -> None:
    """Checked before the ZIP is planned: the run does not even exist (it was
    made, then a traceback: IsADirectoryError, FileNotFoundError)."""
    config = _config(tree, tmp_path / "config.toml")
    folder = tmp_path / "out"
    folder.mkdir()
    result = _cli("zip", "no_such_run", "-o", output.format(tmp=folder), "--config", str(config))
    assert (result.returncode, result.stderr) == (2, f"export-service: {says.format(tmp=folder)}\n")
    assert list(folder.iterdir()) == []


def test_zip_to_a_named_pipe_writes_through_it(tree: AirTree, tmp_path: Path) -> None:
    """``-o /dev/null`` or a named pipe is written as it is: the output went
    to a temporary file renamed over the target, which replaced the pipe (and,
    run as root, /dev/null itself) with a regular file."""
    write(tree.render / "r" / "mix.wav", b"RIFF")
    config = _config(tree, tmp_path / "c.toml")
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a small ZIP fits in its buffer
    try:
        result = _cli("zip", "r", "-o", str(pipe), "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert pipe.is_fifo()
        received = os.read(reader, 1 << 16)
    finally:
        os.close(reader)
    assert "render/r/mix.wav" in read_zip(received)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        (
            ["serve", "--port", "99999"],
            "export-service serve: argument --port: '99999' is not a port number (0 to 65535)",
        ),
        (
            ["serve", "--port", "-1"],
            "export-service serve: argument --port: '-1' is not a port number (0 to 65535)",
        ),
        (
            ["serve", "--host", ""],
            "export-service serve: argument --host: must not be empty (an address or host name)",
        ),
        (
            ["manifest", " \t"],
            "export-service manifest: argument render_run_id: ' \\t': a run id must not be "
            "empty or blank",
        ),
        (
            ["serve", "--config", ""],
            "export-service serve: argument --config: must not be empty (the TOML config file; "
            "leave --config out to use $EXPORT_SERVICE_CONFIG or, for serve, the sample tree)",
        ),
        (
            ["link", "r", "a/b"],
            "export-service link: argument param_run_id: 'a/b': a run id must not contain '/' "
            "or '\\'",
        ),
        (["zip", "r"], "export-service zip: the following arguments are required: -o/--output"),
        (["serve", "--prot", "1"], "export-service: unrecognized arguments: --prot 1"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(arguments: list[str], says: str) -> None:
    """argparse's usage lines, an OverflowError traceback (port 99999), or a
    port of -1 blamed on the host, before."""
    result = _cli(*arguments)
    prog = says.partition(":")[0]
    assert (result.returncode, result.stderr) == (2, f"{says} (see {prog} --help)\n")


@pytest.mark.parametrize("command", [["manifest", "r"], ["zip", "r", "-o", "-"]])
def test_output_read_only_in_part_ends_quietly(
    tree: AirTree, tmp_path: Path, command: list[str]
) -> None:
    """``export-service zip r -o - | head -c 10``: the reader leaves early, the
    command stops with exit 1 and no traceback."""
    write(tree.render / "r" / "mix.wav", os.urandom(4_000_000))
    for index in range(2000):  # a manifest of ~200 KB, more than a pipe holds
        write(tree.render / "r" / f"take {index:04}.wav", b"RIFF")
    config = _config(tree, tmp_path / "config.toml")
    with subprocess.Popen(
        [sys.executable, "-m", "export_service", *command, "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        assert len(process.stdout.read(10)) == 10
        process.stdout.close()
        error = process.stderr.read().decode()
        assert process.wait(timeout=60) == 1, error
    assert error == ""


def test_check_config_without_a_config_names_what_it_needs(tmp_path: Path) -> None:
    """A port alone is no config (it does not say where the files are)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("EXPORT_SERVICE_")}
    with_port = subprocess.run(
        [sys.executable, "-m", "export_service", "check-config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "EXPORT_SERVICE_SERVER_PORT": "9000"},
    )
    assert with_port.returncode == 2
    assert with_port.stderr == (
        "export-service: config error: this command needs --config, $EXPORT_SERVICE_CONFIG, "
        "or the roots or links file in the environment (EXPORT_SERVICE_ROOTS_*, "
        "EXPORT_SERVICE_LINKS_FILE)\n"
    )


def test_link_command_writes_the_links_file(tree: AirTree, tmp_path: Path) -> None:
    config = _config(tree, tmp_path / "config.toml")
    result = _cli("link", "r1", "p1", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["param_run_id"] == "p1"
    assert json.loads(tree.links.read_text())["r1"]["param_run_id"] == "p1"
    bad = _cli("link", "r1", "..", "--config", str(config))
    assert bad.returncode == 2
    assert "argument param_run_id: '..': a run id must not be '.' or '..'" in bad.stderr


def test_check_config_prints_resolved_settings_with_env_overrides(
    tree: AirTree, tmp_path: Path
) -> None:
    config = _config(tree, tmp_path / "config.toml", '[auth]\ntoken = "t0ken"\n')
    result = _cli(
        "check-config", "--config", str(config), env={"EXPORT_SERVICE_SERVER_PORT": "9123"}
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    assert resolved["server"]["port"] == 9123
    assert resolved["roots"]["render"] == str(tree.render)
    assert resolved["auth"]["token"] == "<redacted>"
    assert "t0ken" not in result.stdout

    broken = _cli(
        "check-config", "--config", str(config), env={"EXPORT_SERVICE_SERVER_PORT": "eighty"}
    )
    assert broken.returncode == 2
    assert broken.stderr.startswith("export-service: config error:")
    assert "EXPORT_SERVICE_SERVER_PORT: " in broken.stderr


@pytest.mark.parametrize(("zip_threads", "resolved"), [(0, 3), (5, 5)])
def test_check_config_prints_the_zip_threads_zero_resolves_to(
    tree: AirTree,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    zip_threads: int,
    resolved: int,
) -> None:
    # Three CPUs usable (a container's quota, tests/test_config.py), whatever this machine has.
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 3)
    config = _config(tree, tmp_path / "config.toml", f"[limits]\nzip_threads = {zip_threads}\n")
    assert main(["check-config", "--config", str(config)]) == 0
    limits = json.loads(capsys.readouterr().out)["limits"]
    assert limits["zip_threads"] == zip_threads
    assert limits["zip_thread_count"] == resolved


def test_environment_alone_configures_the_service(tree: AirTree) -> None:
    write(tree.render / "r" / "mix.wav", b"env")
    env = {
        "EXPORT_SERVICE_ROOTS_RENDER": str(tree.render),
        "EXPORT_SERVICE_ROOTS_MIDI_GENERATION": str(tree.midi),
        "EXPORT_SERVICE_ROOTS_PARAM_GENERATION": str(tree.param),
        "EXPORT_SERVICE_LINKS_FILE": str(tree.links),
    }
    with live_service(env=env) as service:
        assert _get(f"{service.base_url}/api/audio/r/mix.wav") == b"env"


def test_serve_with_a_bad_config_prints_one_line_and_exits_2(tree: AirTree, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_config(tree, config).read_text().replace(str(tree.render), "/nonexistent"))
    result = _cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "roots.render: '/nonexistent' does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def _start_download(base_url: str, path: str) -> tuple[socket.socket, int, bytes]:
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    return sock, content_length(head), body


def _refuses_connections(base_url: str) -> bool:
    host, port = base_url.removeprefix("http://").split(":")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_lets_a_download_in_flight_finish(tree: AirTree, tmp_path: Path) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(16 * 1024 * 1024))
    config = _config(tree, tmp_path / "c.toml", "[server]\nshutdown_grace_seconds = 30\n")
    with live_service(["--config", str(config)]) as service:
        sock, length, body = _start_download(service.base_url, "/api/air/export/zip/r")
        service.terminate()
        assert _refuses_connections(service.base_url)
        received = len(body)
        while chunk := sock.recv(65536):
            received += len(chunk)
            time.sleep(0.004)  # a slow reader: about 1.5 s for the whole download
        sock.close()
        code, output = service.stop()
    assert received == length
    assert code == 0, output


def test_sigterm_cuts_a_download_that_outlives_the_grace_period(
    tree: AirTree, tmp_path: Path
) -> None:
    write(tree.render / "r" / "big.wav", os.urandom(48 * 1024 * 1024))
    config = _config(tree, tmp_path / "c.toml", "[server]\nshutdown_grace_seconds = 0.5\n")
    with live_service(["--config", str(config)]) as service:
        sock, length, body = _start_download(service.base_url, "/api/air/export/zip/r")
        started = time.monotonic()
        code, output = service.stop(timeout=20)  # the reader is stalled meanwhile
        stopped_after = time.monotonic() - started
        received = len(body)
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        sock.close()
    assert code == 0, output
    assert stopped_after < 10
    assert received < length
    assert "ZIP of r cancelled (shutdown)" in output  # the grace ran out: the shutdown cut it
    assert '"ended": "shutdown"' in output


def test_sample_tree_takes_the_environments_other_keys() -> None:
    with live_service(env={"EXPORT_SERVICE_AUTH_TOKEN": "s3cret"}) as service:
        url = f"{service.base_url}/api/air/export/list/{SAMPLE_RENDER_RUN_ID}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            _get(url)
        denied.value.close()
        assert denied.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["missing"] == []


def test_serve_logs_one_line_with_its_address_and_roots(tree: AirTree, tmp_path: Path) -> None:
    config = _config(tree, tmp_path / "config.toml")
    with live_service(["--config", str(config)]) as service:
        code, output = service.stop()
    assert code == 0, output
    lines = [json.loads(line) for line in output.splitlines()]
    (started,) = [line for line in lines if line["message"].startswith("listening on")]
    stopped = lines[-1]
    assert started["message"] == (
        f"listening on {service.base_url}; roots: render={tree.render}, "
        f"midi_generation={tree.midi}, param_generation={tree.param}; links: {tree.links}"
    )
    # An idle service that was stopped logged nothing: a stop looked like a crash.
    assert stopped["message"] == f"stopped listening on {service.base_url}"


def test_serve_in_a_terminal_logs_text_with_the_json_fields(tmp_path: Path) -> None:
    """``make run`` in a terminal: text lines, with what JSON lines hold (the
    request id, duration, client address, the time in UTC with its zone); in
    a pipe (a container's log), JSON."""
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("EXPORT_")},
        "EXPORT_SERVICE_SERVER_HOST": "127.0.0.1",
        "EXPORT_SERVICE_SERVER_PORT": str(port),
    }
    controller, terminal = os.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "export_service", "serve"], stderr=terminal, env=env
    ) as process:
        os.close(terminal)
        url = f"http://127.0.0.1:{port}/api/air/export/list/{SAMPLE_RENDER_RUN_ID}"
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(url, headers={"X-Request-ID": "find-me.1"})
                urllib.request.urlopen(request, timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        process.terminate()
        assert process.wait(timeout=30) == 0
    output = b""
    with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
        while chunk := os.read(controller, 65536):
            output += chunk
    os.close(controller)
    lines = output.decode().splitlines()
    (access,) = [line for line in lines if "export_service.access" in line]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO export_service\.access "
        rf"GET /api/air/export/list/{SAMPLE_RENDER_RUN_ID} 200 \d+ complete "
        r"request_id=find-me\.1 duration_ms=[\d.]+ remote=127\.0\.0\.1",
        access,
    ), access
    assert lines[-1].endswith(f" INFO export_service stopped listening on http://127.0.0.1:{port}")


def test_a_port_in_use_is_one_line_and_exit_2(tree: AirTree, tmp_path: Path) -> None:
    config = _config(tree, tmp_path / "config.toml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _cli("serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 2
    assert result.stderr == (
        f"export-service: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


@pytest.mark.parametrize("host", ["256.1.1.1", "no such host.invalid"])
def test_a_host_that_is_no_address_is_one_line_with_its_reason(
    tree: AirTree, tmp_path: Path, host: str
) -> None:
    config = _config(tree, tmp_path / "config.toml")
    result = _cli("serve", "--config", str(config), env={"EXPORT_SERVICE_SERVER_HOST": host})
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"export-service: cannot listen on {host}:8080: not a valid address or host name ("
    )
    assert "Unknown error" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_bad_value_from_the_environment_names_the_variable(tree: AirTree, tmp_path: Path) -> None:
    config = _config(tree, tmp_path / "config.toml")
    result = _cli("serve", "--config", str(config), env={"EXPORT_SERVICE_SERVER_PORT": "80a"})
    assert result.returncode == 2
    assert result.stderr.startswith("export-service: config error: EXPORT_SERVICE_SERVER_PORT: ")
    assert str(config) not in result.stderr
    assert result.stderr.count("\n") == 1


def test_healthcheck_asks_the_port_the_config_names(tree: AirTree, tmp_path: Path) -> None:
    port = free_port()
    config = _config(
        tree, tmp_path / "config.toml", f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
    )
    env = {"EXPORT_SERVICE_CONFIG": str(config)}
    assert _cli("healthcheck", env=env).returncode == 1  # nothing listens yet
    # Started as in a container: the port comes from the config alone.
    process = subprocess.Popen(
        [sys.executable, "-m", "export_service", "serve"],
        env={**os.environ, **env},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while _cli("healthcheck", "--live", env=env).returncode != 0:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        ready = _cli("healthcheck", env=env)
        assert ready.returncode == 0, ready.stdout
        elsewhere = _cli("healthcheck", env={**env, "EXPORT_SERVICE_SERVER_PORT": str(free_port())})
        assert elsewhere.returncode == 1
        assert "/readyz" in elsewhere.stdout
    finally:
        process.terminate()
        process.wait(30)


def test_healthcheck_of_a_service_whose_root_has_gone_asks_the_service(
    tree: AirTree, tmp_path: Path
) -> None:
    """With the default server.require_roots, a root that goes away while
    the service runs failed the probe's own config check (exit 2, no request
    made): a liveness probe restarted a live service, which then could not
    start. The probe asks the service: alive, and not ready (503)."""
    with live_service(["--config", str(_config(tree, tmp_path / "c.toml"))]) as service:
        port = service.base_url.rsplit(":", 1)[1]
        config = _config(
            tree, tmp_path / "probe.toml", f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        )
        tree.render.rename(tmp_path / "render-gone")
        live = _cli("healthcheck", "--live", "--config", str(config))
        ready = _cli("healthcheck", "--config", str(config))
        (tmp_path / "render-gone").rename(tree.render)
    assert live.returncode == 0, live.stderr
    assert ready.returncode == 1, ready.stderr
    assert "/readyz: 503" in ready.stdout


def test_zip_names_why_each_file_was_left_out(tree: AirTree, tmp_path: Path) -> None:
    """A file whose entry name no ZIP can hold (260 folders of 255-byte
    names) is left out when the ZIP is planned; the command says that is
    why, not that the file could not be opened."""
    write(tree.render / "r" / "mix.wav", b"mix")
    make_deep(tree.render / "r" / "long", 260, name="n" * 255)
    try:
        config = _config(tree, tmp_path / "c.toml")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "export_service",
                "zip",
                "r",
                "-o",
                "-",
                "--config",
                str(config),
            ],
            capture_output=True,
            timeout=60,
        )
    finally:
        remove_deep(tree.render / "r" / "long")
    assert result.returncode == 0, result.stderr
    assert read_zip(result.stdout) == {"render/r/mix.wav": b"mix"}
    (line,) = [
        line
        for line in result.stderr.decode().splitlines()
        if line.startswith("export-service: left out")
    ]
    assert line.startswith("export-service: left out (its name is too long for a ZIP): render/r/")


def test_ids_on_the_command_line_are_stripped_as_the_api_strips_them(
    tree: AirTree, tmp_path: Path
) -> None:
    """' r1' gave an empty ZIP and a manifest of nothing; ' r1 ' was linked
    under a key no request could reach; a blank --param-run-id, absent in
    the API, was refused."""
    write(tree.render / "r1" / "mix.wav", b"mix")
    write(tree.param / "20261101_101200_p1" / "params.json", b"{}")
    config = _config(tree, tmp_path / "config.toml")
    link = _cli("link", " r1 ", "\tp1 ", "--config", str(config))
    assert link.returncode == 0, link.stderr
    assert json.loads(tree.links.read_text())["r1"]["param_run_id"] == "p1"
    manifest = _cli("manifest", " r1", "--param-run-id", " ", "--config", str(config))
    assert manifest.returncode == 0, manifest.stderr
    assert json.loads(manifest.stdout)["render_run_id"] == "r1"
    assert json.loads(manifest.stdout)["missing"] == ["midi_generation"]  # the link was used
    output = tmp_path / "r1.zip"
    archive = _cli("zip", " r1\n", "-o", str(output), "--config", str(config))
    assert archive.returncode == 0, archive.stderr
    assert read_zip(output.read_bytes()) == {
        "render/r1/mix.wav": b"mix",
        "param_generation/20261101_101200_p1/params.json": b"{}",
    }


def test_an_export_of_nothing_says_so_on_stderr(tree: AirTree, tmp_path: Path) -> None:
    """Exit 0, as the API answers 200 with what it found, but no longer a
    silent 22-byte ZIP for a mistyped id."""
    config = _config(tree, tmp_path / "config.toml")
    output = tmp_path / "n.zip"
    archive = _cli("zip", "nosuch", "-o", str(output), "--config", str(config))
    assert (archive.returncode, archive.stderr) == (
        0,
        "export-service: the ZIP of 'nosuch' has no files of render (no run 'nosuch'), "
        "midi_generation (no run 'nosuch'), param_generation (no param run linked to "
        "'nosuch'): nothing was found, so it is empty\n",
    )
    assert read_zip(output.read_bytes()) == {}
    write(tree.render / "r1" / "mix.wav", b"mix")
    manifest = _cli("manifest", "r1", "--param-run-id", "p9", "--config", str(config))
    assert (manifest.returncode, manifest.stderr) == (
        0,
        "export-service: the manifest of 'r1' has no files of midi_generation (no run 'r1'), "
        "param_generation (no run 'p9'): the rest is in it\n",
    )
    write(tree.midi / "20261101_101200_r1" / "t.mid", b"MThd")
    full = _cli("zip", "r1", "--param-run-id", "p9", "-o", str(output), "--config", str(config))
    assert "midi_generation" not in full.stderr


@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_config_variable_is_refused(tree: AirTree, value: str) -> None:
    """Taken as "no config", it served the sample tree instead of the data."""
    for command in (["serve"], ["check-config"]):
        result = _cli(*command, env={"EXPORT_SERVICE_CONFIG": value})
        assert (result.returncode, result.stderr) == (
            2,
            "export-service: config error: EXPORT_SERVICE_CONFIG is set but empty; name the "
            "TOML config file, or unset the variable\n",
        )
