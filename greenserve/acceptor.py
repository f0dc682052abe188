"""Accepting connections on one listening socket, without gevent's StreamServer.

Why our own: StreamServer hands each connection to its handler through two ``f(*args)``
calls, and on Python 3.11+ each re-enters the C eval loop, deepening the C stack that every
parked greenlet keeps a copy of. Calling the handler directly saves about 0.7 KiB per waiting
long poll (measured with ``python -m loadtests.longpoll_scale``), and the loop is short.
"""

import errno
import logging
import select
import socket
import struct
from time import monotonic

from gevent import get_hub
from gevent.monkey import get_original

from .balance import MISSES_TO_STOP, STAND_BACK, STOP_STANDING_BACK
from .gevent_private import ConnectionSocket, accept_raw

error_log = logging.getLogger("greenserve.error")

# Connections taken per readiness event, so one busy listener cannot starve the others.
ACCEPT_BATCH = 100
# With several workers on one shared listener, one each: a worker that took a whole burst
# would serve it alone while the others idle (and lose all of it if it died).
SHARED_ACCEPT_BATCH = 1
# Out of file descriptors or memory: wait this long before trying again.
RETRY_DELAY = 0.5
_RESOURCE_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Linux's struct tcp_info: on a listening socket tcpi_unacked (a u32 at this offset) is the
# number of connections waiting in its accept queue.
TCPI_UNACKED = 24


def queued_connections(listener):
    """How many connections wait in ``listener``'s accept queue; None where the kernel cannot
    tell (a unix socket, not Linux)."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_UNACKED + 4)
    except (OSError, AttributeError):
        return None
    return struct.unpack_from("I", info, TCPI_UNACKED)[0] if len(info) >= TCPI_UNACKED + 4 \
        else None


class Acceptor:
    """Calls ``on_connection(sock, address)`` for each accepted client while not ``full()``.

    ``full(acceptor)`` is told which acceptor asked, so at the cap the server can check
    ``client_waiting()``, make room only when somebody actually waits, and ``pause()`` the
    acceptor until a slot frees; until then the acceptor keeps watching, so the next
    newcomer is noticed at once.
    """

    def __init__(self, sock, on_connection, full, batch=ACCEPT_BATCH, stand_back=None,
                 raced_elsewhere=None):
        self.sock = sock
        self.batch = batch
        # What each accepted socket is made with, read once: gevent's socket makes an
        # IntEnum of family and type on every read, which cost ~2% of a short connection.
        self._socket_kind = (int(sock.family), int(sock.type), sock.proto)
        self.on_connection = on_connection
        self.full = full
        # Workers sharing the listener: stand_back() says when to leave a connection to a
        # less loaded one for STAND_BACK seconds, raced_elsewhere(moment) whether that one
        # has been woken to accept since (see balance.py).
        self.stand_back = stand_back
        self.raced_elsewhere = raced_elsewhere
        self._loop = get_hub().loop
        self._watcher = None
        self._retry = None
        self._poll = None
        self._stood_back = False
        self._stood_back_at = 0.0
        self._queued_at_stand_back = None
        self._stand_back_after = 0.0  # monotonic time before which it does not stand back
        self._missed = 0  # stand-backs in a row after which the connection still waited
        self.closed = False

    @property
    def paused(self):
        return self._watcher is None and not self.closed

    def client_waiting(self):
        """True if a connection waits in the listener's accept queue (a zero-timeout poll)."""
        if self.closed:
            return False
        if self._poll is None:
            # The real poll even under monkey-patching: gevent's cannot run in a loop
            # callback, and a zero timeout never blocks anyway.
            self._poll = get_original("select", "poll")()
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
        self._stop_retry()
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept_ready(self):
        if self.stand_back is not None:
            if self._stood_back:
                self._stood_back = False  # nobody took it meanwhile: accept after all
            elif monotonic() >= self._stand_back_after and self.stand_back():
                self._stood_back = True
                self._stood_back_at = monotonic()
                self._queued_at_stand_back = queued_connections(self.sock)
                self._wait(STAND_BACK)
                return
        sock = self.sock
        accept = accept_raw(sock)
        family, kind, proto = self._socket_kind
        for _ in range(self.batch):
            if self.full(self):
                # The cap is reached: the server makes room (and pauses us) or waits.
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
            client = ConnectionSocket(family, kind, proto, fd)
            self.on_connection(client, address)

    def _back_off(self):
        """Out of descriptors: stop for a moment instead of spinning on a readable socket."""
        self._wait(RETRY_DELAY)

    def _wait(self, seconds):
        """Stop watching for ``seconds``, then watch again."""
        self.pause()
        self._stop_retry()
        self._retry = self._loop.timer(seconds)
        self._retry.start(self._resume_after_wait)

    def _resume_after_wait(self):
        self._stop_retry()
        if self._stood_back:
            if self.client_waiting() and not self._newer_arrivals():
                # Nobody came for it. Accept; if the other worker is stuck or overloaded
                # (not just slow once), stop standing back for a while rather than pause
                # before every accept.
                self._missed += 1
                if self._missed >= MISSES_TO_STOP:
                    self._missed = 0
                    self._stand_back_after = monotonic() + STOP_STANDING_BACK
            else:
                # The other worker took it (anything waiting now came later): decide afresh.
                self._missed = 0
                self._stood_back = False
        self.start()

    def _newer_arrivals(self):
        """After a stand-back, connections still wait: True if they are newer arrivals, which
        the other worker is taking as they come (it was woken to accept meanwhile, and the
        queue did not grow), False if they are left over (it is stuck, or too busy to keep
        up)."""
        if self.raced_elsewhere is None or not self.raced_elsewhere(self._stood_back_at):
            return False
        before, now = self._queued_at_stand_back, queued_connections(self.sock)
        return before is None or now is None or now <= before

    def _stop_retry(self):
        if self._retry is not None:
            self._retry.stop()
            self._retry.close()
            self._retry = None
