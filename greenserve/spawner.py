"""One plain greenlet per connection, at most ``limit`` at once.

gevent's ``Pool`` + ``Greenlet`` would do the same, but a ``gevent.Greenlet`` with its link
list and the pool's bookkeeping cost about 1 KiB per connection; with 10,000 parked long
polls that is a tenth of the memory. A raw greenlet whose parent is the hub is what a
Greenlet is underneath, and the few features we use (a cap, join, kill) are kept here.
"""

import logging
from collections import deque

from gevent import get_hub
from gevent.event import Event
from greenlet import GreenletExit, greenlet

error_log = logging.getLogger("greenserve.error")

# Greenlets kept for reuse once their connection ends (each holds a few KiB of stack).
IDLE_GREENLETS = 64
# Resumed connections one greenlet serves in a row before the hub polls for I/O and runs
# its timers (see _serve_resumed): about 2 ms of long-poll answers.
RESUMED_IN_A_ROW = 50


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
        self._resumed = deque()  # handlers of resumed connections, in order
        self._drain_queued = False
        # After a full row, the next starts from this timer, once the hub has polled.
        self._pause = None
        self._paused = False
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
        soon after.

        Resumed connections are served in a row from one greenlet (``_serve_resumed``) when
        many resume at once, as when a long poll's event wakes thousands: one hub callback
        and one switch for the row instead of a callback, a switch in and a switch back for
        each. A drain callback stays queued while any wait, so a handler that blocks only
        hands the rest of the row to another greenlet.
        """
        self.resuming += 1
        self._empty.clear()
        self._resumed.append(handler)
        if not self._drain_queued:
            self._drain_queued = True
            self._hub.loop.run_callback(self._drain)

    def _drain(self):
        """In the hub: serve the resumed connections waiting, unless a row paused (then
        _end_pause serves them)."""
        self._drain_queued = False
        if not self._paused:
            self._start_row()

    def _end_pause(self):
        """In the hub, from the pause timer: the hub has polled; serve the next row."""
        self._paused = False
        self._start_row()

    def _start_row(self):
        """In the hub: serve the resumed connections waiting, in a greenlet of their own."""
        if self._resumed:
            self._take_greenlet().switch(self._serve_resumed, None, None)

    def _serve_resumed(self, _sock, _address):
        """A greenlet body: serve resumed connections in turn, at most RESUMED_IN_A_ROW
        before the hub gets a turn (other connections' input, timers)."""
        resumed = self._resumed
        glet = greenlet.getcurrent()
        for _ in range(RESUMED_IN_A_ROW):
            if not resumed:
                return
            handler = resumed.popleft()
            self.resuming -= 1
            self.held -= 1
            # Only now is the slot of the connection this greenlet served before free in
            # the count (the greenlet was counted for it until it took this one): say so
            # now, not after this handler, which may block for long while an acceptor
            # waits paused at the cap (the sweep does not restart it).
            self._slot_freed()
            if resumed and not self._drain_queued:
                # Should this handler block, the hub goes on with the rest in another greenlet.
                self._drain_queued = True
                self._hub.loop.run_callback(self._drain)
            glet.gr_context = None  # each connection starts in an empty contextvars context
            try:
                handler()
            except GreenletExit:
                raise  # killed: Spawner._run ends this greenlet
            except Exception:
                error_log.exception("unexpected error in a connection greenlet")
            # The handler's connection either parked again (hold) or closed: the next
            # handler takes this greenlet's count, or Spawner._finished frees it.
        else:
            if resumed and not self._paused:
                # A full row, and more wait. gevent's hub polls for I/O and runs timers only
                # once it leaves its callbacks, and checks the clock only every 50 of them: a
                # row is one callback, so rows chained as callbacks (the drain queued above)
                # would hold the hub up to 50 rows long, not 50 handlers. The next row starts
                # from a zero timer instead, after the poll; the queued drain waits for it.
                self._paused = True
                if self._pause is None:
                    self._pause = self._hub.loop.timer(0)
                self._pause.start(self._end_pause)

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
            except GreenletExit:
                # Collected, ended by shrink_idle(), or by a kill() that listed it while it
                # still served a connection: it must not stay among the idle greenlets.
                if glet in idle:
                    idle.remove(glet)
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


def _throw_if_alive(glet):
    if glet:  # started and not dead
        glet.throw(GreenletExit)
