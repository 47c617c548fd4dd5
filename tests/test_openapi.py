"""The OpenAPI document: exactly the routes the app serves, each with its
methods, path parameters and guard; schemas generated from the pydantic models
(the links routes' bodies among them); the same bytes on every request.
(Whether every answer matches it is tests/test_openapi_fuzz.py.)"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import TypeAdapter, ValidationError

from export_service import __version__
from export_service.core.manifest import ExportManifest
from export_service.core.run_ids import RUN_ID_JSON_SCHEMA
from export_service.http.openapi import OPENAPI_PATH, Readiness, Status, openapi_document
from export_service.schemas import ErrorBody, Link, LinkUpdate
from export_service.signed_urls import sign_url
from tests.helpers import AirTree, ClientFactory, write

REF_TEMPLATE = "#/components/schemas/{model}"
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}
TOKEN = "s3cret"
SIGNING_SECRET = "openapi-test-signing-secret-32-chars"

# Settings that change the document: the file URLs' prefixes, the token.
VARIANTS = {
    "defaults": {},
    "prefixes": {"urls": {"render": "/files/render", "midi_generation": "/files/midi"}},
    "token": {"auth": {"token": TOKEN}},
    "signed": {"auth": {"token": TOKEN, "signing_secret": SIGNING_SECRET}},
}


async def _document(client: TestClient[Any, Any]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.get(OPENAPI_PATH, headers=headers)
    assert response.status == 200
    document: dict[str, Any] = await response.json()
    return document


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


def _served(client: TestClient[Any, Any]) -> set[tuple[str, str]]:
    """(method, path) of every route the app registers, its placeholders
    written as the document writes them."""
    assert client.app is not None
    served = set()
    for route in client.app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical.replace("{tail}", "{run_folder}/{file_path}")
        for token in ("{render_run_id:.*}", "{render_run_id}"):
            path = path.replace(token, "{render_run_id}")
        served.add((route.method, path))
    return served


@pytest.mark.parametrize("variant", sorted(VARIANTS))
async def test_openapi_covers_every_route(make_client: ClientFactory, variant: str) -> None:
    client = await make_client(**VARIANTS[variant])
    document = await _document(client)
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == __version__
    assert set(_operations(document)) == _served(client)
    schemas = document["components"]["schemas"]
    assert list(schemas["ExportManifest"]["properties"]) == [
        "render_run_id",
        "midi_run_id",
        "param_run_id",
        "files",
        "missing",
    ]


async def test_the_openapi_document_itself_is_get_only(client: TestClient[Any, Any]) -> None:
    document = await _document(client)
    assert list(document["paths"][OPENAPI_PATH]) == ["get"]
    head = await client.head(OPENAPI_PATH)
    assert head.status == 405
    for kind in ("list", "zip"):  # the downloads document HEAD, and serve it
        path = f"/api/air/export/{kind}/{{render_run_id}}"
        assert sorted(document["paths"][path]) == ["get", "head"]
        assert (await client.head(path.format(render_run_id="r"))).status == 200


def test_every_path_parameter_is_declared_and_no_other(tree: AirTree) -> None:
    document = openapi_document(tree.settings(**VARIANTS["prefixes"]))
    for (method, path), operation in _operations(document).items():
        declared = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        assert declared == re.findall(r"\{(\w+)\}", path), (method, path)
        assert all(p["required"] for p in operation.get("parameters", []) if p["in"] == "path")


@pytest.mark.parametrize(
    ("name", "kind", "mode"),
    [
        ("ExportManifest", ExportManifest, "serialization"),
        ("Link", Link, "serialization"),
        ("LinkUpdate", LinkUpdate, "validation"),
        ("ErrorBody", ErrorBody, "serialization"),
        ("Status", Status, "serialization"),
        ("Readiness", Readiness, "serialization"),
    ],
)
def test_schemas_are_the_pydantic_models_own(
    tree: AirTree, name: str, kind: type, mode: Any
) -> None:
    """Each body's schema, and every schema it refers to, is what pydantic
    generates for its model in the direction it travels."""
    components = openapi_document(tree.settings())["components"]["schemas"]
    generated = TypeAdapter(kind).json_schema(mode=mode, ref_template=REF_TEMPLATE)
    nested = generated.pop("$defs", {})
    assert components[name] == generated
    for nested_name, schema in nested.items():
        assert components[nested_name] == schema, nested_name


def test_every_reference_names_a_schema_of_the_document(tree: AirTree) -> None:
    document = openapi_document(tree.settings(**VARIANTS["token"]))
    text = json.dumps(document)
    referenced = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', text))
    assert referenced, "no reference found: the pattern no longer matches the document"
    assert referenced <= set(document["components"]["schemas"])


async def test_the_same_bytes_on_every_request(tree: AirTree, client: TestClient[Any, Any]) -> None:
    first = await client.get(OPENAPI_PATH)
    assert first.headers["Content-Type"] == "application/json"
    body = await first.read()
    assert await (await client.get(OPENAPI_PATH)).read() == body
    assert body == json.dumps(openapi_document(tree.settings())).encode()


async def test_the_document_says_which_operations_the_token_guards(
    tree: AirTree, make_client: ClientFactory
) -> None:
    """With a token, each operation the document does not mark open (an empty
    ``security``) lists a 401, and the app answers it 401 without the token;
    the open ones are the three ops routes, and no token, no 401 anywhere."""
    write(tree.render / "r" / "a.wav", b"a")
    client = await make_client(**VARIANTS["token"])
    document = await _document(client)
    assert document["security"] == [{"bearer": []}]
    assert document["components"]["securitySchemes"] == {
        "bearer": {"type": "http", "scheme": "bearer"}
    }
    open_paths = set()
    for (method, path), operation in _operations(document).items():
        url = path.format(render_run_id="r", run_folder="r", file_path="a.wav")
        answer = await client.request(method, url, json={"param_run_id": "p"})
        if operation.get("security") == []:
            open_paths.add(path)
            assert "401" not in operation["responses"]
            assert answer.status == 200, (method, path)
        else:
            assert "401" in operation["responses"], (method, path)
            assert answer.status == 401, (method, path)
    assert open_paths == OPEN_PATHS
    unguarded = openapi_document(tree.settings())
    assert "security" not in unguarded and "securitySchemes" not in unguarded["components"]
    assert not any("401" in op["responses"] for op in _operations(unguarded).values())


async def test_the_document_says_where_signed_urls_are_taken(
    tree: AirTree, make_client: ClientFactory
) -> None:
    """With a signing secret, each GET and HEAD operation the token guards
    declares ``expires`` and ``signature`` and the 403 and 410 they can give,
    and the app gives them: a signed URL is let in without the token, a
    tampered one is 403, an expired one 410. Without a secret none of it is
    in the document."""
    for root in (tree.render, tree.midi, tree.param):
        write(root / "r" / "a.wav", b"a")
    client = await make_client(**VARIANTS["signed"])
    document = await _document(client)
    signed_operations = 0
    for (method, path), operation in _operations(document).items():
        url = path.format(render_run_id="r", run_folder="r", file_path="a.wav")
        names = {parameter["name"] for parameter in operation.get("parameters", [])}
        if method == "PUT" or operation.get("security") == []:
            assert not {"expires", "signature"} & names, (method, path)
            continue
        signed_operations += 1
        assert {"expires", "signature"} <= names, (method, path)
        assert {"403", "410"} <= set(operation["responses"]), (method, path)
        good = sign_url(url, 60, SIGNING_SECRET)
        found = 404 if "/links/" in path else 200  # no link in this tree
        assert (await client.request(method, good)).status == found, (method, path)
        tampered = good.replace("signature=", "signature=A", 1)[:-1]
        assert (await client.request(method, tampered)).status == 403, (method, path)
        expired = sign_url(url, 1, SIGNING_SECRET, now=time.time() - 10)
        assert (await client.request(method, expired)).status == 410, (method, path)
    assert signed_operations == 2 + 2 + 1 + 1 + 2 * 3  # list, zip, links, openapi, files
    unsigned = json.dumps(openapi_document(tree.settings(**VARIANTS["token"])))
    assert '"signature"' not in unsigned and '"410"' not in unsigned


def test_a_link_update_takes_only_a_param_run_id() -> None:
    assert LinkUpdate.model_validate_json('{"param_run_id": "p"}').param_run_id == "p"
    with pytest.raises(ValidationError):
        LinkUpdate.model_validate_json('{"param_run_id": "p", "extra": 1}')
    schema = LinkUpdate.model_json_schema()
    assert schema["properties"]["param_run_id"].items() >= RUN_ID_JSON_SCHEMA.items()
    assert schema["additionalProperties"] is False


def test_a_link_renders_compactly_in_field_order() -> None:
    link = Link(render_run_id="r", param_run_id="p", updated_at=None)
    assert link.model_dump_json() == '{"render_run_id":"r","param_run_id":"p","updated_at":null}'
