"""The API routes' run-id segment: every character reaches the run-id check."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import raw_exchange


@pytest.mark.parametrize("control", ["%0A", "%0D", "%09", "%0D%0A"])
@pytest.mark.parametrize(
    ("method", "route"),
    [("GET", "list"), ("GET", "zip"), ("HEAD", "zip"), ("GET", "links"), ("PUT", "links")],
)
async def test_a_control_character_in_the_run_id_is_a_422(
    client: TestClient[Any, Any], method: str, route: str, control: str
) -> None:
    body = b'{"param_run_id": "p"}' if method == "PUT" else b""
    request = (
        f"{method} /api/air/export/{route}/a{control}b HTTP/1.1\r\nHost: t\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    head, answer = await raw_exchange(client, request)
    assert head.split()[1] == b"422", head
    if method != "HEAD":
        assert json.loads(answer)["detail"]["error"] == "invalid_run_id"
