"""``environ["greenserve.disconnected"]``: lets a waiting app learn that its client left.

A long poll blocks in the app, not in a socket call, so nothing would notice the peer's FIN
until the app next writes. This object watches the socket only once the app asks (``wait``,
``is_set``, or ``gevent.wait([...])``), so requests that never look cost one small object.
"""

from gevent import get_hub
from gevent.event import Event

# While watching, bytes a client sends early (a pipelined request) are kept for the parser;
# past this much, watching stops rather than buffering without bound.
WATCH_BUFFER_LIMIT = 65536

# What the connection's poll_peer() reports (None: nothing new, keep watching).
PEER_GONE = 1
STOP_WATCHING = 2
HALF_CLOSED = 3


class Disconnected:
    """Becomes set when the client is known to be gone while its request is handled: the
    connection was reset or broke, or a send failed.

    A client that only stops sending (a TCP half-close, ``shutdown(SHUT_WR)``, after a
    complete request) may still be reading: RFC 9112 §9.6 lets it. That sets
    ``half_closed`` but not the event. A plain ``close()`` by the client looks the same on
    the wire until the server writes to it, so an app that must notice such clients before
    its own timeout sends something (a heartbeat chunk) now and then.

    ``wait(timeout=None)`` -> True once set (False on timeout), ``is_set()``, truth value,
    and ``rawlink``/``unlink`` so it works with ``gevent.wait([event, disconnected])``.
    """

    __slots__ = ("_connection", "_event", "_watcher", "_links", "half_closed")

    def __init__(self, connection):
        self._connection = connection
        self._event = None
        self._watcher = None
        self._links = None
        self.half_closed = False

    def is_set(self):
        self._watch()
        if not self._event.is_set():
            self._check()
        return self._event.is_set()

    def __bool__(self):
        return self.is_set()

    def wait(self, timeout=None):
        self._watch()
        return self._event.wait(timeout)

    def rawlink(self, callback):
        self._watch()
        if self._links is None:
            self._links = {}
        # gevent.wait() calls back with the object it waits on: this one, not the Event.
        wrapper = self._links[callback] = lambda _event: callback(self)
        self._event.rawlink(wrapper)

    def unlink(self, callback):
        wrapper = self._links.pop(callback, None) if self._links else None
        if wrapper is not None and self._event is not None:
            self._event.unlink(wrapper)

    def ready(self):
        return self.is_set()

    # -- used by the connection ------------------------------------------------------------

    def set(self):
        """The connection found the peer gone (a failed send or read)."""
        if self._event is None:
            self._event = Event()
        self._event.set()
        self._stop_watching()

    def finish(self, connection_closing):
        """The request is over: stop watching; set if the connection is closing."""
        self._stop_watching()
        if connection_closing and self._event is not None:
            self._event.set()
        self._connection = None

    # -- internals ---------------------------------------------------------------------------

    def _watch(self):
        if self._event is None:
            self._event = Event()
        connection = self._connection
        if self._watcher is None and connection is not None and not self._event.is_set():
            try:
                fileno = connection.fileno()
            except OSError:
                self.set()
                return
            self._watcher = get_hub().loop.io(fileno, 1)
            self._watcher.start(self._check)

    def _stop_watching(self):
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.stop()
            watcher.close()

    def _check(self):
        """Readable (or asked): the connection reads what is there and tells us."""
        connection = self._connection
        if connection is None:
            return
        verdict = connection.poll_peer()
        if verdict == PEER_GONE:
            self.set()
        elif verdict == HALF_CLOSED:
            # Readable for ever from now on: stop watching; only a failed send will tell.
            self.half_closed = True
            self._stop_watching()
        elif verdict == STOP_WATCHING:
            # The request's own reader is on the socket and will see EOF itself; or the
            # connection already holds as much early input as it is willing to.
            self._stop_watching()
