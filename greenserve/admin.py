"""The admin listener (--metrics-bind): ``/metrics``, ``/healthz`` and ``/readyz``, on an
address of its own, outside the application's URL space.

Two hosts for the same three routes (``AdminRoutes``):

- under a master, ``AdminThread``: a small thread of plain blocking sockets in the master
  (which runs no gevent). The thread blocks every signal, so the master's handlers and
  its wakeup pipe keep receiving them as before;
- without a master, ``serve_in_process``: a second greenserve ``Server`` on the same hub.

``Health`` holds what the probes answer; the supervisor or the serving loop sets it.
``connection_census`` counts a server's connections by state, in the process that owns
them (see ``metrics.RequestStats.census_wanted``).
"""

import logging
import os
import socket
from time import monotonic

from . import metrics

error_log = logging.getLogger("greenserve.error")

# Without a beat for this long, the master's loop is taken for stuck (it beats every tick).
MASTER_LIVE_TIMEOUT = 10.0
# Requests in the app this long count as waiting (long polls, streams), not active.
WAITING_AFTER = 1.0
# AdminThread: requests answered at once (a thread each); connections whose request head is
# still arriving (read by the acceptor thread alone, so slow clients hold no answering slot);
# and how long one may take in all.
ADMIN_CONNECTIONS = 8
PENDING_CONNECTIONS = 256
CLIENT_TIMEOUT = 5.0
HEAD_LIMIT = 16384
# After refusing a bad head, how long the client's further input is read and discarded before
# the close (see _refuse); at most PENDING_CONNECTIONS connections linger at once.
LINGER_SECONDS = 1.0


class Health:
    """Liveness and readiness for the probes.

    Not ready until ``set_ready()``; ``set_unready(reason)`` while reloading;
    ``set_draining()`` when a graceful stop begins, for good. With ``live_timeout``, the
    loop that owns this calls ``beat()`` at least that often, or ``/healthz`` fails.
    """

    def __init__(self, live_timeout=None):
        self.live_timeout = live_timeout
        self.last_beat = monotonic()
        self.ready = False
        self.reason = "starting"
        self.draining = False

    def beat(self):
        self.last_beat = monotonic()

    def set_ready(self):
        if not self.draining:
            self.ready, self.reason = True, ""

    def set_unready(self, reason):
        self.ready, self.reason = False, reason

    def set_draining(self):
        self.draining = True
        self.ready, self.reason = False, "draining"

    def liveness(self):
        """(live, one line saying why not)."""
        if self.live_timeout is not None:
            silent = monotonic() - self.last_beat
            if silent > self.live_timeout:
                return False, f"the master's loop has not run for {silent:.1f} s"
        return True, ""

    def readiness(self):
        return self.ready, self.reason


class AdminRoutes:
    """The three routes: ``respond(method, path, accept)`` -> (status, headers, body).

    ``collect()`` returns the metric families (it may take a moment: under a master it
    waits for the workers' connection counts).
    """

    def __init__(self, health, collect):
        self.health = health
        self.collect = collect

    def respond(self, method, path, accept=""):
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _text("404 Not Found", "not found: try /metrics, /healthz or /readyz")
        # RFC 9110 §15.5.6: a 405 lists the methods the resource allows.
        if method not in ("GET", "HEAD"):
            return _text("405 Method Not Allowed", "only GET and HEAD",
                         [("Allow", "GET, HEAD")])
        if path == "/healthz":
            live, why = self.health.liveness()
            return _text("200 OK", "ok") if live else _text("503 Service Unavailable", why)
        if path == "/readyz":
            ready, why = self.health.readiness()
            return (_text("200 OK", "ready") if ready
                    else _text("503 Service Unavailable", f"not ready: {why}"))
        content_type = metrics.negotiate(accept)
        try:
            body = metrics.render(self.collect(), content_type)
        except Exception:
            error_log.exception("error collecting metrics")
            return _text("500 Internal Server Error", "error collecting metrics (logged)")
        return "200 OK", [("Content-Type", content_type), ("Cache-Control", "no-store")], body

    def wsgi(self, environ, start_response):
        """The routes as a WSGI application (served by greenserve without a master)."""
        status, headers, body = self.respond(environ["REQUEST_METHOD"],
                                             environ.get("PATH_INFO", ""),
                                             environ.get("HTTP_ACCEPT", ""))
        # For HEAD greenserve sends the head only, with this length (RFC 9110 §9.3.2).
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [body]


def _text(status, line, headers=()):
    return (status, [("Content-Type", "text/plain; charset=utf-8"),
                     ("Cache-Control", "no-store"), *headers], (line + "\n").encode())


# -- under a master: a thread --------------------------------------------------------------

