"""How many ZIP downloads may stream at once."""

from __future__ import annotations


class DownloadSlots:
    """How many ZIPs stream at once; one beyond the limit is refused, not queued
    (a queued download would hold its client's connection without progress)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1
