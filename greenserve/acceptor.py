"""Accepting connections on one listening socket, without gevent's StreamServer.

Why our own: StreamServer hands each connection to its handler through two ``f(*args)``
calls, and on Python 3.11+ each re-enters the C eval loop, deepening the C stack that every
parked greenlet keeps a copy of. Calling the handler directly saves about 0.7 KiB per waiting
long poll (measured with ``python -m loadtests.longpoll_scale``), and the loop is short.
"""

import errno
import logging
import select

from gevent import get_hub
from gevent.socket import socket as GeventSocket

from .gevent_private import accept_raw

error_log = logging.getLogger("greenserve.error")

# Connections taken per readiness event, so one busy listener cannot starve the others.
ACCEPT_BATCH = 100
# With several workers on one shared listener, one each: a worker that took a whole burst
# would serve it alone while the others idle (and lose all of it if it died).
SHARED_ACCEPT_BATCH = 1
# Out of file descriptors or memory: wait this long before trying again.
RETRY_DELAY = 0.5
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Acceptor:
    """Calls ``on_connection(sock, address)`` for each accepted client while not ``full()``.

    At the cap it pauses; ``full(acceptor)`` is told which acceptor asked, so the server can
    check ``client_waiting()`` and make room only when somebody actually waits.
    """

    def __init__(self, sock, on_connection, full, batch=ACCEPT_BATCH):
        self.sock = sock
        self.batch = batch
        self.on_connection = on_connection
        self.full = full
        self._loop = get_hub().loop
        self._watcher = None
        self._retry = None
        self._poll = None
        self.closed = False

    @property
    def paused(self):
        return self._watcher is None and not self.closed

    def client_waiting(self):
        """True if a connection waits in the listener's accept queue (a zero-timeout poll)."""
        if self.closed:
            return False
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock.fileno(), select.POLLIN)
        try:
            return bool(self._poll.poll(0))
        except OSError:
            return False

    def start(self):
        """(Re)start watching the listener; idempotent."""
        if self._watcher is None and not self.closed:
            self._watcher = self._loop.io(self.sock.fileno(), 1)
            self._watcher.start(self._accept_ready)

    def pause(self):
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def close(self):
        """Stop accepting and close the listening socket."""
        self.closed = True
        self.pause()
        if self._retry is not None:
            self._retry.stop()
            self._retry.close()
            self._retry = None
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept_ready(self):
        sock = self.sock
        accept = accept_raw(sock)
        for _ in range(self.batch):
            if self.full(self):
                # The spawner's cap is reached; the server restarts us when a slot frees.
                self.pause()
                return
            try:
                fd, address = accept()
            except BlockingIOError:
                return  # another worker sharing the listener took it
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                error_log.error("accept() failed: %s", exc)
                if exc.errno in _RESOURCE_ERRORS:
                    self._back_off()
                return
            client = GeventSocket(sock.family, sock.type, sock.proto, fileno=fd)
            self.on_connection(client, address)

    def _back_off(self):
        """Out of descriptors: stop for a moment instead of spinning on a readable socket."""
        self.pause()
        self._retry = self._loop.timer(RETRY_DELAY)
        self._retry.start(self._resume_after_back_off)

    def _resume_after_back_off(self):
        self._retry.close()
        self._retry = None
        self.start()
