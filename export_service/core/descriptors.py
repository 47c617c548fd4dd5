"""How many file descriptors the process has left (blocking, but cheap: one
listing of ``/proc/self/fd``, no file opened beyond that listing's own).

Readiness wants a reserve free, and a ZIP download checks that what it needs
is free before its headers go out: a ZIP that runs out of descriptors after
its 200 can only stop at 0 bytes.
"""

from __future__ import annotations

import errno
import os
import resource
import sys

from ..errors import OutOfDescriptors, retry_later


def descriptor_headroom() -> tuple[int, int]:
    """(descriptors free, the soft ``RLIMIT_NOFILE``): the limit minus the
    descriptors open now; 0 free when even the listing cannot be opened
    (the process or the system is out)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = sys.maxsize if soft == resource.RLIM_INFINITY else soft
    try:
        open_now = len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    except OSError as error:
        if error.errno in (errno.EMFILE, errno.ENFILE):
            return 0, limit
        raise
    return max(0, limit - open_now), limit


def require_descriptors(needed: int) -> None:
    """:class:`OutOfDescriptors` unless ``needed`` descriptors are free."""
    free, limit = descriptor_headroom()
    if free < needed:
        raise OutOfDescriptors(
            f"the service is short of file descriptors ({free} free of {limit}, {needed} "
            "needed); try again shortly",
            headers=retry_later(),
        )
