"""How many ZIP downloads may stream at once, in all and per client, and who
the client of a request is (its address, or the one its trusted proxy forwarded)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class DownloadSlots:
    """How many ZIPs stream at once; one beyond the limit is refused, not queued
    (a queued download would hold its client's connection without progress).
    One client may hold at most ``per_client`` of them, so a download manager
    opening 16 connections cannot take every slot from everyone else."""

    def __init__(self, limit: int, per_client: int | None = None) -> None:
        self.limit = limit
        self.per_client = min(per_client or limit, limit)
        self.in_use = 0
        self._held: Counter[str] = Counter()

    def try_acquire(self, client: str = "") -> bool:
        if self.in_use >= self.limit or self._held[client] >= self.per_client:
            return False
        self.in_use += 1
        self._held[client] += 1
        return True

    def release(self, client: str = "") -> None:
        self.in_use -= 1
        self._held[client] -= 1
        if self._held[client] <= 0:
            del self._held[client]


def _address(text: str) -> Address | None:
    """An address as it appears in ``X-Forwarded-For`` or as a peer: bare,
    ``[v6]`` or with a port (``1.2.3.4:5``, ``[::1]:5``); an IPv4-mapped IPv6
    address is its IPv4 address. None when it is none of these."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address | None, proxies: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in proxies)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], proxies: Sequence[Network]
) -> str:
    """Who a request comes from, for per-client limits.

    The peer's address, unless the peer is one of the trusted ``proxies``:
    then the ``X-Forwarded-For`` list (every such header, in order) is read
    from its end, where each trusted proxy appended the address it got the
    request from, and the first address that is not itself a trusted proxy
    is the client (what a client wrote at the start of the list itself is
    never reached past an untrusted hop). A list of trusted proxies only
    gives its first address; an entry that is no address ends the walk and
    is the client as written (cut to 64 characters)."""
    peer_address = _address(peer or "")
    if not _trusted(peer_address, proxies):
        return str(peer_address) if peer_address is not None else (peer or "")[:64]
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    if not hops:
        return str(peer_address)
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return hop[:64]
        if not _trusted(address, proxies):
            return str(address)
    first = _address(hops[0])
    return str(first)
