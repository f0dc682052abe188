"""Waiting without a greenlet: a connection parked between requests, or a response that
waits for a gevent waitable (``greenserve.respond_later``).

A greenlet blocked in a read or an ``event.wait()`` keeps its stacks, several KiB. Here the
connection keeps only its socket, parser and slot (``Spawner.hold``), and a watcher or a link
starts a greenlet again in that slot when there is something to do (``Spawner.resume``).

A mixin of ``connection.Connection``, in a module of its own so that each file keeps one job.
"""

import logging

from gevent import getcurrent

from .disconnect import HALF_CLOSED, PEER_GONE
from .errors import RequestDeadlineExceeded
from .gevent_private import park_watcher
from .timers import APP

error_log = logging.getLogger("greenserve.error")

# What woke a response waiting without a greenlet (see _suspend): its waitable became
# ready; its timeout passed, the client left, or the server stops (all answered "not
# ready"); or the request's own deadline passed (answered 503 whatever respond says).
READY, NOT_READY, DEADLINE = 1, 2, 3
# The connection's _handle returns this for a response that now waits without a greenlet.
SUSPENDED = object()


class GreenletFreeWaits:
    """Parking (``park``) and responses answered later (``_suspend``)."""

    __slots__ = ()

    # -- parking: an idle connection without a greenlet ----------------------------------------

    def _resume(self):
        """The greenlet body of a parked connection whose client sent something."""
        self.greenlet = getcurrent()
        self._run(self._serve_requests)

    def park(self):
        """Wait for the client's next bytes without a greenlet; False if it must close instead.

        A greenlet waiting in a read holds its stacks (several KiB); a parked connection holds
        only its socket, parser and slot, and a read watcher that starts a new greenlet when
        bytes arrive. Only connections idle for PARK_AFTER park, so the busy path is unchanged.
        """
        server = self.server
        if server.stopping:
            return False
        self.greenlet = None
        self.parked = True
        # Nothing of the last request need stay: its body is done, nothing is buffered.
        self.disconnected = self.parser.request = None
        server.spawner.hold()
        self.deadline = self.idle_deadline  # the idle timeout still applies (expire)
        park_watcher(self.sock).start(self._unpark)
        return True

    def _unpark(self):
        """In the hub: the parked client sent something (or closed): serve it again."""
        park_watcher(self.sock).stop()
        self.parked = False
        self.server.spawner.resume(self._resume)

    def _close_parked(self):
        """In the hub: close a parked connection (idle timeout, eviction, stop)."""
        park_watcher(self.sock).stop()
        self.parked = False
        self.server.connections.discard(self)
        self.deadline = 0.0
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.spawner.release()

    # -- a response waiting without a greenlet (greenserve.respond_later) -----------------------

    def _suspend(self, later):
        """The app returned ``respond_later(...)``: end the greenlet, keep the connection and
        its slot, and answer in a new greenlet when the waitable is ready, the timeout
        passes, the client leaves or the server stops. False if there is nothing to wait
        for (ready already, a zero timeout, or stopping): the caller answers at once."""
        timeout = later.timeout
        server = self.server
        if timeout == 0 or server.stopping or later.waitable.ready():
            return False
        # What can fail comes first, before the slot is held and the greenlet let go.
        # Its timer: the app's timeout, capped by --request-timeout (see expire).
        self._enter(APP, timeout or 0.0)
        later.waitable.rawlink(self._on_ready)
        self.later = later
        self.woken_by = 0
        self.greenlet = None
        server.spawner.hold()
        # The socket's own read watcher (idle while the app runs): a reset ends the wait.
        park_watcher(self.sock).start(self._watch_peer)
        return True

    def _on_ready(self, _waitable):
        self._wake(READY)

    def _watch_peer(self):
        """In the hub, while a response waits: the client sent something, or left."""
        verdict = self.poll_peer()
        if verdict is None:
            return
        if verdict == PEER_GONE:
            self.disconnected.set()
            self._wake(NOT_READY)
            return
        # Half-closed (it may still read its answer: RFC 9112 §9.6), or as much early
        # input is held as we keep: only the answer's send can tell more.
        if verdict == HALF_CLOSED:
            self.disconnected.half_closed = True
        park_watcher(self.sock).stop()

    def wake(self):
        """The server stops: answer a waiting response now (as not ready)."""
        if self.later is not None:
            self._wake(NOT_READY)

    def _wake(self, cause):
        """In the hub: end the wait (once) and answer in a greenlet in the held slot."""
        later = self.later
        if later is None or self.woken_by:
            return
        self.woken_by = cause
        if cause != READY:  # a ready waitable dropped the link as it called it
            later.waitable.unlink(self._on_ready)
        park_watcher(self.sock).stop()
        self.deadline = 0.0
        self.server.spawner.resume(self._resume_later)

    def _resume_later(self):
        """The greenlet body of a waiting response that woke."""
        self.greenlet = getcurrent()
        self._run(self._serve_later)

    def _serve_later(self):
        """Answer the woken response, then serve the connection as usual (the tail of
        _serve_requests' loop, then the loop)."""
        server = self.server
        later, self.later = self.later, None
        try:
            keep = self._handle(self.request, later)
        finally:
            self.request_deadline = 0.0
            self.request = self.environ = self.response = None
            server.requests_served += 1
        if not keep and not self.parser.body_done:
            self.linger = True
        if not keep or server.stopping:
            return
        self.served = True
        self._enter_idle(server.config.keep_alive)
        # Park at once: after a long poll's answer the greenlet serves the next woken one
        # (see Spawner.resume); the client's next request will unpark the connection.
        if self.raw_sock is not None and not self.parser.buffered and self.park():
            return
        self._serve_requests()

    def _woken_result(self, later):
        """What ``respond`` returns; RequestDeadlineExceeded (503) instead if the request's
        deadline passed while it waited (``respond`` still runs, once, as promised: the
        app may count its waiters; its answer is dropped)."""
        if self.woken_by != DEADLINE:
            self._enter(APP, 0)  # back under the request's own deadline alone
            return later.respond(self.woken_by == READY)
        self.request_deadline = 0.0
        if self.server.stats is not None:
            self.server.stats.refused("deadline")
        try:
            dropped = later.respond(False)
            if hasattr(dropped, "close"):
                self._close_result(dropped)
        except Exception as exc:
            error_log.error("error in respond() after the request deadline for %s %s",
                            self.environ["REQUEST_METHOD"], self.environ["RAW_URI"],
                            exc_info=exc)
        self.response = None  # its start_response, if any, is replaced by the 503
        raise RequestDeadlineExceeded(
            f"request still running after {self.server.config.request_timeout} s")
