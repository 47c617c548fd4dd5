"""The OpenAPI 3.1 document, its schemas generated from the pydantic models."""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, TypeAdapter

from .. import __version__
from ..config import Settings
from ..core.manifest import ExportManifest
from ..core.run_ids import RUN_ID_JSON_SCHEMA
from ..core.selection import MAX_PREFIXES, PREFIX_JSON_SCHEMA, STEPS_JSON_SCHEMA
from ..schemas import EXPORT_PREFIX, ErrorBody, Link, LinkUpdate

OPENAPI_PATH = EXPORT_PREFIX + "/openapi.json"


class Status(BaseModel):
    status: str


class Readiness(BaseModel):
    """/readyz's 200: ``ready``, or ``degraded`` with what the service works
    around (an unusable or unwritable links file, few free descriptors)."""

    status: Literal["ready", "degraded"]
    problems: list[str] = []


def _ref(model: type) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    texts = {
        401: "missing or wrong bearer token",
        403: "invalid_signature: a signed URL whose signature is missing, malformed or wrong "
        "(another path, query or method), or whose expiry lies beyond "
        "auth.max_signed_url_seconds",
        404: "not found",
        413: "request body too large",
        412: "If-Match or If-Unmodified-Since failed",
        410: "url_expired: a signed URL whose expiry has passed",
        416: "range not satisfiable",
        422: "invalid run id, param run id or body; or export_too_large (more files than "
        "limits.max_files_per_export, or folders than limits.max_folders_per_export)",
        429: "too_many_downloads_per_client: this client holds limits.max_zips_per_client "
        "ZIP downloads",
        503: (
            "links file unusable, too large or unwritable, too many downloads, out of file "
            "descriptors, or not ready (a root missing or unreadable)"
        ),
    }
    return {str(status): _json(ErrorBody, texts[status]) for status in statuses}


def _selective(errors: dict[str, Any]) -> dict[str, Any]:
    """The export operations' errors, their 422 naming the selection's two."""
    unprocessable = _json(
        ErrorBody,
        "invalid run id or param run id, invalid_steps or invalid_prefix; or "
        "export_too_large (more files than limits.max_files_per_export, or folders than "
        "limits.max_folders_per_export)",
    )
    return {**errors, "422": unprocessable}


