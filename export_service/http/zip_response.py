"""The ZIP download as an HTTP response, for a planned :class:`ExportArchive`:
a :class:`.StreamedResponse` whose body is the archive's batches, read off
the event loop. How a download ends (finished, stalled, source changed,
client gone, error) is streamed.py's; this module tells the logs and the
metrics: ``export_zip_downloads_cut_short_total`` counts each way a download
was cut short, by the label in brackets: stalled (``stalled``), source changed
(``source_changed``), client gone (``client_gone``), cancelled by the service
while stopping (``shutdown``), failed after the headers (``error``). A
download whose last byte had already left counts as finished.
"""

from __future__ import annotations

import logging
import threading
from typing import Self

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
from .access import body_complete, note_connection_error
from .keys import IO_EXECUTOR, METRICS, SETTINGS, SHUTTING_DOWN, ZIP_EXECUTOR
from .streamed import StreamedResponse

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


class ZipResponse(StreamedResponse):
    """One answer to a GET or HEAD of a planned archive: 200 or 206 (``Range``,
    ``If-Range``), 416 for a range outside it, the body for a GET."""

    what = "the ZIP"

    def __init__(
        self,
        request: web.Request,
        archive: ExportArchive,
        render_run_id: str,
        selection: Selection | None = None,
    ) -> None:
        super().__init__(request)
        self._archive = archive
        self._render_run_id = render_run_id
        self._selection = selection
        self._metrics = request.app[METRICS]

    async def send(self) -> Self:
        request, archive = self._request, self._archive
        if request.method != hdrs.METH_HEAD:
            # after a 200 a download short of descriptors could only stop at 0 bytes
            await run_blocking(
                request.app[IO_EXECUTOR], require_descriptors, DESCRIPTORS_PER_DOWNLOAD
            )
        self.headers.update(
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
        self._describe_body(archive.size, archive.etag, "application/zip", archive.last_modified)
        self._metrics.count_unlisted(archive.unlisted)  # once per scan, as for a manifest
        return await super().send()

    async def _send_body(self, progress: SendProgress) -> None:
        """Batches read off the event loop (a CRC pass still running for the
        download stops between two chunks and closes its file, however the
        download ends)."""
        self._metrics.files_skipped.inc(len(self._archive.skipped))
        self._metrics.zips_in_flight.inc()
        cancelled = threading.Event()
        app = self._request.app
        chunks = OffloadedChunks(
            self._archive.chunks(self._first, self._last, cancelled),
            app[ZIP_EXECUTOR],
            app[SETTINGS].limits.batch_bytes,
        )
        try:
            while batch := await chunks.next_batch():
                for chunk in filter(None, batch):  # (a CRC pass's steps are empty)
                    with progress.sending():
                        await self.write(chunk)
                    progress.queued += len(chunk)
                self._metrics.zip_bytes.inc(sum(map(len, batch)))
        finally:
            cancelled.set()
            chunks.close()
            self._metrics.zips_in_flight.dec()

    def _on_stalled(self, send_timeout: float) -> None:
        log.info(
            "ZIP of %s cut: no byte left for the client in %s s", self._render_run_id, send_timeout
        )
        self._metrics.zips_cut_short.labels("stalled").inc()

    def _on_source_changed(self, error: SourceChanged) -> None:
        log.error("ZIP of %s cut short: %s", self._render_run_id, error.message)
        self._metrics.zips_cut_short.labels("source_changed").inc()

    def _on_failed(self, error: Exception) -> None:
        log.error(
            "ZIP of %s failed after its headers went out: the connection is aborted",
            self._render_run_id,
            exc_info=error,
        )
        self._metrics.zips_cut_short.labels("error").inc()

    def _on_client_gone(self, error: ConnectionError) -> None:
        note_connection_error(error)
        if not body_complete(self._request, self):  # else it left after its last byte
            log.info("ZIP of %s: the client went away", self._render_run_id)
            self._metrics.zips_cut_short.labels("client_gone").inc()

    def _on_cancelled(self) -> None:
        if not body_complete(self._request, self):
            shutting_down = self._request.app[SHUTTING_DOWN].is_set()
            reason = "shutdown" if shutting_down else "client_gone"
            log.info("ZIP of %s cancelled (%s)", self._render_run_id, reason)
            self._metrics.zips_cut_short.labels(reason).inc()
