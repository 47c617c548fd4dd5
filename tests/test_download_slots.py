"""How many ZIP downloads stream at once."""

from __future__ import annotations

from export_service.download_slots import DownloadSlots


def test_zip_slots_cannot_go_beyond_the_limit() -> None:
    slots = DownloadSlots(2)
    assert slots.try_acquire() and slots.try_acquire()
    assert not slots.try_acquire()
    slots.release()
    assert slots.try_acquire()
