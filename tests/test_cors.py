"""cors: the CORS headers on every answer a page on another origin may read
(the export API, the file URLs, the OpenAPI document; 200, 206, 304 and errors
alike), the preflight answered before the bearer token, nothing for an origin
not allowed, nothing at all without ``[cors]``. (A real browser:
test_browser_downloads.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from export_service.http import cors
from export_service.http.cors import ALLOWED_HEADERS, EXPOSED_HEADERS
from tests.helpers import AirTree, ClientFactory, write

PAGE = "https://air.example.com"
OTHER = "https://evil.example.net"
ZIP = "/api/air/export/zip/r"
CORS_CONFIG = {"allowed_origins": [PAGE, "http://localhost:5173"], "max_age_seconds": 120}
TOKEN = "s3cret"


@pytest.fixture
async def cors_client(make_client: ClientFactory, tree: AirTree) -> TestClient[Any, Any]:
    write(tree.render / "r" / "mix.wav", b"RIFF" * 1000)
    write(tree.render / "r" / "stems" / "a.wav", b"a" * 300)
    return await make_client(cors=CORS_CONFIG)


def _access_control(response: ClientResponse) -> dict[str, str]:
    return {
        name: value
        for name, value in response.headers.items()
        if name.lower().startswith("access-control-")
    }


def _exposed(response: ClientResponse) -> set[str]:
    value = response.headers.get("Access-Control-Expose-Headers", "")
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def _preflight(origin: str = PAGE, method: str = "GET", headers: str = "") -> dict[str, str]:
    asked = {"Access-Control-Request-Headers": headers} if headers else {}
    return {"Origin": origin, "Access-Control-Request-Method": method, **asked}


async def test_without_cors_nothing_changes(make_client: ClientFactory, tree: AirTree) -> None:
    """The default (no origin): no Access-Control-* header, no Vary, and a
    preflight is the 405 it always was."""
    write(tree.render / "r" / "mix.wav", b"RIFF")
    client = await make_client()
    answer = await client.get(ZIP, headers={"Origin": PAGE})
    assert answer.status == 200
    assert _access_control(answer) == {} and "Vary" not in answer.headers
    preflight = await client.options(ZIP, headers=_preflight(headers="range"))
    assert preflight.status == 405
    assert (await preflight.json())["detail"]["error"] == "method_not_allowed"
    assert _access_control(preflight) == {} and "Vary" not in preflight.headers


async def test_an_allowed_origin_reads_the_zip_and_its_headers(
    cors_client: TestClient[Any, Any],
) -> None:
    answer = await cors_client.get(ZIP, headers={"Origin": PAGE})
    assert answer.status == 200
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert "Access-Control-Allow-Credentials" not in answer.headers
    assert answer.headers["Vary"] == "Origin"
    exposed = _exposed(answer)
    assert exposed >= {
        "content-disposition",
        "content-length",
        "etag",
        "accept-ranges",
        "content-range",
        "last-modified",
        "retry-after",
        "x-request-id",
    }
    sent = {name.lower() for name in answer.headers if name.lower().startswith("x-export-")}
    assert sent and sent <= exposed  # every X-Export-* header the ZIP carries


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", ZIP, {"Range": "bytes=10-19"}, 206),
        ("HEAD", ZIP, {}, 200),
        ("GET", "/api/air/export/list/r", {}, 200),
        ("GET", "/api/audio/r/mix.wav", {"Range": "bytes=0-3"}, 206),
        ("GET", "/api/air/export/openapi.json", {}, 200),
        ("GET", ZIP + "?param_run_id=a%2Fb", {}, 422),
        ("GET", "/api/audio/r/nope.wav", {}, 404),
        ("GET", "/nope", {}, 404),
        ("POST", ZIP, {}, 405),
        ("GET", ZIP, {"Range": "bytes=99999999-"}, 416),
    ],
)
async def test_every_kind_of_answer_carries_the_origin(
    cors_client: TestClient[Any, Any], method: str, path: str, headers: dict[str, str], status: int
) -> None:
    """A page can read a 206, an error's JSON body, anything the service answers."""
    answer = await cors_client.request(method, path, headers={"Origin": PAGE, **headers})
    assert answer.status == status
    assert answer.headers["Access-Control-Allow-Origin"] == PAGE
    assert _exposed(answer) == {name.lower() for name in EXPOSED_HEADERS}
    if status >= 400:
        assert "error" in (await answer.json())["detail"]


async def test_a_304_carries_the_origin(cors_client: TestClient[Any, Any]) -> None:
    first = await cors_client.get(ZIP, headers={"Origin": PAGE})
    again = await cors_client.get(
        ZIP, headers={"Origin": PAGE, "If-None-Match": first.headers["ETag"]}
    )
    assert again.status == 304
    assert again.headers["Access-Control-Allow-Origin"] == PAGE
    assert again.headers["Vary"] == "Origin"


