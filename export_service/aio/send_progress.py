"""When a client counts as stalled: no byte reached it for the send timeout.

A write of a ~1 MiB batch, or a ``sendfile`` of a 1 MiB piece, to a slow but
steady client can take minutes, and the kernel holds megabytes of a
connection's bytes before its socket turns writable again (Linux wakes a
writer only when a third of a send buffer of up to 4 MiB is free). So neither
the time of one write nor the asyncio write buffer tells a stalled client
from a slow one. The kernel does: ``TCP_INFO``'s ``tcpi_bytes_acked`` counts
the bytes the peer has acknowledged, and it grows with every segment a steady
reader takes, however slowly. Where it cannot be read (not TCP, not Linux)
the asyncio write buffer shrinking is the sign instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked is the u64 at byte 120,
# there since Linux 4.1.
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_TCP_INFO_LENGTH = _BYTES_ACKED_OFFSET + _BYTES_ACKED.size


def bytes_acked(sock: socket.socket | None) -> int | None:
    """How many bytes of this TCP connection the peer has acknowledged, or
    None where the kernel cannot tell."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if sock is None or tcp_info is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_LENGTH)
    except OSError:  # not TCP (a Unix socket), or already closed
        return None
    if len(info) < _TCP_INFO_LENGTH:
        return None
    value: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    return value


class SendProgress:
    """Keeps a response's send deadline ``seconds`` ahead while its client
    takes bytes, and while the response is not waiting on the client at all.

    The sender marks each wait on the client with :meth:`sending`. Every
    ``seconds / 4`` (at most 1 s) the deadline moves when no such wait runs
    (the response waits for its own data), or when the peer acknowledged
    bytes since the last look (or, without ``TCP_INFO``, bytes left the
    asyncio write buffer). So a client is cut between ``seconds`` and
    ``seconds`` plus one look after it last took a byte, never for being slow.
    """

    def __init__(
        self, transport: asyncio.BaseTransport | None, deadline: asyncio.Timeout, seconds: float
    ) -> None:
        self.queued = 0  # body bytes handed to the transport, for the fallback
        self._transport = transport
        self._socket: socket.socket | None = (
            transport.get_extra_info("socket") if transport is not None else None
        )
        self._deadline = deadline
        self._seconds = seconds
        self._interval = min(1.0, seconds / 4)
        self._sending = False
        self._acked = bytes_acked(self._socket)
        self._left = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self._interval, self._look)

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around an await that waits for the client to take bytes."""
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    def _client_took_bytes(self) -> bool:
        acked = bytes_acked(self._socket)
        if acked is not None and self._acked is not None:
            took, self._acked = acked > self._acked, acked
            return took
        if not isinstance(self._transport, asyncio.WriteTransport):
            return False
        left = self.queued - self._transport.get_write_buffer_size()
        took, self._left = left > self._left, left
        return took

    def _look(self) -> None:
        took = self._client_took_bytes()
        if took or not self._sending:
            self._deadline.reschedule(self._loop.time() + self._seconds)
        self._handle = self._loop.call_later(self._interval, self._look)

    def stop(self) -> None:
        self._handle.cancel()
