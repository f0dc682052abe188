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
# AdminThread: connections served at once, and how long one may take in all.
ADMIN_CONNECTIONS = 8
CLIENT_TIMEOUT = 5.0
HEAD_LIMIT = 16384
# After an answer, how long and how much of the client's further input is discarded before
# closing (see _linger): short, since each lingering client holds one of the few slots.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


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

    One acceptor thread, and one short-lived thread per connection (at most
    ``ADMIN_CONNECTIONS``), so a slow client cannot hold up a probe. Every thread blocks
    all signals: the kernel then delivers them to the master's main thread, whose loop
    acts on them. Each connection carries one request and is closed.
    """

    def __init__(self, sock, routes):
        self.sock = sock
        self.routes = routes
        self._wake_r = self._wake_w = None
        self._thread = None
        self._slots = None

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
        import select
        import threading
        _block_signals()
        while True:
            self._slots.acquire()
            try:
                readable, _, _ = select.select([self.sock, self._wake_r], [], [])
            except (OSError, ValueError):  # closed under us
                return
            if self._wake_r in readable:
                return
            try:
                conn, _ = self.sock.accept()
            except OSError:
                self._slots.release()
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="greenserve-admin-request").start()

    def _serve(self, conn):
        _block_signals()
        try:
            self._answer(conn)
            _linger(conn)
        except Exception:
            error_log.exception("admin listener: error answering a request")
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, conn):
        # The master's admin endpoint reuses the server's strict request parser.
        from .errors import ProtocolError, RequestTimeout
        from .protocol.parser import Limits, RequestParser
        from .protocol.writer import date_line, error_response, format_head
        parser = RequestParser(Limits(request_line=4096, field_size=HEAD_LIMIT, fields=100,
                                      head=HEAD_LIMIT, body=0))
        deadline = monotonic() + CLIENT_TIMEOUT
        try:
            request = None
            while request is None:
                left = deadline - monotonic()
                if left <= 0:
                    raise RequestTimeout(f"request head not received within "
                                         f"{CLIENT_TIMEOUT:g} s")
                conn.settimeout(left)
                try:
                    data = conn.recv(HEAD_LIMIT)
                except socket.timeout:
                    continue
                if not data:
                    return
                parser.feed(data)
                request = parser.next_request()
        except ProtocolError as exc:
            conn.settimeout(CLIENT_TIMEOUT)
            # RFC 9110 §9.3.2: no content in an answer to HEAD, error or not.
            # No Server field, as in this listener's other answers (and --server-header '').
            conn.sendall(error_response(exc.status, exc.detail, exc.reason,
                                        head=parser.begins_head_request(), server=""))
            return
        accept = ",".join(value.decode("latin-1") for name, value in request.headers
                          if name.lower() == b"accept")
        method = request.method.decode("latin-1")
        status, headers, body = self.routes.respond(method, request.path.decode("latin-1"),
                                                    accept)
        # RFC 9110 §6.6.1: an origin server with a clock sends Date (its error answers above
        # already do).
        extra = f"Content-Length: {len(body)}\r\n{date_line()}Connection: close\r\n"
        head = format_head(status, headers, extra)
        conn.settimeout(CLIENT_TIMEOUT)
        conn.sendall(head if method == "HEAD" else head + body)


def _linger(conn):
    """RFC 9112 §9.6: half-close, then briefly discard what the client still sends, so bytes
    it sent after the answer was decided (the rest of a bad head, a body) do not make the
    kernel reset the connection before the client has read the answer."""
    try:
        conn.shutdown(socket.SHUT_WR)
        end = monotonic() + LINGER_SECONDS
        discarded = 0
        while discarded < LINGER_BYTES:
            left = end - monotonic()
            if left <= 0:
                return
            conn.settimeout(left)
            data = conn.recv(65536)
            if not data:
                return
            discarded += len(data)
    except OSError:  # the bound passed, or the client reset or left: nothing to protect
        pass


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
