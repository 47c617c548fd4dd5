"""schemathesis against the served OpenAPI document: no 5xx, and every
response matches the document (status, content type, body schema).

Each operation's hypothesis strategy is driven directly: schemathesis's lazy
pytest loader (``schemathesis.pytest.from_fixture``) needs a pytest private
that pytest 9 removed.
"""

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from tests.live import live_service

EXAMPLES_PER_OPERATION = 40


def _unwrap(result: Any) -> Any:
    assert isinstance(result, Ok), result
    return result.ok()


def test_every_operation_answers_as_documented() -> None:
    with live_service() as service:
        schema = schemathesis.openapi.from_url(f"{service.base_url}/api/air/export/openapi.json")
        operations = [_unwrap(result) for result in schema.get_all_operations()]
        assert len(operations) == 14  # list, zip x2, links x2, openapi, 3 ops, 3 file prefixes x2
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def answers_as_documented(case: Any) -> None:
                case.call_and_validate()

            answers_as_documented()
