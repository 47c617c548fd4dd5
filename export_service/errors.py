"""The one error hierarchy of the service.

Every error a client can see is an :class:`ExportServiceError`; the middleware in
``http/app.py`` turns it into ``{"detail": {"error": code, "message": text}}``
(:func:`error_body`, which the backend's proxy uses too) with its status. The
shape is the original AIR module's, whose front end reads ``detail.error``.
"""

from __future__ import annotations

import errno

# How long a client refused for want of room (a ZIP slot, file descriptors,
# the service itself behind the backend's proxy) is asked to wait, in the
# ``Retry-After`` of the answer.
RETRY_AFTER_SECONDS = 5


def retry_later() -> dict[str, str]:
    """The headers of an answer that asks the client to try again shortly."""
    return {"Retry-After": str(RETRY_AFTER_SECONDS)}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The body of every error answer, the service's and the backend proxy's
    alike: ``{"detail": {"error": code, "message": message}}``
    (``schemas.ErrorBody`` documents it)."""
    return {"detail": {"error": code, "message": message}}


class ExportServiceError(Exception):
    """Base of every error the service reports to a client."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidRunId(ExportServiceError):
    status = 422
    code = "invalid_run_id"


class InvalidParamRunId(ExportServiceError):
    status = 422
    code = "invalid_param_run_id"


class InvalidSteps(ExportServiceError):
    """A ``steps`` value that is empty or names no step."""

    status = 422
    code = "invalid_steps"


class InvalidPrefix(ExportServiceError):
    """A ``prefix`` that is not a plain path inside the run folder."""

    status = 422
    code = "invalid_prefix"


class InvalidRequestBody(ExportServiceError):
    status = 422
    code = "invalid_body"


class NotFound(ExportServiceError):
    status = 404
    code = "not_found"


class LinkNotFound(ExportServiceError):
    status = 404
    code = "link_not_found"


class LinksFileCorrupt(ExportServiceError):
    status = 503
    code = "links_file_corrupt"


class LinksFileTooLarge(ExportServiceError):
    """The links file is over ``links.max_bytes``: it is not parsed."""

    status = 503
    code = "links_file_too_large"


class LinksFileUnwritable(ExportServiceError):
    """The links folder is read-only, full, or not writable by this process."""

    status = 503
    code = "links_file_unwritable"


class Unauthorized(ExportServiceError):
    status = 401
    code = "unauthorized"


class InvalidSignature(ExportServiceError):
    """A signed-URL request (its query has ``expires`` or ``signature``)
    whose signature is missing, malformed or wrong, whose expiry lies beyond
    ``auth.max_signed_url_seconds``, or made while no signing secret is set."""

    status = 403
    code = "invalid_signature"


class UrlExpired(ExportServiceError):
    """A signed URL whose signature is good but whose expiry has passed."""

    status = 410
    code = "url_expired"


class CorsPreflightRefused(ExportServiceError):
    """A CORS preflight from an origin not in ``cors.allowed_origins``, or
    asking for a method or header a cross-origin page may not use."""

    status = 403
    code = "cors_preflight_refused"


class ExportTooLarge(ExportServiceError):
    """More files than ``limits.max_files_per_export``: refused while the run
    is scanned, before its listing could use up the memory."""

    status = 422
    code = "export_too_large"


class TooManyDownloads(ExportServiceError):
    status = 503
    code = "too_many_downloads"


class TooManyDownloadsPerClient(ExportServiceError):
    """One client already holds ``limits.max_zips_per_client`` ZIP slots."""

    status = 429
    code = "too_many_downloads_per_client"


class RangeNotSatisfiable(ExportServiceError):
    status = 416
    code = "range_not_satisfiable"


class PreconditionFailed(ExportServiceError):
    status = 412
    code = "precondition_failed"


class OutOfDescriptors(ExportServiceError):
    """The process (or the system) has no file descriptor left to open with."""

    status = 503
    code = "out_of_descriptors"


def raise_if_out_of_descriptors(error: OSError) -> None:
    """Turn EMFILE/ENFILE into :class:`OutOfDescriptors`.

    Called where an OSError would otherwise mean "this file or folder is not
    there": without a descriptor to open with, every file looks missing, and
    a manifest or ZIP would come out empty with a 200.
    """
    if error.errno in (errno.EMFILE, errno.ENFILE):
        raise OutOfDescriptors(
            "the service has run out of file descriptors; try again shortly",
            headers=retry_later(),
        ) from error


class NotReady(ExportServiceError):
    status = 503
    code = "not_ready"


class SourceChanged(ExportServiceError):
    """A file changed or failed after the ZIP's headers went out.

    Never rendered as a response (the status line is already sent): the
    download is cut short instead, so the client sees an incomplete transfer.
    """

    code = "source_changed"


class ConfigError(Exception):
    """The configuration file is missing or invalid; the message names the key."""
