"""errors: the one error hierarchy, each error's HTTP status and JSON code, and
the turning of a process out of descriptors into its own error. (How app.py's
middleware renders them: test_app.py.)"""

from __future__ import annotations

import errno

import pytest

from export_service import errors
from export_service.errors import (
    ConfigError,
    ExportServiceError,
    OutOfDescriptors,
    raise_if_out_of_descriptors,
)

# What clients see: the status and the ``detail.error`` of each error.
STATUS_AND_CODE = {
    "ExportServiceError": (500, "internal_error"),
    "InvalidRunId": (422, "invalid_run_id"),
    "InvalidParamRunId": (422, "invalid_param_run_id"),
    "InvalidSteps": (422, "invalid_steps"),
    "InvalidPrefix": (422, "invalid_prefix"),
    "InvalidRequestBody": (422, "invalid_body"),
    "NotFound": (404, "not_found"),
    "LinkNotFound": (404, "link_not_found"),
    "LinksFileCorrupt": (503, "links_file_corrupt"),
    "LinksFileUnwritable": (503, "links_file_unwritable"),
    "LinksFileTooLarge": (503, "links_file_too_large"),
    "Unauthorized": (401, "unauthorized"),
    "InvalidSignature": (403, "invalid_signature"),
    "UrlExpired": (410, "url_expired"),
    "CorsPreflightRefused": (403, "cors_preflight_refused"),
    "ExportTooLarge": (422, "export_too_large"),
    "TooManyDownloads": (503, "too_many_downloads"),
    "TooManyDownloadsPerClient": (429, "too_many_downloads_per_client"),
    "RangeNotSatisfiable": (416, "range_not_satisfiable"),
    "PreconditionFailed": (412, "precondition_failed"),
    "OutOfDescriptors": (503, "out_of_descriptors"),
    "NotReady": (503, "not_ready"),
    "SourceChanged": (500, "source_changed"),  # never rendered: the download is cut instead
}


def _hierarchy() -> dict[str, type[ExportServiceError]]:
    """Every error class the module defines that a client can be sent."""
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, ExportServiceError)
    }


def test_each_error_has_its_status_and_code() -> None:
    found = {name: (error.status, error.code) for name, error in _hierarchy().items()}
    assert found == STATUS_AND_CODE


def test_no_two_errors_share_a_code() -> None:
    codes = [error.code for error in _hierarchy().values()]
    assert len(codes) == len(set(codes)), sorted(codes)


def test_an_error_keeps_its_message_and_headers_and_shares_no_headers() -> None:
    given = errors.TooManyDownloads("busy", headers={"Retry-After": "5"})
    assert (given.message, str(given), given.headers) == ("busy", "busy", {"Retry-After": "5"})
    first, second = errors.NotFound("a"), errors.NotFound("b")
    first.headers["X"] = "1"
    assert second.headers == {}


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE])
def test_no_descriptor_left_is_out_of_descriptors_with_retry_after(number: int) -> None:
    cause = OSError(number, "Too many open files")
    with pytest.raises(OutOfDescriptors) as raised:
        raise_if_out_of_descriptors(cause)
    assert raised.value.__cause__ is cause
    assert raised.value.headers == {"Retry-After": "5"}
    assert "file descriptors" in raised.value.message


@pytest.mark.parametrize("number", [errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.EIO, None])
def test_any_other_os_error_is_left_to_the_caller(number: int | None) -> None:
    error = OSError(number, "other") if number is not None else OSError("no errno")
    raise_if_out_of_descriptors(error)  # returns: the caller treats it as "not there"


def test_a_config_error_is_no_client_error() -> None:
    """The operator's error, raised while the config is read (the CLI reports
    it and exits), never an answer the JSON middleware renders for a client."""
    assert issubclass(ConfigError, Exception)
    assert not issubclass(ConfigError, ExportServiceError)
    assert "ConfigError" not in _hierarchy()
