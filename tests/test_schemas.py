"""The links routes' bodies."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from export_service.core.run_ids import RUN_ID_JSON_SCHEMA
from export_service.schemas import Link, LinkUpdate


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
