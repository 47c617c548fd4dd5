"""send_progress: the kernel's count of bytes a peer took, and the deadline
that moves with it."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from export_service.aio.send_progress import SendProgress, bytes_acked


def test_bytes_acked_counts_what_the_peer_took() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        sender, _ = server.accept()
        with sender:
            before = bytes_acked(sender)
            assert before is not None
            sender.sendall(b"x" * 100_000)
            received = 0
            while received < 100_000:
                received += len(client.recv(65536))
            deadline = time.monotonic() + 5  # the last ACK may trail the data a moment
            while (bytes_acked(sender) or 0) - before < 100_000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert bytes_acked(sender) == before + 100_000


def test_bytes_acked_is_none_where_the_kernel_cannot_tell() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert bytes_acked(left) is None
    assert bytes_acked(None) is None


async def test_the_deadline_holds_while_a_send_waits_on_a_client_that_takes_nothing() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2) as deadline:
            progress = SendProgress(None, deadline, 0.2)
            try:
                with progress.sending():
                    await asyncio.sleep(2)  # a send that never ends: the time is the test
            finally:
                progress.stop()
    assert time.monotonic() - started < 1  # the first deadline, not a moved one


async def test_the_deadline_moves_while_the_response_waits_for_its_own_data() -> None:
    async with asyncio.timeout(0.2) as deadline:
        progress = SendProgress(None, deadline, 0.2)
        try:
            await asyncio.sleep(0.6)  # not sending (producing the next batch) past the deadline
        finally:
            progress.stop()
