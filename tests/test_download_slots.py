"""How many ZIP downloads stream at once, in all and per client; who the client is."""

from __future__ import annotations

import ipaddress

import pytest

from export_service.aio.download_slots import DownloadSlots, client_address


def test_zip_slots_cannot_go_beyond_the_limit() -> None:
    slots = DownloadSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.try_acquire()


def test_one_client_holds_at_most_its_share() -> None:
    """Issue 22 item 7: aria2c -x16 held all 16 slots."""
    slots = DownloadSlots(16, per_client=4)
    assert all(slots.try_acquire("10.0.0.1") for _ in range(4))
    assert not slots.try_acquire("10.0.0.1")
    assert all(slots.try_acquire(f"10.0.1.{n}") for n in range(12))  # the others still get in
    assert slots.in_use == 16
    assert not slots.try_acquire("10.0.2.1")  # all taken
    slots.release("10.0.0.1")
    assert slots.try_acquire("10.0.0.1")  # its freed slot, no other
    assert not slots.try_acquire("10.0.0.1")


def test_a_share_over_the_limit_is_the_limit() -> None:
    assert DownloadSlots(2, per_client=5).per_client == 2


PROXIES = [ipaddress.ip_network("127.0.0.1"), ipaddress.ip_network("10.0.0.0/8")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("192.0.2.7", [], "192.0.2.7"),  # no proxy
        ("192.0.2.7", ["1.1.1.1"], "192.0.2.7"),  # an untrusted peer's header is ignored
        ("127.0.0.1", [], "127.0.0.1"),  # a trusted peer without the header
        ("127.0.0.1", ["198.51.100.4"], "198.51.100.4"),  # the backend's proxy
        ("10.1.2.3", ["198.51.100.4, 127.0.0.1"], "198.51.100.4"),  # nginx, then the backend
        ("127.0.0.1", ["6.6.6.6, 198.51.100.4"], "198.51.100.4"),  # a forged start is skipped
        ("127.0.0.1", ["6.6.6.6", "198.51.100.4"], "198.51.100.4"),  # two headers, in order
        ("127.0.0.1", ["10.0.0.5, 127.0.0.1"], "10.0.0.5"),  # only proxies: the first
        ("127.0.0.1", ["198.51.100.4:5123"], "198.51.100.4"),  # with a port
        ("127.0.0.1", ["[2001:db8::1]:443"], "2001:db8::1"),
        ("::ffff:127.0.0.1", ["198.51.100.4"], "198.51.100.4"),  # a mapped peer
        ("127.0.0.1", ["unknown"], "unknown"),  # no address: as written
    ],
)
def test_the_client_is_the_last_untrusted_forwarded_address(
    peer: str, forwarded: list[str], client: str
) -> None:
    assert client_address(peer, forwarded, PROXIES) == client
