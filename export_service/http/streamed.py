"""The one streamed response of the service, whose body is sent under the
send deadline: the ZIP (zip_response.py) and the file URLs (file_responses.py)
are its two subclasses.

As aiohttp's ``FileResponse`` is a ``StreamResponse`` that knows how to send
its body, :class:`StreamedResponse` holds what the ZIP and the file URLs do
alike: the byte range of ``Range`` and ``If-Range`` (a 416 raised before any
header goes out), the headers that describe the body, and the send loop under
one deadline that moves while the client takes bytes (:mod:`..aio.send_progress`).
A subclass writes the body (:meth:`StreamedResponse._send_body`) and says, in
its own log lines and metrics, how a download that did not finish ended.

Unlike aiohttp's ``FileResponse`` it does not override ``prepare()`` for
aiohttp to call once the handler has returned: the handler awaits
:meth:`StreamedResponse.send`. So a 416, or any error before the headers,
is answered in the service's JSON by its middleware, and what the handler
holds for the download (its ZIP slot, the open file) is held until the last
byte is out and released however the download ends.

How a body that started ends, and what the connection sees:

- finished: every byte of the range went out; the response is ended;
- stalled: the client took no byte for ``limits.send_timeout_seconds``; the
  connection is aborted (a graceful close would wait on the same client);
- source changed: a file is no longer the planned one, or shrank
  (:class:`SourceChanged`); the connection is closed short of its length,
  so the client sees an incomplete transfer rather than a complete-looking
  broken one;
- client gone: the connection broke, or the client hung up and aiohttp
  cancelled the handler (the cancellation goes on);
- error: anything else failed after the headers went out; the connection is
  aborted (:func:`.access.abort_after_headers`): the client sees a short
  transfer, never a second response inside the body.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from datetime import datetime
from typing import Self

from aiohttp import hdrs, web

from ..aio.send_progress import SendProgress
from ..errors import SourceChanged
from .access import abort_after_headers, note_aborted
from .byte_ranges import requested_range
from .keys import SETTINGS


class StreamedResponse(web.StreamResponse, ABC):
    """A 200 or 206 of one representation of ``size`` bytes, its body sent
    by :meth:`send` under the send deadline. A subclass sets its own headers,
    then calls :meth:`_describe_body`, and writes the body in
    :meth:`_send_body`; the ``_on_*`` methods tell how a download that did
    not finish ended (each runs before the connection is aborted or closed)."""

    # The body, as a 416's message names it ("the ZIP has 22 bytes; ...").
    what = "the body"

    def __init__(self, request: web.Request) -> None:
        super().__init__()
        self._request = request
        self._first = 0
        self._last = -1

    def _describe_body(
        self, size: int, etag: str, content_type: str, last_modified: datetime | None
    ) -> None:
        """The status (206 for a ``Range`` that ``If-Range`` lets through,
        else 200), then ``Content-Range``, ``Content-Type``,
        ``Content-Length`` and ``Last-Modified``. :class:`RangeNotSatisfiable`
        (416) for a range outside the ``size`` bytes."""
        headers = self._request.headers
        byte_range = requested_range(
            headers.get(hdrs.RANGE), headers.get(hdrs.IF_RANGE), size, etag, self.what
        )
        self._first, self._last = byte_range or (0, size - 1)
        self.set_status(206 if byte_range else 200)
        if byte_range:
            self.headers[hdrs.CONTENT_RANGE] = f"bytes {self._first}-{self._last}/{size}"
        self.content_type = content_type
        self.content_length = self._last - self._first + 1
        self.last_modified = last_modified

    async def send(self) -> Self:
        """Send the headers, then (a GET of a non-empty body) the body, under
        the send deadline; a download that does not finish ends as the
        module's docstring says. Returns this response, for the handler to
        return."""
        request = self._request
        await self.prepare(request)
        if request.method == hdrs.METH_HEAD or self._last < self._first:
            return self
        send_timeout = request.app[SETTINGS].limits.send_timeout_seconds
        try:
            async with asyncio.timeout(send_timeout) as deadline:
                progress = SendProgress(request.transport, deadline, send_timeout)
                try:
                    await self._send_body(progress)
                finally:
                    progress.stop()
        except TimeoutError:
            self._on_stalled(send_timeout)
            note_aborted()
            if request.transport is not None:
                request.transport.abort()  # a graceful close would wait on the same client
            return self
        except SourceChanged as error:
            self._on_source_changed(error)
            self.force_close()  # the client sees fewer bytes than Content-Length
            return self
        except ConnectionError as error:
            self._on_client_gone(error)
            return self
        except asyncio.CancelledError:
            self._on_cancelled()
            raise
        except Exception as error:  # the status line is out: no other answer can follow
            self._on_failed(error)
            abort_after_headers(request)
            return self
        await self.write_eof()
        return self

    @abstractmethod
    async def _send_body(self, progress: SendProgress) -> None:
        """Write bytes ``self._first`` to ``self._last`` of the body, each
        wait on the client inside ``progress.sending()``, adding what was
        handed over to ``progress.queued``. :class:`SourceChanged` when what
        is sent is no longer what the headers described."""

    @abstractmethod
    def _on_stalled(self, send_timeout: float) -> None:
        """The client took no byte for ``send_timeout`` seconds."""

    @abstractmethod
    def _on_source_changed(self, error: SourceChanged) -> None:
        """The body changed while it was sent (``error`` says how)."""

    @abstractmethod
    def _on_client_gone(self, error: ConnectionError) -> None:
        """A write found the connection broken."""

    @abstractmethod
    def _on_cancelled(self) -> None:
        """aiohttp or the shutdown cancelled the handler (the client hung up,
        or the grace ran out)."""

    @abstractmethod
    def _on_failed(self, error: Exception) -> None:
        """Anything else failed after the headers went out."""