async def test_the_token_is_still_required_and_its_401_is_readable(
    make_client: ClientFactory, tree: AirTree
) -> None:
    write(tree.render / "r" / "mix.wav", b"RIFF")
    client = await make_client(cors=CORS_CONFIG, auth={"token": TOKEN})
    denied = await client.get(ZIP, headers={"Origin": PAGE})
    assert denied.status == 401
    assert denied.headers["Access-Control-Allow-Origin"] == PAGE
    assert (await denied.json())["detail"]["error"] == "unauthorized"
    allowed = await client.get(ZIP, headers={"Origin": PAGE, "Authorization": f"Bearer {TOKEN}"})
    assert allowed.status == 200 and allowed.headers["Access-Control-Allow-Origin"] == PAGE
    # The browser asks first, without the token: answered, not a 401.
    preflight = await client.options(ZIP, headers=_preflight(headers="authorization"))
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Headers"] == "authorization"


@pytest.mark.parametrize("origin", [OTHER, "https://AIR.example.com", PAGE + "/", "null"])
async def test_another_origin_gets_no_cors_header(
    cors_client: TestClient[Any, Any], origin: str
) -> None:
    """The same bytes as ever, without an Access-Control-* header: the browser
    keeps them from the page. Origins are compared exactly as browsers send
    them."""
    answer = await cors_client.get(ZIP, headers={"Origin": origin})
    assert answer.status == 200 and len(await answer.read()) > 0
    assert _access_control(answer) == {}
    assert answer.headers["Vary"] == "Origin"  # a cache must not hand it to PAGE
    error = await cors_client.get("/nope", headers={"Origin": origin})
    assert error.status == 404 and _access_control(error) == {}


async def test_without_origin_only_vary(cors_client: TestClient[Any, Any]) -> None:
    """curl, the backend's proxy: the same answer, and Vary for caches."""
    answer = await cors_client.get(ZIP)
    assert answer.status == 200
    assert _access_control(answer) == {} and answer.headers["Vary"] == "Origin"


async def test_any_origin(make_client: ClientFactory, tree: AirTree) -> None:
    write(tree.render / "r" / "mix.wav", b"RIFF")
    client = await make_client(cors={"allowed_origins": ["*"]})
    answer = await client.get(ZIP, headers={"Origin": OTHER})
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    preflight = await client.options(ZIP, headers=_preflight(OTHER, headers="range"))
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"


async def test_the_preflight_is_answered(cors_client: TestClient[Any, Any]) -> None:
    answer = await cors_client.options(ZIP, headers=_preflight(headers="Range, if-range"))
    assert answer.status == 204
    assert _access_control(answer) == {
        "Access-Control-Allow-Origin": PAGE,
        "Access-Control-Allow-Methods": "GET, HEAD",
        "Access-Control-Allow-Headers": "range, if-range",
        "Access-Control-Max-Age": "120",
    }
    vary = answer.headers["Vary"]
    assert vary == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    # Asking for no header: the whole list.
    bare = await cors_client.options("/api/audio/r/mix.wav", headers=_preflight(method="HEAD"))
    assert bare.status == 204
    assert bare.headers["Access-Control-Allow-Headers"] == ", ".join(ALLOWED_HEADERS)


@pytest.mark.parametrize(
    ("preflight", "said"),
    [
        (_preflight(OTHER), "is not in cors.allowed_origins"),
        (_preflight(method="PUT"), "only GET or HEAD"),
        (_preflight(headers="range, x-custom"), "x-custom not allowed"),
    ],
)
async def test_a_refused_preflight_is_a_json_403(
    cors_client: TestClient[Any, Any], preflight: dict[str, str], said: str
) -> None:
    answer = await cors_client.options(ZIP, headers=preflight)
    assert answer.status == 403
    detail = (await answer.json())["detail"]
    assert detail["error"] == "cors_preflight_refused" and said in detail["message"]
    if preflight["Origin"] == OTHER:
        assert _access_control(answer) == {}


async def test_an_options_that_is_no_preflight_is_405_as_before(
    cors_client: TestClient[Any, Any],
) -> None:
    answer = await cors_client.options(ZIP, headers={"Origin": PAGE})
    assert answer.status == 405
    assert (await answer.json())["detail"]["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_the_ops_endpoints_answer_no_cors(
    cors_client: TestClient[Any, Any], path: str
) -> None:
    """For orchestrators and scrapers, not pages: as without [cors]."""
    answer = await cors_client.get(path, headers={"Origin": PAGE})
    assert _access_control(answer) == {} and "Vary" not in answer.headers
    preflight = await cors_client.options(path, headers=_preflight())
    assert preflight.status == 405 and _access_control(preflight) == {}


def test_every_x_export_header_the_service_sends_is_exposed() -> None:
    """Each X-Export-* name in the service's code (but X-Export-Accel, which
    nginx sends the backend) is in the exposed list: a new one must be added
    to zip_response.EXPORT_HEADERS."""
    package = Path(cors.__file__).parent
    named = {
        name.lower()
        for source in package.glob("*.py")
        for name in re.findall(r"X-Export-[A-Za-z-]+", source.read_text())
    }
    assert "x-export-files" in named
    assert named - {"x-export-accel"} <= {name.lower() for name in EXPOSED_HEADERS}
