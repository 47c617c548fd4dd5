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
