"""One plain greenlet per connection, at most ``limit`` at once.

gevent's ``Pool`` + ``Greenlet`` would do the same, but a ``gevent.Greenlet`` with its link
list and the pool's bookkeeping cost about 1 KiB per connection; with 10,000 parked long
polls that is a tenth of the memory. A raw greenlet whose parent is the hub is what a
Greenlet is underneath, and the few features we use (a cap, join, kill) are kept here.
"""

import logging

from gevent import get_hub
from gevent.event import Event
from greenlet import GreenletExit, greenlet

error_log = logging.getLogger("greenserve.error")

# Greenlets kept for reuse once their connection ends (each holds a few KiB of stack).
IDLE_GREENLETS = 64


class Spawner:
    """``spawn(handler, sock, address)`` runs each connection in its own greenlet.

    A slot is a connection, not a greenlet: a connection parked without one (see
    ``waiting.GreenletFreeWaits.park``) keeps its slot through ``hold()`` until ``release()``.
    """

    def __init__(self, limit, on_slot_free=None):
        self.limit = limit
        self.on_slot_free = on_slot_free  # called when a slot frees after we were full
        self.greenlets = set()
        self.held = 0  # slots of parked connections (no greenlet)
        self.resuming = 0  # of those, resumed and waiting for the hub to start them
        self._idle = []  # greenlets that finished a connection, waiting for the next
        self._empty = Event()
        self._empty.set()
        self._was_full = False
        self._hub = get_hub()

    def __len__(self):
        """Slots in use: connections with a greenlet, and parked ones."""
        return len(self.greenlets) + self.held

    def full(self):
        return len(self.greenlets) + self.held >= self.limit

    def note_full(self):
        """An acceptor paused at the cap: call ``on_slot_free`` when a slot frees."""
        self._was_full = True

    def spawn(self, handler, sock, address):
        """Start ``handler(sock, address)`` in a greenlet at the hub's next turn: one that
        finished an earlier connection if one waits, else a new one."""
        glet = self._take_greenlet()
        self._empty.clear()
        self._hub.loop.run_callback(glet.switch, handler, sock, address)
        return glet

    def _take_greenlet(self):
        """An idle greenlet, else a new one; counted as running from now on."""
        idle = self._idle
        if idle:
            glet = idle.pop()
            # What a new greenlet would have: an empty contextvars context.
            glet.gr_context = None
        else:
            glet = greenlet(self._run, self._hub)
        self.greenlets.add(glet)
        return glet

    def hold(self):
        """The calling greenlet's connection parks: keep its slot after the greenlet ends."""
        self.held += 1

    def resume(self, handler):
        """A parked connection has input: run ``handler()`` in a greenlet in its held slot
        at the hub's next turn.

        The greenlet is chosen then, not now: when many resume at once (a long poll's event
        wakes thousands), each one usually finishes before the next starts, so one idle
        greenlet serves them in turn instead of thousands being created.
        """
        self.resuming += 1
        self._empty.clear()
        self._hub.loop.run_callback(self._start_resumed, handler)

    def _start_resumed(self, handler):
        self.resuming -= 1
        self.held -= 1
        self._take_greenlet().switch(_call, handler, None)

    def release(self):
        """A parked connection closed without resuming: its slot is free."""
        self.held -= 1
        self._slot_freed()

    def _run(self, handler, sock, address):
        """A connection greenlet: serve one connection, then wait in the idle pool for the
        next one (a new greenlet costs a fresh Python data stack: ~10x a switch)."""
        glet = greenlet.getcurrent()
        hub = self._hub
        idle = self._idle
        while True:
            try:
                # A plain positional call: Python 3.11+ runs it in the same C frame (see
                # acceptor.py on why the C stack depth matters).
                handler(sock, address)
            except GreenletExit:
                self._finished(glet)
                return  # killed: never reused
            except Exception:
                # The connection code catches its own errors; this is a last line of defence
                # so a bug never reaches the hub (where it would end the whole server).
                error_log.exception("unexpected error in a connection greenlet")
            handler = sock = address = None  # an idle greenlet keeps nothing alive
            self._finished(glet)
            if len(idle) >= IDLE_GREENLETS:
                return
            idle.append(glet)
            try:
                handler, sock, address = hub.switch()  # until spawn() hands it a connection
            except GreenletExit:  # the spawner is gone and this greenlet collected
                return

    def _finished(self, glet):
        self.greenlets.discard(glet)
        if not self.greenlets and not self.resuming:
            self._empty.set()
        self._slot_freed()

    def _slot_freed(self):
        if self._was_full and len(self.greenlets) + self.held < self.limit:
            self._was_full = False
            if self.on_slot_free is not None:
                self.on_slot_free()

    def shrink_idle(self, keep):
        """End all but ``keep`` of the idle greenlets, freeing their stacks. Call it from the
        hub: an ended greenlet returns to its parent, the hub."""
        idle = self._idle
        while len(idle) > keep:
            idle.pop(0).throw(GreenletExit)  # the oldest: the least likely to be warm

    def join(self, timeout=None):
        """Wait until every greenlet has finished; False if ``timeout`` ran out first."""
        return self._empty.wait(timeout)

    def kill(self, timeout=1.0):
        """Raise GreenletExit in every greenlet (from the hub), then wait up to ``timeout``."""
        run_callback = self._hub.loop.run_callback
        for glet in list(self.greenlets):
            # Queued after the greenlet's own start (callbacks run in order), and checked at
            # delivery: a throw into a dead greenlet would land in the hub instead.
            run_callback(_throw_if_alive, glet)
        return self.join(timeout)


def _call(handler, _unused):
    handler()


def _throw_if_alive(glet):
    if glet:  # started and not dead
        glet.throw(GreenletExit)
