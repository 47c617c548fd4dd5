from typing import Any

from aiohttp.test_utils import TestClient


async def _error(client: TestClient[Any, Any], method: str, path: str, status: int) -> Any:
    response = await client.request(method, path)
    assert response.status == status
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"detail"}
    assert set(body["detail"]) == {"error", "message"}
    assert body["detail"]["message"]
    return body["detail"]


async def test_unknown_route_is_json_404(client: TestClient[Any, Any]) -> None:
    detail = await _error(client, "GET", "/nope", 404)
    assert detail["error"] == "not_found"


async def test_wrong_method_is_json_405_with_allow(client: TestClient[Any, Any]) -> None:
    response = await client.post("/api/air/export/zip/r")
    assert response.status == 405
    assert response.headers["Allow"] == "GET,HEAD"
    assert (await response.json())["detail"]["error"] == "method_not_allowed"


async def test_error_body_is_compact_like_the_original(client: TestClient[Any, Any]) -> None:
    response = await client.get("/api/air/export/list/%20")
    assert response.status == 422
    assert await response.read() == (
        b'{"detail":{"error":"invalid_run_id",'
        b'"message":"render_run_id must not be empty or blank"}}'
    )


async def test_bad_param_run_id_is_its_own_error(client: TestClient[Any, Any]) -> None:
    detail = await _error(client, "GET", "/api/air/export/list/r?param_run_id=..", 422)
    assert detail["error"] == "invalid_param_run_id"
    detail = await _error(client, "GET", "/api/air/export/zip/r?param_run_id=a/b", 422)
    assert detail["error"] == "invalid_param_run_id"
