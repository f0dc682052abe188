"""Connection timers: each connection records a phase and when it expires; one sweeper per
server fires the expired ones.

A gevent Timeout per blocking call would cost a timer object on every request. Instead the
connection writes two fields when it changes phase, and the sweeper, every
``SWEEP_INTERVAL``, throws the phase's named exception into connections past their deadline.

The sweeper is woken by a small OS thread through a libev async watcher, not by a gevent
timer: one ``gevent.sleep(float("nan"))`` in an app corrupts the hub's timer heap, and then
no gevent timer in the process fires again. greenserve's own timeouts (idle keep-alive,
request head, body, send, request deadline, lingering close) must outlast that.
"""

import logging
import math
from time import monotonic

from gevent import get_hub
from gevent.monkey import get_original

from .errors import BodyReadTimeout, ClientDisconnected, RequestTimeout

error_log = logging.getLogger("greenserve.error")

# Phases: what a connection is waiting for, and so which timer applies.
IDLE, READING_HEAD, APP, BODY, SEND, LINGER = range(6)

# How often the sweeper checks deadlines; timers are this coarse.
SWEEP_INTERVAL = 0.25


class IdleTimeout(Exception):
    """A keep-alive connection stayed idle too long; it is closed without a response."""


class LingerDone(Exception):
    """A closing connection discarded the client's input long enough; close it now."""


def phase_timeout(phase, config):
    """The exception a connection gets when ``phase`` outlives its timer."""
    if phase == IDLE:
        return IdleTimeout()
    if phase == READING_HEAD:
        return RequestTimeout(f"request head not received within {config.header_timeout} s")
    if phase == BODY:
        rate = f" or slower than {config.body_min_rate} bytes/s" if config.body_min_rate else ""
        return BodyReadTimeout(f"request body stalled for {config.body_timeout} s{rate}")
    if phase == SEND:
        rate = f" or slower than {config.send_min_rate} bytes/s" if config.send_min_rate else ""
        return ClientDisconnected(f"client read nothing for {config.send_timeout} s{rate}")
    if phase == LINGER:
        return LingerDone()
    return None


class Sweeper:
    """Fires the deadlines of ``connections`` (objects with ``deadline``, ``phase_seq`` and
    ``expire(seq)``) from the hub, woken every ``interval`` by a ticker thread; then calls
    ``on_tick()``, for other periodic checks that must not depend on gevent timers."""

    def __init__(self, connections, interval=SWEEP_INTERVAL, on_tick=None):
        self.connections = connections
        self.interval = interval
        self.on_tick = on_tick
        self._hub = get_hub()
        self._wakeup = None
        self._running = False

    def start(self):
        if self._running:
            return
        self._running = True
        self._wakeup = self._hub.loop.async_()
        self._wakeup.start(self.sweep)
        # The real thread and sleep even when the process is monkey-patched.
        start_thread = get_original("_thread", "start_new_thread")
        start_thread(self._tick, (self._wakeup, get_original("time", "sleep")))

    def stop(self):
        self._running = False
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None:
            # Stopped, never closed: the ticker may still send once, which a stopped
            # watcher ignores; a closed one could not take it safely.
            wakeup.stop()

    def _tick(self, wakeup, sleep):
        """The ticker thread: poke the hub every interval until stopped."""
        while True:
            sleep(self.interval)
            if not self._running or self._wakeup is not wakeup:
                return
            wakeup.send()

    def sweep(self):
        """In the hub: queue ``expire`` for every connection past its deadline."""
        run_callback = self._hub.loop.run_callback
        now = monotonic()
        for connection in self.connections:
            deadline = connection.deadline
            if deadline and deadline <= now:
                connection.deadline = 0.0
                run_callback(connection.expire, connection.phase_seq)
        if self.on_tick is not None:
            try:
                self.on_tick()
            except Exception:  # a bug here must not reach the hub and end the worker
                error_log.exception("error in a periodic server check")


def _check_seconds(seconds):
    """Refuse a sleep or timeout that would corrupt the hub's timer heap: NaN compares
    false with everything, so libev can no longer order its timers."""
    if isinstance(seconds, float) and (math.isnan(seconds) or seconds == -math.inf):
        raise ValueError(f"invalid timeout {seconds!r}: not a number of seconds")


def guard_gevent_timers():
    """Make gevent.sleep, a monkey-patched time.sleep and gevent.Timeout refuse NaN and
    -inf with ValueError (an entry point calls this; it is idempotent).

    An app that sleeps for ``float(query_param)`` then gets an error for that request
    instead of silently stopping every timer of the worker.
    """
    import time

    import gevent
    import gevent.hub
    from gevent.timeout import Timeout

    original_sleep = gevent.hub.sleep
    if getattr(original_sleep, "_greenserve_guarded", False):
        return

    def sleep(seconds=0, ref=True):
        _check_seconds(seconds)
        return original_sleep(seconds, ref)

    sleep.__doc__ = original_sleep.__doc__
    sleep._greenserve_guarded = True
    if time.sleep is original_sleep:
        time.sleep = sleep
    gevent.sleep = gevent.hub.sleep = sleep

    original_start = Timeout.start

    def start(self):
        _check_seconds(self.seconds)
        return original_start(self)

    Timeout.start = start
