"""The private gevent attributes greenserve relies on, in one place.

Each saves work on the hot path that gevent's public API would redo per call. A gevent
release may move them; ``tests/test_gevent_private.py`` fails loudly when it does, and the
functions here are the only code that needs to change.
"""

import _socket

from gevent import get_hub
from gevent._socket3 import _closedsocket
from gevent.socket import socket as GeventSocket


# A ConnectionSocket's write watcher before anything needed one (None: closed and dropped).
_UNMADE = object()


class ConnectionSocket(GeventSocket):
    """gevent's cooperative socket for an accepted connection, made and closed with less
    Python than gevent's own: one per connection, so on a ``Connection: close`` workload
    every microsecond here is one per request.

    It is a gevent socket in every other respect (SSL wrapping, ``makefile()``, an app
    given the socket after an upgrade). Its closing takes gevent's own path whenever a
    greenlet still waits on it or a file made from it is open.

    Its write watcher is made the first time something reads ``_write_event``, which only
    a send that finds the kernel's buffer full does (or a shutdown, a close under a waiting
    greenlet, a TLS handshake): most connections never need one, and every parked idle
    connection would keep it (120 bytes).
    """

    __slots__ = ("_lazy_write_event",)

    def __init__(self, family, type, proto, fileno):
        # What gevent's __init__ sets, without its checks for a socket it makes itself.
        self._closed = False
        self._io_refs = 0
        sock = self._sock = self._gevent_sock_class(family, type, proto, fileno)
        sock.setblocking(False)
        hub = self.hub = get_hub()
        self._read_event = hub.loop.io(fileno, 1)
        self._lazy_write_event = _UNMADE
        self.timeout = _socket.getdefaulttimeout()

    @property
    def _write_event(self):
        event = self._lazy_write_event
        if event is _UNMADE:
            event = self._lazy_write_event = self.hub.loop.io(self._sock.fileno(), 2)
        return event

    @_write_event.setter
    def _write_event(self, event):
        self._lazy_write_event = event

    def close(self):
        self._closed = True
        if self._io_refs > 0:
            return  # gevent's rule: a makefile() still open closes it later
        sock, read, write = self._sock, self._read_event, self._lazy_write_event
        if not sock or read is None or write is None or read.callback is not None or (
                write is not _UNMADE and write.callback is not None):
            self._real_close()  # closed already, or a greenlet is waiting: gevent's way
            return
        # Nobody waits on its watchers: close them here instead of through the hub.
        self._read_event = self._lazy_write_event = None
        read.close()
        if write is not _UNMADE:
            write.close()
        self._sock = _closedsocket(sock.family, sock.type, sock.proto, sock.fileno(), "closed")
        # gevent's own last step: other watchers on the descriptor hear of the close first.
        self._drop_ref_on_close(sock)


def raw_socket(sock):
    """The non-blocking ``_socket.socket`` under a gevent socket: its ``send``/``recv``
    are single syscalls, without gevent's wait-and-retry wrapper."""
    return sock._sock


def readable_waiter(sock):
    """``(wait, event)``: ``wait(event)`` parks the current greenlet until ``sock`` is
    readable; ``(None, None)`` where gevent lacks them.

    gevent's ``recv()`` does this wait internally after a failed attempt; calling it first
    saves a failing syscall and an exception when the data has almost surely not arrived
    (between keep-alive requests). Two values rather than a ready callable: every parked
    connection keeps them, and a wrapper object would cost it memory.
    """
    wait = getattr(sock, "_wait", None)
    event = getattr(sock, "_read_event", None)
    if wait is None or event is None:
        return None, None
    return wait, event


def accept_raw(listener):
    """``listener``'s accept returning ``(fd, address)``, without making a socket object
    we would only replace with a gevent one."""
    return listener._accept


def read_nowait(sock, size):
    """What the peer has sent, without waiting: bytes, b"" at the end of its stream, or None
    when nothing is there yet. Over TLS it reads decrypted bytes from the SSL object (the
    raw socket holds ciphertext)."""
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        try:
            return sock._sock.recv(size)
        except BlockingIOError:
            return None
    import ssl
    try:
        return sslobj.read(size)
    except ssl.SSLWantReadError:
        return None
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        return b""


def send_close_notify(sock):
    """Over TLS, send our close_notify alert without waiting for the peer's (an "incomplete
    close", which RFC 9112 §9.8 allows a server): one SSL_shutdown on the non-blocking
    socket. Nothing for a plain socket, or once the TLS layer is gone.

    Without it the client cannot tell our close from a truncation attack: RFC 9112 §9.8
    makes a response without Content-Length or chunked framing complete "only if a valid
    closure alert has been received", and "Servers MUST attempt to initiate an exchange of
    closure alerts with the client before closing the connection" (RFC 8446 §6.1 too)."""
    sslobj = getattr(sock, "_sslobj", None)
    if sslobj is None:
        return
    try:
        # Writes the alert, then cannot read the peer's without waiting: SSLWantReadError
        # (or SSLWantWriteError if the send buffer is full, SSLError after a reset).
        sslobj.shutdown()
    except (OSError, ValueError):
        pass


def park_watcher(sock):
    """The read watcher gevent keeps on ``sock`` (``sock._read_event``), for a connection
    that waits without a greenlet: ``start(callback)`` calls back from the hub when the
    socket is readable; ``stop()`` before the socket closes or a greenlet reads again."""
    return sock._read_event
