import pytest

from export_service.core.run_ids import (
    check_param_run_id,
    check_render_run_id,
    linked_param_run_id_as_sent,
    param_run_id_as_sent,
    render_run_id_as_sent,
    run_id_problem,
)
from export_service.errors import InvalidParamRunId, InvalidRunId

VALID = [
    "rnd_7f3a9c",
    "20261101_101200_prm_51be02",
    "a" * 200,
    "ünïcode-ид",
    "%2e%2e",
    "a.b",
    "...",
]
INVALID = [
    "",
    " ",
    "\t\n",
    ".",
    "..",
    "a/b",
    "a\\b",
    "/abs",
    "a\x00b",
    "a\x1fb",
    "a\x7fb",
    "a\x85b",
    "a\udcffb",
    "a" * 201,
]


@pytest.mark.parametrize("value", VALID)
def test_valid_ids_pass(value: str) -> None:
    assert run_id_problem(value) is None
    assert check_render_run_id(value) == value


@pytest.mark.parametrize("value", INVALID)
def test_ids_that_could_leave_a_root_are_refused(value: str) -> None:
    assert run_id_problem(value) is not None
    with pytest.raises(InvalidRunId) as render_error:
        check_render_run_id(value)
    assert render_error.value.code == "invalid_run_id"
    assert render_error.value.status == 422
    with pytest.raises(InvalidParamRunId) as param_error:
        check_param_run_id(value)
    assert param_error.value.code == "invalid_param_run_id"


def test_ids_as_sent_are_stripped_and_a_blank_param_run_id_is_absent() -> None:
    assert render_run_id_as_sent(" \tabc\n") == "abc"
    assert param_run_id_as_sent(" prm ") == "prm"
    assert param_run_id_as_sent(" \t") is None
    assert param_run_id_as_sent("") is None
    assert param_run_id_as_sent(None) is None
    with pytest.raises(InvalidRunId):
        render_run_id_as_sent("  ")
    with pytest.raises(InvalidRunId):
        render_run_id_as_sent(" .. ")
    with pytest.raises(InvalidParamRunId):
        param_run_id_as_sent(" a/b ")
    assert linked_param_run_id_as_sent(" prm\n") == "prm"
    with pytest.raises(InvalidParamRunId):  # a link needs one
        linked_param_run_id_as_sent(" ")
