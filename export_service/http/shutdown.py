"""Graceful shutdown that keeps to ``server.shutdown_grace_seconds``.

aiohttp's own shutdown waits ``shutdown_timeout`` for requests in flight, then
"cancels" them in a way that does not stop a handler blocked on a stalled
client, and waits ``shutdown_timeout`` again: a download was cut at about twice
the grace and the process exited later still. Here every connection that has
served a request is tracked; on shutdown (after the listening socket and the
idle connections are closed) the requests in flight get the grace period to
finish, then their tasks are cancelled and their connections aborted, so
nothing is left for aiohttp to wait on.

Last, every connection that served a request is closed. One whose request
left part of its body unread (a PUT answered before its body was read, a GET
sent with a body) is kept by aiohttp for up to 10 s reading that body away
(its "lingering close"); aiohttp's own shutdown waited ``shutdown_timeout``
for each such connection, so an idle service took a second or more to exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

log = logging.getLogger("export_service.shutdown")  # obs/logs.py: LOGGER_NAMES

# How long cancelled requests get to run their cleanup (close files, log).
CANCEL_WAIT_SECONDS = 1.0
# How often the shutdown looks whether the connections have sent their last bytes.
FLUSH_POLL_SECONDS = 0.01


class _Connection(Protocol):
    """What the shutdown uses of ``request.protocol``, aiohttp's handler of
    one connection (``aiohttp.web_protocol.RequestHandler``, not public API):
    its transport, and ``force_close()``, which ends the connection once its
    response is out, lingering close or not. aiohttp has no public way to
    close a connection that waits between requests or reads away an unread
    body, so this stays, typed by what it uses rather than by importing the
    private class; tests/test_shutdown.py fails if aiohttp changes it
    (test_a_connection_left_with_an_unread_body_does_not_hold_up_the_exit,
    test_the_shutdown_lets_a_finished_response_send_its_end)."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def force_close(self) -> None: ...


class RequestsInFlight:
    """The tasks serving connections that have had a request, with their transports."""

    def __init__(self) -> None:
        self._tasks: dict[asyncio.Task[object], asyncio.Transport | None] = {}
        # The open connections that have served a request (aiohttp's handlers
        # take no weak references: closed ones are dropped as new ones come).
        self._connections: set[_Connection] = set()

    def track(self, request: web.Request) -> None:
        """Remember the task serving ``request``'s connection until it ends.

        The task also sends a response's body after the handler returned
        (file URLs), so it is the task, not the handler, that is waited for."""
        if request.protocol not in self._connections:
            self._connections = {c for c in self._connections if c.transport is not None}
            self._connections.add(request.protocol)
        task = asyncio.current_task()
        if task is None or task in self._tasks:
            return
        self._tasks[task] = request.transport
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._tasks.pop(task, None)

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, grace: float) -> None:
        """Let the requests in flight finish within ``grace`` seconds, then cut
        them; let the connections send what their finished responses left in
        their write buffers, within what is left of ``grace``; then close
        every connection (none has a request left)."""
        deadline = asyncio.get_running_loop().time() + grace
        await self._finish_or_cut(grace)
        await self._flush(deadline)
        for connection in list(self._connections):
            connection.force_close()

    async def _flush(self, deadline: float) -> None:
        """A handler returns once its last bytes are in the connection's write
        buffer, not once they are sent: behind a slow client up to aiohttp's
        high-water mark (64 KiB) is still there. Closing the connection then
        is a graceful close, but the process exits before it completes, and a
        download that finished within the grace lost its end.

        asyncio has no public "buffer empty" event for a transport whose
        protocol is aiohttp's, so the buffers are looked at every
        ``FLUSH_POLL_SECONDS`` until they are empty or the grace is over."""
        loop = asyncio.get_running_loop()
        sending = [
            connection.transport
            for connection in self._connections
            if connection.transport is not None and connection.transport.get_write_buffer_size()
        ]
        if not sending:
            return
        log.info(
            "shutting down: %d connection(s) still sending the end of a response, "
            "waiting up to %.1f s",
            len(sending),
            max(0.0, deadline - loop.time()),
        )
        # A transport already closing (aiohttp closes a connection whose
        # response said "Connection: close") still sends its buffer first; one
        # that was aborted has none left.
        while loop.time() < deadline and any(  # noqa: ASYNC110 (no event to wait on: see above)
            transport.get_write_buffer_size() for transport in sending
        ):
            await asyncio.sleep(FLUSH_POLL_SECONDS)

    async def _finish_or_cut(self, grace: float) -> None:
        tasks = set(self._tasks)
        if not tasks:
            return
        log.info("shutting down: %d connection(s) busy, waiting up to %s s", len(tasks), grace)
        _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), tasks)
        if not pending:
            return
        log.warning("shutting down: cutting %d request(s) still in flight", len(pending))
        for task in pending:
            transport = self._tasks.get(task)
            task.cancel()
            if transport is not None:
                # A graceful close would wait for a stalled client to take the
                # buffered bytes; abort sends a reset at once.
                transport.abort()
        await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tracking_middleware(in_flight: RequestsInFlight) -> Middleware:
    """The outermost middleware: tracks every request's connection in ``in_flight``."""

    @web.middleware
    async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
        in_flight.track(request)
        return await handler(request)

    return track


def _hang_up() -> None:
    log.warning(
        "SIGHUP: shutting down as on SIGTERM (the service reloads nothing;"
        " restart it to read its config again)"
    )
    raise web.GracefulExit()


async def stop_on_hangup(app: web.Application) -> None:
    """A startup hook for ``serve``: SIGHUP (a closed terminal, an ``nohup``-less
    session ending, ``kill -HUP`` meant as a reload) stops the service the way
    SIGTERM does, grace and all, and says so in the log. Left to its default
    it killed the process at once, without a line, cutting every download."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _hang_up)