class AdminThread:
    """Serves ``routes`` on the listening socket ``sock`` from threads of the master.

    One acceptor thread reads the request heads of every connection (up to
    ``PENDING_CONNECTIONS``, the oldest closed to make room) with a selector, so clients
    that connect and send their head slowly or never cannot hold up a probe; a complete
    request is answered in a short-lived thread of its own (at most ``ADMIN_CONNECTIONS``
    at once). Every thread blocks all signals: the kernel then delivers them to the
    master's main thread, whose loop acts on them. Each connection carries one request and
    is closed.
    """

    def __init__(self, sock, routes):
        self.sock = sock
        self.routes = routes
        self._wake_r = self._wake_w = None
        self._thread = None
        self._slots = None
        self._lingering = {}  # refused connections read until closed: conn -> deadline

    def start(self):
        import threading
        self.sock.setblocking(True)
        self._wake_r, self._wake_w = os.pipe()
        self._slots = threading.BoundedSemaphore(ADMIN_CONNECTIONS)
        self._thread = threading.Thread(target=self._accept_loop, name="greenserve-admin",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout=2.0):
        """Stop accepting, wait a little for the acceptor, close the socket."""
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self):
        """Close the socket and the wakeup pipe; also what a forked worker calls, as it
        has none of the threads but all of the descriptors."""
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = None
        self.sock.close()

    def _accept_loop(self):
        import selectors
        _block_signals()
        # Connections whose head is arriving: conn -> (parser, deadline); refused ones whose
        # input is discarded before the close: conn -> deadline. Within each, all get the same
        # time, so the dict's order (insertion) is also the order of their deadlines.
        pending = {}
        lingering = self._lingering
        selector = selectors.DefaultSelector()
        try:
            selector.register(self.sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while True:
                deadlines = [next(iter(pending.values()))[1]] if pending else []
                if lingering:
                    deadlines.append(next(iter(lingering.values())))
                timeout = max(0.0, min(deadlines) - monotonic()) if deadlines else None
                try:
                    events = selector.select(timeout)
                except (OSError, ValueError):  # closed under us
                    return
                for key, _ in events:
                    if key.fileobj == self._wake_r:
                        return
                    if key.fileobj is self.sock:
                        self._accept(selector, pending)
                    elif key.fileobj in lingering:
                        self._discard(selector, key.fileobj)
                    else:
                        self._read_head(selector, pending, key.fileobj)
                self._expire(selector, pending)
        finally:
            for conn in [*pending, *lingering]:
                conn.close()
            selector.close()

    def _accept(self, selector, pending):
        import selectors
        try:
            conn, _ = self.sock.accept()
        except OSError:  # gone before we got to it, or the socket closed under us
            return
        if len(pending) >= PENDING_CONNECTIONS:
            # The one that has waited longest gives up its place to the newcomer.
            oldest = next(iter(pending))
            self._drop(selector, pending, oldest)
        conn.setblocking(False)
        parser = self._parser()
        pending[conn] = (parser, monotonic() + CLIENT_TIMEOUT)
        selector.register(conn, selectors.EVENT_READ)

    @staticmethod
    def _parser():
        # The master's admin endpoint reuses the server's strict request parser.
        from .protocol.parser import Limits, RequestParser
        return RequestParser(Limits(request_line=4096, field_size=HEAD_LIMIT, fields=100,
                                    head=HEAD_LIMIT, body=0))

    def _read_head(self, selector, pending, conn):
        from .errors import ProtocolError
        parser = pending[conn][0]
        try:
            data = conn.recv(HEAD_LIMIT)
        except BlockingIOError:
            return
        except OSError:
            self._drop(selector, pending, conn)
            return
        if not data:
            self._drop(selector, pending, conn)
            return
        try:
            parser.feed(data)
            request = parser.next_request()
        except ProtocolError as exc:
            self._refuse(selector, pending, conn, exc)
            return
        if request is not None:
            selector.unregister(conn)
            del pending[conn]
            self._dispatch(conn, request)

    def _expire(self, selector, pending):
        from .errors import RequestTimeout
        now = monotonic()
        lingering = self._lingering
        while lingering:
            conn, deadline = next(iter(lingering.items()))
            if deadline > now:
                break
            self._drop(selector, lingering, conn)
        while pending:
            conn, (_, deadline) = next(iter(pending.items()))
            if deadline > now:
                return
            self._refuse(selector, pending, conn, RequestTimeout(
                f"request head not received within {CLIENT_TIMEOUT:g} s"))

    @staticmethod
    def _drop(selector, pending, conn):
        selector.unregister(conn)
        del pending[conn]
        conn.close()

    def _refuse(self, selector, pending, conn, exc):
        """Answer a bad or late head with its error (a short answer the empty send buffer
        takes at once, without a thread), then linger before the close."""
        from .protocol.writer import error_response
        parser = pending.pop(conn)[0]
        try:
            # RFC 9110 §9.3.2: no content in an answer to HEAD, error or not. No Server field,
            # as in this listener's other answers (and --server-header '').
            conn.send(error_response(exc.status, exc.detail, exc.reason,
                                     head=parser.begins_head_request(), server=""))
            # RFC 9112 §9.6: half-close, then discard what the client still sends (the rest
            # of a bad head, a body) for a moment: closing with it unread would make the
            # kernel reset the connection before the client has read the answer.
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            selector.unregister(conn)
            conn.close()
            return
        lingering = self._lingering
        if len(lingering) >= PENDING_CONNECTIONS:
            self._drop(selector, lingering, next(iter(lingering)))
        lingering[conn] = monotonic() + LINGER_SECONDS

    def _discard(self, selector, conn):
        """Input of a refused connection: read and drop it; close at its end."""
        try:
            if conn.recv(65536):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        self._drop(selector, self._lingering, conn)

    def _dispatch(self, conn, request):
        """Answer a complete request in a thread."""
        import threading
        # Only answering holds a slot, which takes a moment: a probe waits for no slow client.
        self._slots.acquire()
        try:
            threading.Thread(target=self._serve, args=(conn, request), daemon=True,
                             name="greenserve-admin-request").start()
        except BaseException:
            self._slots.release()
            conn.close()
            raise

    def _serve(self, conn, request):
        _block_signals()
        try:
            conn.setblocking(True)
            conn.settimeout(CLIENT_TIMEOUT)
            self._answer(conn, request)
        except Exception:
            error_log.exception("admin listener: error answering a request")
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, conn, request):
        from .protocol.writer import date_line, format_head
        accept = ",".join(value.decode("latin-1") for name, value in request.headers
                          if name.lower() == b"accept")
        method = request.method.decode("latin-1")
        status, headers, body = self.routes.respond(method, request.path.decode("latin-1"),
                                                    accept)
        # RFC 9110 §6.6.1: an origin server with a clock sends Date.
        extra = f"Content-Length: {len(body)}\r\n{date_line()}Connection: close\r\n"
        head = format_head(status, headers, extra)
        conn.sendall(head if method == "HEAD" else head + body)