def _path_param(
    name: str, description: str, schema: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_PARAM_RUN_ID = {
    "name": "param_run_id",
    "in": "query",
    "required": False,
    "description": "param run to include; empty or absent: the one linked in step_links.json",
    "schema": {"anyOf": [{"const": ""}, RUN_ID_JSON_SCHEMA]},
}
# A selective export (selection.py): both repeatable, as ?a=1&a=2.
_STEPS = {
    "name": "steps",
    "in": "query",
    "required": False,
    "description": "only these steps: comma-separated, repeatable, any of render, "
    "midi_generation, param_generation (steps=render,midi_generation). An unselected step "
    "is not looked up, and is never in missing. Absent: all three. An empty or unknown "
    "step: 422 invalid_steps",
    "style": "form",
    "explode": True,
    "schema": {"type": "array", "items": STEPS_JSON_SCHEMA},
}
_PREFIX = {
    "name": "prefix",
    "in": "query",
    "required": False,
    "description": "only the files under this path inside the run folder (repeatable: "
    "under any of them), matched on whole segments and case: prefix=stems takes "
    "stems/kick.wav and a file named stems, not stems2/x.wav; a trailing / is ignored. "
    "Absolute, with . or .. or an empty segment, a backslash or a control character: "
    "422 invalid_prefix",
    "style": "form",
    "explode": True,
    "schema": {"type": "array", "items": PREFIX_JSON_SCHEMA, "maxItems": MAX_PREFIXES},
}
# A signed URL's two query pairs (signed_urls.py), declared on the GET/HEAD
# operations when auth.signing_secret is set.
_SIGNED_URL = [
    {
        "name": "expires",
        "in": "query",
        "required": False,
        "description": "a signed URL's expiry, unix seconds (made by sign_url or "
        "export-service sign-url, with signature)",
        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
    },
    {
        "name": "signature",
        "in": "query",
        "required": False,
        "description": "a signed URL's signature over its method class, path, query and "
        "expiry: accepted in place of the bearer token for that URL only",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
    },
]
_RENDER_RUN_ID = _path_param(
    "render_run_id", "the render run id (the project's id)", RUN_ID_JSON_SCHEMA
)


def openapi_document(settings: Settings) -> dict[str, Any]:
    auth = bool(settings.auth.token)
    signed = bool(settings.auth.signing_secret)
    denied = (401,) if auth else ()
    # What a GET/HEAD operation adds when signed URLs are on.
    signed_parameters = _SIGNED_URL if signed else []
    signed_denied = (403, 410) if signed else ()
    serialized: list[tuple[str, type]] = [
        ("ExportManifest", ExportManifest),
        ("Link", Link),
        ("ErrorBody", ErrorBody),
        ("Status", Status),
        ("Readiness", Readiness),
    ]
    _, definitions = TypeAdapter.json_schemas(
        [(name, "serialization", TypeAdapter(kind)) for name, kind in serialized]
        + [("LinkUpdate", "validation", TypeAdapter(LinkUpdate))],
        ref_template="#/components/schemas/{model}",
    )
    zip_body = {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    zip_operation = {
        "parameters": [
            _RENDER_RUN_ID,
            _PARAM_RUN_ID,
            _STEPS,
            _PREFIX,
            *signed_parameters,
            {
                "name": "Range",
                "in": "header",
                "required": False,
                "description": "one byte range (bytes=a-b, bytes=a-, bytes=-n); others: all",
                "schema": {"type": "string"},
            },
            {
                "name": "If-Range",
                "in": "header",
                "required": False,
                "description": "the ETag or Last-Modified the range belongs to",
                "schema": {"type": "string"},
            },
        ],
        "responses": {
            "200": {
                "description": "the export as one stored ZIP, streamed, exact length",
                "content": zip_body,
            },
            "206": {"description": "one range of that ZIP", "content": zip_body},
            "304": {"description": "not modified (If-None-Match, If-Modified-Since)"},
            **_selective(_errors(*denied, *signed_denied, 412, 416, 422, 429, 503)),
        },
    }
    file_operation = {
        "parameters": [
            _path_param("run_folder", "run folder name, as in the manifest URL"),
            _path_param("file_path", "path inside the run folder (segments percent-encoded)"),
            *signed_parameters,
        ],
        "responses": {
            "200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
            "206": {"description": "the requested range", "content": {"*/*": {"schema": {}}}},
            "304": {"description": "not modified (If-None-Match, If-Modified-Since)"},
            **_errors(*denied, *signed_denied, 404, 412, 416, 503),
        },
    }
    manifest_operation = {
        "parameters": [_RENDER_RUN_ID, _PARAM_RUN_ID, _STEPS, _PREFIX, *signed_parameters],
        "responses": {
            "200": _json(ExportManifest, "the manifest, with a strong ETag of its bytes"),
            "304": {"description": "not modified (If-None-Match)"},
            **_selective(_errors(*denied, *signed_denied, 412, 422, 503)),
        },
    }
    paths: dict[str, Any] = {
        f"{EXPORT_PREFIX}/list/{{render_run_id}}": {
            "get": {"summary": "The export manifest of one project", **manifest_operation},
            "head": {"summary": "The manifest's headers (ETag), no body", **manifest_operation},
        },
        f"{EXPORT_PREFIX}/zip/{{render_run_id}}": {
            "get": {"summary": "All files of the manifest as one ZIP", **zip_operation},
            "head": {"summary": "The ZIP's headers, no body", **zip_operation},
        },
        f"{EXPORT_PREFIX}/links/{{render_run_id}}": {
            "get": {
                "summary": "The param run linked to a render run",
                "parameters": [_RENDER_RUN_ID, *signed_parameters],
                "responses": {
                    "200": _json(Link, "the link"),
                    **_errors(*denied, *signed_denied, 404, 422),
                },
            },
            "put": {
                "summary": "Link a param run to a render run",
                "parameters": [_RENDER_RUN_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(LinkUpdate)}},
                },
                "responses": {
                    "200": _json(Link, "the link as stored"),
                    **_errors(*denied, 413, 422, 503),
                },
            },
        },
        OPENAPI_PATH: {
            "get": {
                "summary": "This document",
                "parameters": signed_parameters,
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    **_errors(*denied, *signed_denied),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json(Status, "the process is up")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 503 when a root is missing or unreadable; 200 ready, or "
                "degraded with the problems (links file unusable or unwritable, few descriptors)",
                "security": [],
                "responses": {"200": _json(Readiness, "ready or degraded"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    for step, prefix in settings.urls:
        if step != "base":
            paths[f"{prefix}/{{run_folder}}/{{file_path}}"] = {
                "get": {"summary": f"One {step} file, as linked by the manifest", **file_operation},
                "head": {"summary": f"One {step} file's headers", **file_operation},
            }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "export-service",
            "version": __version__,
            "description": "An AIR project's artifacts as a JSON manifest or one ZIP.",
        },
        "paths": paths,
        "components": {"schemas": definitions["$defs"]},
    }
    if auth:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document


def openapi_route(settings: Settings) -> web.RouteDef:
    body = json.dumps(openapi_document(settings)).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return web.get(OPENAPI_PATH, openapi, allow_head=False)
