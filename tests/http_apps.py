"""A FastAPI app served by uvicorn in a thread, and one raw request to a
server: what the proxy's, the nginx recipes' and the browser's tests share."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any

import uvicorn
from fastapi import FastAPI


@dataclass
class Answer:
    status: int
    headers: Message  # case-insensitive, as header names are
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(
    base_url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Answer:
    """One request with the path sent exactly as given (http.client does not
    normalise ``..`` or percent-escapes)."""
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        connection.close()


@contextmanager
def uvicorn_app(app: FastAPI, **config: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a thread, on the port the kernel gives it
    (a port picked free beforehand could be taken by another test worker)."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