def _block_signals():
    import signal
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())


# -- without a master: a second greenserve server --------------------------------------------

def serve_in_process(sock, routes, config):
    """Start a greenserve ``Server`` answering ``routes`` on ``sock`` in this hub; returns
    it (``stop()`` it when the main server stops). Its requests are not counted."""
    import dataclasses

    from .server import Server
    # Plain HTTP, as with a master: probes (a Kubernetes httpGet, a load balancer's check)
    # and scrapers reach it without the app's TLS settings.
    admin_config = dataclasses.replace(
        config, access_log=None, proxy_protocol=False, root_path="", workers=1,
        max_connections=64, request_timeout=30.0, certfile=None, keyfile=None, ca_certs=None,
        cert_reqs="none")
    server = Server(routes.wsgi, admin_config, listeners=[sock])
    server.start()
    return server


def local_collector(stats, server, sockets=()):
    """``collect()`` for a process without a master: its own slot, census and /proc."""
    def collect():
        answer_census(server, stats, force=True)
        totals = metrics.Totals()
        totals.add(stats.ints, stats.floats)
        families = metrics.request_families(totals)
        usage = metrics.process_usage()
        if usage is not None:
            families += metrics.process_families({"worker": usage[:2]}, {"worker": usage[2]})
        return families + metrics.listener_families(sockets)
    return collect


# -- connection census (in the process that owns the connections) ----------------------------

def connection_census(connections, now):
    """Counts of ``connections`` by ``metrics.CONNECTION_STATES``."""
    from .timers import APP, BODY, IDLE, LINGER, READING_HEAD, SEND
    reading = active = waiting = idle = closing = 0
    for connection in connections:
        phase = connection.phase
        if phase == IDLE:
            if connection.served and connection.idle:
                idle += 1
            else:
                reading += 1  # a new connection, or the next request's first bytes
        elif phase == APP:
            if now - connection.phase_started >= WAITING_AFTER:
                waiting += 1
            else:
                active += 1
        elif phase == SEND:
            active += 1
        elif phase == READING_HEAD or phase == BODY:
            reading += 1
        elif phase == LINGER:
            closing += 1
    return reading, active, waiting, idle, closing


def answer_census(server, stats, force=False):
    """If the master asked (or ``force``), publish ``server``'s connection counts and free
    connection slots in ``stats``. Called on the server's periodic tick."""
    if force or stats.census_wanted():
        free = max(0, server.config.max_connections - len(server.spawner))
        stats.publish_census(connection_census(server.connections, monotonic()), free)
