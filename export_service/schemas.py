"""The API's shape shared by its handlers, its OpenAPI document and the
backend's proxy router: the path prefix of the export routes, the bodies of
the links routes and the error body."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, WithJsonSchema

from .core.run_ids import RUN_ID_JSON_SCHEMA

EXPORT_PREFIX = "/api/air/export"


class LinkUpdate(BaseModel):
    """The body of ``PUT /api/air/export/links/{render_run_id}``."""

    model_config = ConfigDict(extra="forbid")
    # Checked by check_param_run_id (so a bad id is invalid_param_run_id, not
    # invalid_body); the schema only documents the rule.
    param_run_id: Annotated[str, WithJsonSchema(RUN_ID_JSON_SCHEMA)]


class Link(BaseModel):
    render_run_id: str
    param_run_id: str
    updated_at: float | None


class ErrorDetail(BaseModel):
    error: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: the AIR export module's shape."""

    detail: ErrorDetail
