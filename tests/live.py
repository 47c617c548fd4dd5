"""A real ``export-service serve`` process, for tests that need one."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LiveService:
    process: subprocess.Popen[str]
    base_url: str
    log: IO[str]  # a file, not a pipe: a pipe nobody reads fills up and stalls the child
    terminated: bool = False

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def terminate(self) -> None:
        """One SIGTERM, as an orchestrator sends it (a second one during the
        shutdown would kill the process the default way)."""
        if self.process.poll() is None and not self.terminated:
            self.process.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        self.terminate()
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.output()


@contextmanager
def live_service(
    arguments: Sequence[str] = (), env: dict[str, str] | None = None, port: int | None = None
) -> Iterator[LiveService]:
    """The service on a free port until the block ends, then stopped as an
    orchestrator stops it: SIGTERM, so that it removes its sample tree
    (SIGKILL only if it has not exited 10 s later, which leaves the tree for
    conftest's temp_folder_left_empty to report).

    Without ``port`` the service binds port 0 and the URL has the port its
    process listens on: a port picked free beforehand could be taken by
    another test worker's service first, whose /healthz would then answer
    for this one."""
    with tempfile.TemporaryFile("w+") as log:
        yield from _run(arguments, env, port, log)


def listening_port(pid: int) -> int | None:
    """The TCP port process ``pid`` listens on (its sockets' inodes looked up
    in the kernel's table), or None while it listens on none."""
    inodes = set()
    with contextlib.suppress(FileNotFoundError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    return int(fields[1].rpartition(":")[2], 16)
    return None


def _run(
    arguments: Sequence[str], env: dict[str, str] | None, port: int | None, log: IO[str]
) -> Iterator[LiveService]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "export_service",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port or 0),
            *arguments,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    service = LiveService(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if port is None:
                    bound = listening_port(process.pid)
                    if bound is None:
                        raise ConnectionRefusedError("not listening yet")
                    service.base_url = f"http://127.0.0.1:{bound}"
                urllib.request.urlopen(f"{service.base_url}/healthz", timeout=5).close()
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(service.output()) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not start") from None
                time.sleep(0.05)
        yield service
    finally:
        service.terminate()
        wait_or_kill(process)


def wait_or_kill(process: subprocess.Popen[str], seconds: float = 10) -> None:
    """Wait for a process told to stop; SIGKILL it if it has not exited ``seconds`` later."""
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
