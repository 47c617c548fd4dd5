"""The descriptor headroom: the soft limit minus what is open."""

from __future__ import annotations

import os

import pytest

from export_service.core.descriptors import descriptor_headroom, require_descriptors
from export_service.errors import OutOfDescriptors
from tests.test_out_of_descriptors import no_descriptor_left


def test_the_headroom_counts_open_descriptors() -> None:
    free, limit = descriptor_headroom()
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    try:
        assert descriptor_headroom() == (free - 5, limit)
    finally:
        for fd in opened:
            os.close(fd)
    assert descriptor_headroom() == (free, limit)


def test_at_the_limit_there_is_no_headroom_and_nothing_is_required() -> None:
    with no_descriptor_left():
        assert descriptor_headroom()[0] == 0
        with pytest.raises(OutOfDescriptors) as error:
            require_descriptors(1)
    assert error.value.status == 503 and "0 free" in error.value.message
    require_descriptors(1)
