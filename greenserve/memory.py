"""Giving memory that connections have freed back to the operating system.

A burst of connections that go idle (and park) or close frees their greenlets' stacks, but
the C allocator keeps the freed pages mapped: the worker's RSS stays at the burst's peak.
glibc's ``malloc_trim`` returns them; elsewhere (musl, macOS) this does nothing.
"""

import ctypes
from time import monotonic

# Trim only after this many connections parked or closed since the last trim, and at most
# once per TRIM_INTERVAL seconds: one trim walks the heap (about 1.5 ms with 10,000 idle
# connections on a slow 2-core machine), which must not become a per-request cost: under
# steady churn at most one trim every 2 s, under 0.1% of a core.
TRIM_AFTER = 256
TRIM_INTERVAL = 2.0


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


class MemoryReturner:
    """``released()`` per parked or closed connection; ``tick()`` from a periodic check."""

    __slots__ = ("count", "last", "trims", "_trim")

    def __init__(self):
        self.count = 0
        self.last = -TRIM_INTERVAL  # the first burst may trim at once
        self.trims = 0
        self._trim = _malloc_trim()

    def tick(self):
        """Trim if enough connections released memory since the last trim. True if it did
        (or, where there is no malloc_trim, would have)."""
        if self.count < TRIM_AFTER:
            return False
        now = monotonic()
        if now - self.last < TRIM_INTERVAL:
            return False
        self.count = 0
        self.last = now
        self.trims += 1
        if self._trim is not None:
            self._trim(0)
        return True
