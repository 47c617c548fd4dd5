"""The manifest's file URLs: ``GET|HEAD <prefix>/<run folder>/<path>``.

The service's own file response (:class:`FileUrlResponse`, a
:class:`.StreamedResponse` as the ZIP's is), not aiohttp's ``FileResponse``,
so that the file URLs follow the same rules as the ZIP: ``If-Range`` with the strong
ETag (mtime, ctime and size: a rewrite that restores the mtime still changes
it), never with a date, one byte range
(several, or another unit, give the whole file), a 416 with
``Content-Range: bytes */N``, 304 and 412 from the shared preconditions,
and every error in the service's JSON shape.

``Last-Modified`` (the mtime) is sent but never validates: no date in
``If-Range`` gives a 206, no ``If-Modified-Since`` a 304, and an
``If-Unmodified-Since`` fails (412). A date cannot tell two versions apart
once the mtime can be restored (``cp -p``, ``rsync -t``, ``tar x``, ``touch
-d``): the bytes change, the date stays. Only the ctime shows such a change,
and a client's date cannot carry it; a rule on the ctime's age would also
trust the service's clock to agree with the file system's (NFS, SMB and FUSE
stamp times with the server's clock).

The file is opened and checked in one hop off the event loop (closed there
if the client is gone by then), then sent from that very descriptor with
``sendfile`` in 1 MiB pieces, under one send deadline that moves while the
client takes bytes (:mod:`..aio.send_progress`): a slow but steady reader is
served to the end, one that stops taking bytes is cut after
``limits.send_timeout_seconds``. The body bytes sent are counted for the
access log.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
from datetime import UTC, datetime

from aiohttp import hdrs, web

from ..aio.offload import open_off_loop
from ..aio.send_progress import SendProgress
from ..core.etags import file_etag
from ..core.manifest import Step
from ..core.safe_files import RootFile, open_root_file
from ..core.urls import content_disposition, url_path_segments
from ..errors import SourceChanged
from .access import note_body_bytes
from .conditional import precondition_response
from .keys import IO_EXECUTOR, SETTINGS
from .streamed import StreamedResponse

# The name log queries select on: obs/logs.py, LOGGER_NAMES.
log = logging.getLogger("export_service.file_urls")

# sendfile() in pieces of this size: the body bytes sent are counted per
# piece, and a piece is what a file that shrank can overrun by.
SENDFILE_PIECE = 1024 * 1024

# What the AIR steps write; mimetypes covers the rest.
_CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".mid": "audio/midi",
    ".midi": "audio/midi",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".json": "application/json",
}


def content_type(name: str) -> str:
    extension = os.path.splitext(name)[1].lower()
    guessed = _CONTENT_TYPES.get(extension) or mimetypes.guess_type(name)[0]
    return guessed or "application/octet-stream"


def file_route(step: Step, prefix: str) -> web.RouteDef:
    """The route of one root's file URLs. The tail matches any character,
    newlines included: every name a manifest lists must be fetchable."""

    async def serve_file(request: web.Request) -> web.StreamResponse:
        raw_tail = request.rel_url.raw_path[len(prefix) + 1 :]
        root = str(getattr(request.app[SETTINGS].roots, step))
        opened = await open_off_loop(request.app[IO_EXECUTOR], open_root_file, root, raw_tail)
        try:
            etag = file_etag(opened.info)
            last_modified = datetime.fromtimestamp(opened.info.st_mtime_ns // 1_000_000_000, UTC)
            # The date never validates (see the module's docstring): the mtime can be restored.
            cached = precondition_response(request, etag, last_modified)
            if cached is not None:
                return cached
            name = url_path_segments(raw_tail)[-1]
            return await FileUrlResponse(request, opened, name, etag, last_modified).send()
        finally:
            opened.close()

    return web.get(prefix + r"/{tail:[\s\S]+}", serve_file, name=f"file_{step}")


class FileUrlResponse(StreamedResponse):
    """One answer to a GET or HEAD of an opened file: 200 or 206 (``Range``,
    ``If-Range``), 416 for a range outside it, the body for a GET, sent with
    ``sendfile`` from the descriptor that was checked."""

    what = "the file"

    def __init__(
        self,
        request: web.Request,
        opened: RootFile,
        name: str,
        etag: str,
        last_modified: datetime,
    ) -> None:
        super().__init__(request)
        self._file = opened.file
        self.headers.update(
            {
                hdrs.ETAG: etag,
                hdrs.ACCEPT_RANGES: "bytes",
                # The name the URL asked for (not a link's target), so that
                # curl -OJ and "save as" keep it; inline: shown or played in place.
                hdrs.CONTENT_DISPOSITION: content_disposition("inline", name, ascii_only=False),
            }
        )
        self._describe_body(
            opened.info.st_size, etag, content_type(opened.real_path), last_modified
        )

    async def _send_body(self, progress: SendProgress) -> None:
        """``sendfile`` in pieces of :data:`SENDFILE_PIECE`, each counted for
        the access log as it goes (:func:`.note_body_bytes`)."""
        loop = asyncio.get_running_loop()
        file, offset, count = self._file, self._first, self._last - self._first + 1
        sent = 0
        while sent < count:
            transport = self._request.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the client went away")
            start = offset + sent
            file.seek(start)  # sendfile leaves the position after what it sent, even on error
            try:
                with progress.sending():
                    piece = await loop.sendfile(
                        transport, file, start, min(SENDFILE_PIECE, count - sent)
                    )
            except (OSError, asyncio.CancelledError):
                note_body_bytes(max(0, file.tell() - start))
                raise
            note_body_bytes(piece)
            progress.queued += piece
            sent += piece
            if piece == 0:
                raise SourceChanged("it shrank while being sent")

    def _on_stalled(self, send_timeout: float) -> None:
        log.info("file %s cut: the client took nothing for %s s", self._request.path, send_timeout)

    def _on_source_changed(self, error: SourceChanged) -> None:
        log.error("file %s cut short: %s", self._request.path, error.message)

    def _on_client_gone(self, error: ConnectionError) -> None:
        log.info("file %s: the client went away", self._request.path)

    def _on_cancelled(self) -> None:
        """Nothing to tell: the access line says how the request ended."""

    def _on_failed(self, error: Exception) -> None:
        # a read error (EIO)
        log.error(
            "file %s cut: it failed after the headers went out (%s); the connection is aborted",
            self._request.path,
            error,
        )
