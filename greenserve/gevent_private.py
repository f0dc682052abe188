"""The private gevent attributes greenserve relies on, in one place.

Each saves work on the hot path that gevent's public API would redo per call. A gevent
release may move them; ``tests/test_gevent_private.py`` fails loudly when it does, and the
functions here are the only code that needs to change.
"""



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


def park_watcher(sock):
    """The read watcher gevent keeps on ``sock`` (``sock._read_event``), for a connection
    that waits without a greenlet: ``start(callback)`` calls back from the hub when the
    socket is readable; ``stop()`` before the socket closes or a greenlet reads again."""
    return sock._read_event
