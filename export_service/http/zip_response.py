"""The ZIP download as an HTTP response, for a planned :class:`ExportArchive`.

Three jobs, each in its own method: the headers, from the archive and the
request's range; the send loop, batches read off the event loop and written
under the send timeout; and how a download ended, told to the logs and the
metrics. A download ends in one of these ways:

- finished: every byte of the range went out, the response is ended;
- stalled: the client took no byte for ``limits.send_timeout_seconds``
  (``stalled``), the connection is aborted;
- source changed: a file is no longer the planned one (``source_changed``),
  the connection is closed short of its length, so the client sees an
  incomplete transfer rather than a complete-looking broken ZIP;
- client gone: the connection broke, or the client hung up and aiohttp
  cancelled the handler (``client_gone``);
- shutdown: the service cancelled it while stopping (``shutdown``);
- error: anything else failed after the headers went out (``error``): the
  connection is aborted, so the client sees a short transfer, never a
  second response inside the body; the access line says 500, ``error``.

The label in brackets is that of ``export_zip_downloads_cut_short_total``; a
download whose last byte had already left counts as finished.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from aiohttp import hdrs, web

from ..aio.offload import run_blocking
from ..aio.send_progress import SendProgress
from ..aio.streaming import OffloadedChunks
from ..core.descriptors import require_descriptors
from ..core.safe_files import DESCRIPTORS_PER_DOWNLOAD
from ..core.selection import Selection
from ..core.urls import content_disposition as named
from ..errors import SourceChanged
from ..zip.archive import ExportArchive
from .access import abort_after_headers, body_complete, note_aborted, note_connection_error
from .byte_ranges import requested_range
from .keys import IO_EXECUTOR, METRICS, SETTINGS, SHUTTING_DOWN, ZIP_EXECUTOR

# The name log queries select on: obs/logs.py, LOGGER_NAMES.
log = logging.getLogger("export_service.routes")

# Paths below the run folders that could not be listed (their files are in
# neither the manifest nor the ZIP); the log names them.
UNLISTED_HEADER = "X-Export-Unlisted-Paths"
FILES_HEADER = "X-Export-Files"
SKIPPED_HEADER = "X-Export-Skipped-Files"
# Every X-Export-* header the service sends (a page on another origin can read
# them: cors.py exposes this tuple).
EXPORT_HEADERS = (FILES_HEADER, SKIPPED_HEADER, UNLISTED_HEADER)


def content_disposition(render_run_id: str, selection: Selection | None = None) -> str:
    """``attachment`` with an ASCII ``filename`` and, where that had to change
    the name, the exact one as RFC 6266 ``filename*``: ``export_<id>.zip``,
    a selective export's with its selection before ``.zip``
    (``export_<id>_render.zip``: :meth:`.Selection.file_name_suffix`)."""
    suffix = selection.file_name_suffix() if selection is not None else ""
    return named("attachment", f"export_{render_run_id}{suffix}.zip")


class ZipResponse:
    """One answer to a GET or HEAD of a planned archive: 200 or 206 (``Range``,
    ``If-Range``), 416 for a range outside it, the body for a GET."""

    def __init__(
        self,
        request: web.Request,
        archive: ExportArchive,
        render_run_id: str,
        selection: Selection | None = None,
    ) -> None:
        self._request = request
        self._archive = archive
        self._render_run_id = render_run_id
        self._selection = selection
        self._metrics = request.app[METRICS]
        self._response = web.StreamResponse()

    async def send(self) -> web.StreamResponse:
        request, archive = self._request, self._archive
        streams = request.method != hdrs.METH_HEAD
        if streams:  # after a 200 a download short of descriptors could only stop at 0 bytes
            await run_blocking(
                request.app[IO_EXECUTOR], require_descriptors, DESCRIPTORS_PER_DOWNLOAD
            )
        byte_range = requested_range(
            request.headers.get(hdrs.RANGE),
            request.headers.get(hdrs.IF_RANGE),
            archive.size,
            archive.etag,
        )
        first, last = byte_range or (0, archive.size - 1)
        self._set_headers(first, last, partial=byte_range is not None)
        self._metrics.count_unlisted(archive.unlisted)  # once per scan, as for a manifest
        await self._response.prepare(request)
        if streams:
            await self._stream(first, last)
        return self._response

    def _set_headers(self, first: int, last: int, partial: bool) -> None:
        archive, response = self._archive, self._response
        response.set_status(206 if partial else 200)
        response.headers.update(
            {
                hdrs.CONTENT_DISPOSITION: content_disposition(self._render_run_id, self._selection),
                hdrs.ETAG: archive.etag,
                hdrs.ACCEPT_RANGES: "bytes",
                FILES_HEADER: str(len(archive.entries)),
                SKIPPED_HEADER: str(len(archive.skipped)),
                UNLISTED_HEADER: str(archive.unlisted.total()),
                # Proxies (nginx) must pass the stream on as it comes, not buffer it.
                "X-Accel-Buffering": "no",
            }
        )
        if partial:
            response.headers[hdrs.CONTENT_RANGE] = f"bytes {first}-{last}/{archive.size}"
        response.content_type = "application/zip"
        response.content_length = last - first + 1
        response.last_modified = archive.last_modified

    async def _stream(self, first: int, last: int) -> None:
        """Bytes ``first`` to ``last`` of the archive, then the end of the
        response; or, cut short, how it ended goes to the logs and metrics."""
        limits = self._request.app[SETTINGS].limits
        self._metrics.files_skipped.inc(len(self._archive.skipped))
        self._metrics.zips_in_flight.inc()
        # Set however the download ends: a CRC pass still running for it
        # stops between two chunks and closes its file.
        cancelled = threading.Event()
        chunks = OffloadedChunks(
            self._archive.chunks(first, last, cancelled),
            self._request.app[ZIP_EXECUTOR],
            limits.batch_bytes,
        )
        try:
            await self._send_all(chunks, limits.send_timeout_seconds)
        except TimeoutError:
            self._stalled(limits.send_timeout_seconds)
            return
        except SourceChanged as error:
            self._source_changed(error)
            return
        except ConnectionError as error:
            self._connection_broke(error)
            return
        except asyncio.CancelledError:
            self._cancelled()
            raise
        except Exception as error:  # the status line is out: no other answer can follow
            self._failed(error)
            return
        finally:
            cancelled.set()
            chunks.close()
            self._metrics.zips_in_flight.dec()
        await self._response.write_eof()

    async def _send_all(self, chunks: OffloadedChunks, send_timeout: float) -> None:
        """Write every batch; TimeoutError once the client has taken no byte
        for ``send_timeout`` seconds (a slow but steady one is not cut)."""
        async with asyncio.timeout(send_timeout) as deadline:
            progress = SendProgress(self._request.transport, deadline, send_timeout)
            try:
                while batch := await chunks.next_batch():
                    for chunk in filter(None, batch):  # (a CRC pass's steps are empty)
                        with progress.sending():
                            await self._response.write(chunk)
                        progress.queued += len(chunk)
                    self._metrics.zip_bytes.inc(sum(map(len, batch)))
            finally:
                progress.stop()

    def _stalled(self, send_timeout: float) -> None:
        log.info(
            "ZIP of %s cut: no byte left for the client in %s s", self._render_run_id, send_timeout
        )
        self._metrics.zips_cut_short.labels("stalled").inc()
        note_aborted()
        if self._request.transport is not None:
            self._request.transport.abort()  # a graceful close would wait on the same client

    def _source_changed(self, error: SourceChanged) -> None:
        log.error("ZIP of %s cut short: %s", self._render_run_id, error.message)
        self._metrics.zips_cut_short.labels("source_changed").inc()
        self._response.force_close()

    def _failed(self, error: Exception) -> None:
        log.error(
            "ZIP of %s failed after its headers went out: the connection is aborted",
            self._render_run_id,
            exc_info=error,
        )
        self._metrics.zips_cut_short.labels("error").inc()
        abort_after_headers(self._request)

    def _connection_broke(self, error: ConnectionError) -> None:
        note_connection_error(error)
        if not body_complete(self._request, self._response):  # else it left after its last byte
            log.info("ZIP of %s: the client went away", self._render_run_id)
            self._metrics.zips_cut_short.labels("client_gone").inc()

    def _cancelled(self) -> None:
        if not body_complete(self._request, self._response):
            shutting_down = self._request.app[SHUTTING_DOWN].is_set()
            reason = "shutdown" if shutting_down else "client_gone"
            log.info("ZIP of %s cancelled (%s)", self._render_run_id, reason)
            self._metrics.zips_cut_short.labels(reason).inc()
