"""``export-service serve`` as a user starts it: a real process on a real port."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from export_service.sample import SAMPLE_RENDER_RUN_ID
from tests.zips import read_zip, unzip_test


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
        return body


def test_serve_without_config_serves_the_sample_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "export_service", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}/api/air/export"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                manifest = json.loads(_get(f"{base}/list/{SAMPLE_RENDER_RUN_ID}"))
                break
            except OSError:
                assert process.poll() is None, process.communicate()[0]
                assert time.monotonic() < deadline, "the service did not start"
                time.sleep(0.1)
        assert manifest["missing"] == []
        assert manifest["param_run_id"] == "prm_51be02"
        body = _get(f"{base}/zip/{SAMPLE_RENDER_RUN_ID}")
        entries = read_zip(body)
        assert "render/rnd_7f3a9c/stems/lead synth.wav" in entries
        assert entries["render/rnd_7f3a9c/mix.wav"].startswith(b"RIFF")
        unzip_test(body, tmp_path)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output


def test_link_command_writes_the_links_file(tmp_path: Path) -> None:
    roots = {step: tmp_path / step for step in ("render", "midi", "param")}
    for root in roots.values():
        root.mkdir()
    links = tmp_path / "projects" / "step_links.json"
    config = tmp_path / "config.toml"
    config.write_text(
        f'[roots]\nrender = "{roots["render"]}"\nmidi_generation = "{roots["midi"]}"\n'
        f'param_generation = "{roots["param"]}"\n[links]\nfile = "{links}"\n'
    )
    command = [sys.executable, "-m", "export_service", "link", "r1", "p1", "--config", str(config)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["param_run_id"] == "p1"
    assert json.loads(links.read_text())["r1"]["param_run_id"] == "p1"

    bad = subprocess.run(
        [*command[:4], "r1", "..", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    assert "invalid_param_run_id" in bad.stderr
