"""Sharing one listening socket fairly between workers.

Every worker watching a shared listener is woken for each new connection, and whichever runs
first takes it: often the same one, since a worker busy on a loaded core wakes last. So each
worker publishes how many connections it holds in a small table in shared memory (an
anonymous ``MAP_SHARED`` mmap the master makes before forking), and a worker holding clearly
more than the least loaded other one stays out of the race for a few milliseconds, leaving
the connection to that one. If a connection still waits when it looks again and the other
worker has not been woken meanwhile (it is stuck or busy), it accepts after all: a connection
is never left waiting for a worker that cannot come. If the other worker was woken, the one
waiting is a newer arrival and the choice is made afresh.
"""

import mmap
from time import monotonic

# Entries in the table: entry 0 holds how many entries are in use, one per worker after it.
ENTRIES = 1024
# An entry's value: a worker's connection count while it accepts, else one of these.
ABSENT = -1         # no worker
NOT_ACCEPTING = -2  # a worker still starting (loading the app) or already stopping
# A worker stays out of the race only when it holds more than this many connections above
# the least loaded other worker: one or two either way is noise, not imbalance.
SLACK = 2
# How long it stays out before accepting anyway (seconds).
STAND_BACK = 0.005
# A worker whose entry was not refreshed for this long (it refreshes on every accept and every
# timer sweep, 4 times a second) is stuck: nobody stands back for it (seconds).
STALE_AFTER = 1.0
# If the connection was still waiting after a stand-back this many times in a row (the other
# worker is overloaded, not just slow once), the worker does not stand back again for
# STOP_STANDING_BACK seconds.
MISSES_TO_STOP = 10
STOP_STANDING_BACK = 0.25


class LoadTable:
    """Connection counts of the workers, in memory shared by the master and its workers."""

    def __init__(self, entries=ENTRIES):
        self._map = mmap.mmap(-1, 12 * entries)
        view = memoryview(self._map)
        self.counts = view[:4 * entries].cast("i")
        self.stamps = view[4 * entries:].cast("d")  # monotonic time of each entry's last write
        self.counts[0] = 0
        for index in range(1, entries):
            self.counts[index] = ABSENT

    # -- the master ----------------------------------------------------------------------------

    def reserve(self):
        """An entry for a worker about to be forked (None if the table is full)."""
        counts = self.counts
        for index in range(1, len(counts)):
            if counts[index] == ABSENT:
                counts[index] = NOT_ACCEPTING
                if index > counts[0]:
                    counts[0] = index
                return index
        return None

    def release(self, index):
        """The worker of ``index`` has exited."""
        if index is not None:
            self.counts[index] = ABSENT

    # -- a worker ------------------------------------------------------------------------------

    def entry(self, index):
        return WorkerLoad(self.counts, self.stamps, index) if index is not None else None


class WorkerLoad:
    """One worker's view: publish its own count, compare it with the others'."""

    __slots__ = ("counts", "stamps", "index")

    def __init__(self, counts, stamps, index):
        self.counts = counts
        self.stamps = stamps
        self.index = index

    def publish(self, count):
        """This worker accepts and holds ``count`` connections."""
        self.counts[self.index] = count
        self.stamps[self.index] = monotonic()

    def withdraw(self):
        """This worker stops accepting (a graceful stop began)."""
        self.counts[self.index] = NOT_ACCEPTING

    def should_stand_back(self, count):
        """Publish ``count``; True if another worker holds more than SLACK fewer."""
        counts, stamps = self.counts, self.stamps
        me = self.index
        counts[me] = count
        stamps[me] = now = monotonic()
        floor = count - SLACK
        for index in range(1, counts[0] + 1):
            other = counts[index]
            if 0 <= other < floor and index != me and now - stamps[index] < STALE_AFTER:
                return True
        return False

    def others_raced_since(self, moment):
        """True if a worker this one stands back for has been woken to accept since
        ``moment`` (monotonic).

        Every worker publishes each time it is woken to accept, so after a stand-back this
        tells a connection nobody came for (accept it) from a newer one that arrived while
        the other worker was taking the first (stand back again). Only the less loaded
        workers count: two loaded ones standing back for a stuck one must not keep each
        other waiting."""
        counts, stamps = self.counts, self.stamps
        me = self.index
        floor = counts[me] - SLACK
        for index in range(1, counts[0] + 1):
            if 0 <= counts[index] < floor and index != me and stamps[index] > moment:
                return True
        return False
