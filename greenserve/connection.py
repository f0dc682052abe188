"""One client connection: receive -> parse -> run the app -> send, for as long as it persists.

Only I/O and orchestration live here; what the bytes mean is the protocol core's job
(``protocol/parser.py`` for requests, ``protocol/response.py`` for the framing of responses)
and the PEP 3333 rules are the bridge's (``wsgi.py``).

Timers are phases and deadlines fired by the server's sweeper (see ``timers.py``).
"""

import logging
import socket
import struct
from time import monotonic, perf_counter

from gevent import getcurrent

from .bodies import RECEIVE_SIZE, BodyReading
from .disconnect import (HALF_CLOSED, PEER_GONE, STOP_WATCHING, WATCH_BUFFER_LIMIT,
                         Disconnected)
from .errors import (AppFailed, BodyReadTimeout, ClientDisconnected, ProtocolError,
                     RequestDeadlineExceeded, RequestTimeout)
from .gevent_private import raw_socket, read_nowait, readable_waiter, send_close_notify
from .later import ResponseLater
from .preludes import ConnectionPreludes
from .protocol.parser import RequestParser
from .protocol.forwarded import FORWARDED_KEYS, apply_forwarded
from .protocol.response import FIXED, NO_BODY, UNTIL_CLOSE
from .protocol.writer import error_response
from .sending import ResponseSending, unread_bytes, unsent_bytes
from .waiting import DEADLINE, NOT_READY, SUSPENDED, GreenletFreeWaits
from .upgrades import UpgradeHandOver, pull_first
from .timers import APP, BODY, IDLE, LINGER, READING_HEAD, SEND, IdleTimeout, phase_timeout
from .wsgi import EMPTY_INPUT, InputStream, StartResponse, build_environ, is_upgrade

error_log = logging.getLogger("greenserve.error")

# struct linger {l_onoff = 1, l_linger = 0}: close() then resets the connection.
ABORTIVE_LINGER = struct.pack("ii", 1, 0)
# 5xx answers a client's request alone can draw (RFC 9110 §15.6.2 Not Implemented: CONNECT,
# an unknown transfer coding; §15.6.6 HTTP Version Not Supported): logged like a 4xx.
CLIENT_CAUSED_5XX = (501, 505)
# Linux's TCP_INFO tcpi_state for a connection the peer has reset (include/net/tcp_states.h).
TCP_STATE_CLOSE = 7
# The refusal cause a phase timer counts as (metrics.REFUSAL_CAUSES); idle is no refusal.
_TIMEOUT_CAUSES = {READING_HEAD: "head_timeout", BODY: "body_timeout",
                   SEND: "send_timeout"}
# Waiting this long for a client's bytes makes a connection a candidate for eviction when
# the server is full and a newcomer waits (see eviction_rank).
EVICTABLE_STALL = 1.0
# Closing with request bytes still arriving: read and discard this long (or this much)
# first, so the kernel does not answer them with a reset that destroys our response.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20
# Idle this long between requests (or before the first), a plain-TCP connection parks: its
# greenlet ends and a read watcher waits for the client's next bytes (see park()).
PARK_AFTER = 1.0


class _Park(Exception):
    """Thrown into a connection idle for PARK_AFTER: give up the greenlet, keep the socket."""


class _Closing(Exception):
    """The server is shutting down and this connection is idle."""


class Connection(ConnectionPreludes, BodyReading, ResponseSending, GreenletFreeWaits,
                 UpgradeHandOver):
    """Serves the requests of one accepted socket; ``run()`` is the greenlet body.

    Its other halves live in their own modules: ``preludes`` (PROXY header, TLS),
    ``bodies`` (wsgi.input and unread bodies), ``sending`` (start_response and sending),
    ``waiting`` (parked between requests, or a response waiting, without a greenlet),
    ``upgrades`` (an Upgrade request's socket offered to the app).
    """

    # Slots: thousands of parked long polls each hold one of these.
    __slots__ = ("server", "sock", "raw_sock", "parser", "greenlet", "phase", "deadline",
                 "phase_seq", "request_deadline", "phase_started", "idle_deadline", "parked",
                 "send_queued", "later", "woken_by", "started",
                 "reading_body",
                 "disconnected", "linger", "aborted", "listener_environ", "remote_addr",
                 "remote_port", "proxied", "tls_subject",
                 "served", "evicted", "request", "environ", "response", "must_close",
                 "continue_pending", "body_error", "error_status", "body_started",
                 "body_received", "body_cap", "upgrade", "handed_over", "body_read",
                 "offered_written")

    def __init__(self, server, sock, address, listener_environ):
        self.server = server
        self.sock = sock
        # The raw, non-blocking socket (see _send); None over TLS.
        self.raw_sock = raw_socket(sock)
        self.tls_subject = None  # a TLS client certificate's subject, if one was given
        self.parser = RequestParser(server.limits)
        self.greenlet = None
        # Timer state, read by the server's sweeper.
        self.phase = IDLE
        self.deadline = 0.0
        self.phase_seq = 0
        self.request_deadline = 0.0  # absolute; 0 = none
        self.phase_started = 0.0
        self.idle_deadline = 0.0  # when waiting for a request, when to give up (0 = never)
        self.parked = False  # waiting for a request without a greenlet (see park())
        self.later = None  # a response waiting without a greenlet (see _suspend)
        self.woken_by = 0
        self.started = 0.0  # perf_counter() when the request began, if anything logs it
        self.send_queued = None  # the kernel's unsent bytes when the send timer was armed
        self.reading_body = False
        self.disconnected = None
        self.linger = False
        self.aborted = False  # closing with a reset: the response sent is not whole
        # Not a per-connection environ copy: an idle connection should cost little.
        self.listener_environ = listener_environ
        if isinstance(address, tuple):
            self.remote_addr = address[0]
            self.remote_port = str(address[1])
        else:
            self.remote_addr = self.remote_port = ""
        # A trusted proxy's forwarded headers are applied (decided once per connection).
        self.proxied = server.forwarded_trust.trusts(self.remote_addr)
        self.served = False   # answered a request: from then on idle means kept alive
        self.evicted = False  # closed to make room for a newcomer (see Server._make_room)
        # Per-request state (reset by _handle).
        self.request = self.environ = self.response = None

    # -- timers ------------------------------------------------------------------------------

    def _enter(self, phase, timeout, cap=0.0):
        """Start a phase whose timer expires ``timeout`` seconds from now (0 = never), or at
        the absolute time ``cap`` if that is sooner.

        While a request runs, its own deadline (--request-timeout) caps every phase's.
        """
        self.phase = phase
        self.phase_seq += 1
        now = self.phase_started = monotonic()
        deadline = now + timeout if timeout else 0.0
        if cap and (not deadline or cap < deadline):
            deadline = cap
        request_deadline = self.request_deadline
        if request_deadline and (not deadline or request_deadline < deadline):
            deadline = request_deadline
        self.deadline = deadline

    def _enter_idle(self, timeout):
        """Wait for a request for up to ``timeout`` seconds (0 = forever); the timer fires
        first after PARK_AFTER, to park the connection (see expire)."""
        self.phase = IDLE
        self.phase_seq += 1
        now = self.phase_started = monotonic()
        idle_deadline = self.idle_deadline = now + timeout if timeout else 0.0
        park_at = now + PARK_AFTER
        self.deadline = park_at if not idle_deadline or park_at < idle_deadline \
            else idle_deadline

    def expire(self, seq):
        """Called from the hub when the deadline of phase number ``seq`` has passed."""
        if seq != self.phase_seq:
            return
        if self.parked:
            self._close_parked()  # a parked connection's one deadline: its idle timeout
            return
        if self.later is not None:
            deadline = self.request_deadline
            self._wake(DEADLINE if deadline and monotonic() >= deadline else NOT_READY)
            return
        glet = self.greenlet
        if glet is None or glet.dead:
            return
        config = self.server.config
        self.deadline = 0.0
        if self.phase == IDLE and (not self.idle_deadline or
                                   monotonic() < self.idle_deadline):
            # Idle for PARK_AFTER, not yet for its timeout. Waiting in IDLE with nothing
            # received, the greenlet can only be blocked in its read: nothing is lost.
            if self.raw_sock is not None and not self.parser.buffered \
                    and not self.server.stopping:
                glet.throw(_Park())
            else:  # TLS may hold decrypted bytes in its buffers: keep waiting as we are
                self.deadline = self.idle_deadline
            return
        stats = self.server.stats
        if self.request_deadline and monotonic() >= self.request_deadline:
            self.request_deadline = 0.0
            if self.upgrade and self._took_socket():
                # A long-lived socket now: no request deadline, but a send or body read of
                # the server's own keeps its phase timer.
                phase = self.phase
                self.deadline = monotonic() + config.send_timeout if phase == SEND else \
                    monotonic() + config.body_timeout if phase == BODY else 0.0
                return
            if stats is not None:
                stats.refused("deadline")
            glet.throw(RequestDeadlineExceeded(
                f"request still running after {config.request_timeout} s"))
            return
        if self.phase == SEND:
            now = monotonic()
            if self.send_progressed(now):
                self.deadline = now + config.send_timeout  # slow, not stalled
                return
        exc = phase_timeout(self.phase, config)
        if exc is not None:
            if stats is not None:
                cause = _TIMEOUT_CAUSES.get(self.phase)
                if cause is not None:
                    stats.refused(cause)
            glet.throw(exc)

    @property
    def idle(self):
        """Waiting for a request with nothing of it received: safe to close."""
        return self.phase == IDLE and not self.parser.buffered

    def eviction_rank(self, now):
        """How readily this connection gives up its slot to a newcomer (lower first), or
        None if it must not: (0, since) for an idle keep-alive connection, (1, since) for
        one stalled at least a second waiting for its client's bytes."""
        if self.evicted or (self.greenlet is None and not self.parked):
            return None
        phase = self.phase
        if phase == IDLE and self.served and not self.parser.buffered:
            return (0, self.phase_started)
        if (phase == IDLE or phase == READING_HEAD or (phase == BODY and self.reading_body)) \
                and now - self.phase_started >= EVICTABLE_STALL:
            return (1, self.phase_started)
        return None

    def evict(self):
        """Give up the slot (the server is at its cap and a client waits)."""
        glet = self.greenlet
        if (glet is None or glet.dead) and not self.parked:
            return
        phase = self.phase
        stats = self.server.stats
        if stats is not None and (phase == IDLE or phase == READING_HEAD or
                                  (phase == BODY and self.reading_body)):
            stats.refused("evicted")
        if self.parked:
            self._close_parked()
        elif phase == IDLE:
            glet.throw(IdleTimeout())
        elif phase == READING_HEAD:
            glet.throw(RequestTimeout("the server is at its connection limit and the "
                                      "request head is too slow"))
        elif phase == BODY and self.reading_body:
            glet.throw(BodyReadTimeout("the server is at its connection limit and the "
                                       "request body is too slow"))
        else:
            self.evicted = False  # it got busy meanwhile: keep it

    def close_if_idle(self):
        """Graceful stop: close now if waiting between requests; True if it did."""
        if self.parked:
            self._close_parked()
            return True
        glet = self.greenlet
        if self.idle and glet is not None and not glet.dead:
            glet.throw(_Closing())
            return True
        return False

    # -- the connection loop -----------------------------------------------------------------

    def run(self):
        """The greenlet body of a new connection."""
        self.greenlet = getcurrent()
        self.server.connections.add(self)
        self._run(self._serve)

    def _run(self, serve):
        try:
            serve()
        except _Park:
            self.park()
        except (IdleTimeout, _Closing, ClientDisconnected, ConnectionError,
                RequestDeadlineExceeded):
            pass
        except OSError as exc:
            error_log.debug("connection error: %s", exc)
        finally:
            self.server.memory.count += 1  # its greenlet's stacks are freed
            if not self.parked and self.later is None:
                if self.linger and not self.evicted and not self.aborted:
                    self._linger()
                self.server.connections.discard(self)
                # The greenlet goes on to serve other connections (Spawner): a timer or
                # eviction of this one already queued must not reach it.
                self.greenlet = None
                self.phase = IDLE
                self.deadline = 0.0
                if self.raw_sock is None and not self.aborted:
                    # TLS: end with close_notify, so the client can tell the end of the
                    # stream from a cut (a reset, when aborted, says the response is cut).
                    send_close_notify(self.sock)
                try:
                    # self.sock, not the socket accepted: over TLS that one was detached
                    # into the SSL socket, and closing it would close nothing.
                    self.sock.close()
                except OSError:
                    pass

    def _linger(self):
        """RFC 9112 §9.6: half-close, then read and discard until the client closes or a
        bound passes, so unread request bytes do not make the kernel reset the connection
        (and destroy the response) before the client has read it."""
        self._enter(LINGER, LINGER_SECONDS)
        try:
            if self.raw_sock is None:
                # TLS: the shutdown below drops the TLS layer; say goodbye in it first.
                send_close_notify(self.sock)
            self.sock.shutdown(socket.SHUT_WR)
            discarded = 0
            while discarded < LINGER_BYTES:
                data = self.sock.recv(65536)
                if not data:
                    break
                discarded += len(data)
        except Exception:  # the bound passed, or the peer reset or left: nothing to protect
            pass

    def _serve(self):
        server = self.server
        sock = self.sock
        if server.nodelay_per_connection and sock.family != socket.AF_UNIX:
            # Headers and body leave in one write, so Nagle would only add latency (on
            # Linux the listener's setting is inherited: see Server.start).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if server.proxy_allow is not None and not self._read_proxy_header():
            return
        if server.tls_context is not None and not self._start_tls():
            return
        # A fresh connection gets the header timer for its first request.
        self._enter_idle(server.config.header_timeout)
        self._serve_requests()

    def _serve_requests(self):
        """Receive, parse and answer requests until the connection must close (or parks)."""
        server = self.server
        config = server.config
        parser = self.parser
        recv = self.sock.recv
        # Between keep-alive requests the next one has almost never arrived yet: wait for
        # readability first instead of paying a failing recv() (syscall + exception). Not
        # over TLS: decrypted bytes may be waiting inside the SSL object.
        wait_readable, read_event = readable_waiter(self.sock) if self.raw_sock is not None \
            else (None, None)
        # With the waiter, receive from the raw socket: one syscall, not gevent's wrapper.
        raw_recv = self.raw_sock.recv if wait_readable is not None else None
        between_requests = False
        keep_alive_timeout = config.keep_alive
        header_timeout = config.header_timeout
        request_timeout = config.request_timeout
        while True:
            try:
                # Usually nothing is buffered after a response: go straight to receiving.
                request = parser.next_request() if parser.buffered else None
                while request is None:
                    if between_requests:
                        between_requests = False
                        if wait_readable is not None:
                            wait_readable(read_event)
                    if parser.buffered and self.phase == IDLE:
                        # RFC 9112 has no head timer, but a slowloris client must not
                        # hold a greenlet forever: the head must arrive within the timer.
                        self._enter(READING_HEAD, header_timeout)
                    if raw_recv is not None:
                        try:
                            data = raw_recv(RECEIVE_SIZE)
                        except BlockingIOError:
                            wait_readable(read_event)
                            continue
                    else:
                        data = recv(RECEIVE_SIZE)
                    if not data:
                        if parser.buffered:
                            raise ClientDisconnected("client closed mid-request")
                        return
                    parser.feed(data)
                    request = parser.next_request()
            except ProtocolError as exc:
                if server.stats is not None and not isinstance(exc, RequestTimeout):
                    server.stats.refused("invalid")
                self._reject(exc)
                if server.access_log:
                    server.access_log.rejected(self.remote_addr, exc.status,
                                               0, None, monotonic() - self.phase_started,
                                               self.remote_port)
                return
            if request_timeout:
                self.request_deadline = monotonic() + request_timeout
            self._enter(APP, 0)
            try:
                keep = self._handle(request)
            except BaseException:
                # Cut short (a graceful stop's kill, a send timeout): a close-delimited body
                # must not end cleanly as if it were whole (RFC 9112 §6.3).
                response = self.response
                if response is not None and response.started:
                    self._cut_response(response)
                raise
            finally:
                if self.later is None:
                    self.request_deadline = 0.0
                    self.request = self.environ = self.response = None
                    server.requests_served += 1
            if keep is SUSPENDED:
                return
            if (not keep or server.stopping) and not self.handed_over and (
                    not parser.body_done or parser.buffered or (request.keep_alive and (
                        unsent_bytes(self.sock) or unread_bytes(self.sock)))):
                # RFC 9112 §9.6: closing while the client may still send (an unread body,
                # pipelined requests, or more requests on a connection it expected to keep)
                # before it has our whole response (bytes still in flight, or its next
                # bytes already here) would let those bytes draw a reset that destroys the
                # response. A client that asked to close sends nothing more (RFC 9112 §9.6:
                # it MUST NOT).
                self.linger = True
            if not keep or server.stopping:
                return
            self.served = True
            self._enter_idle(keep_alive_timeout)
            between_requests = not parser.buffered

    # -- errors --------------------------------------------------------------------------------

    def _send_error(self, exc, keep_alive=False):
        """The one writer of error responses: ``exc`` carries ``status``, ``reason`` and
        ``detail`` (a ProtocolError, a timeout of ours, AppFailed)."""
        request = self.request
        self.error_status = exc.status
        head_request = request.method == b"HEAD" if request is not None \
            else self.parser.begins_head_request()
        self._send(error_response(exc.status, exc.detail, exc.reason, keep_alive,
                                  head_request, self.server.server_line))

    def _reject(self, exc):
        """Answer an error with ``Connection: close``, then let the caller close."""
        self.must_close = True
        # Slow and broken clients are the client's business (and a flood of them must not
        # flood the log): debug. Our own failures are worth an operator's eye.
        level = logging.INFO if exc.status >= 500 and exc.status not in CLIENT_CAUSED_5XX \
            else logging.DEBUG
        error_log.log(level, "%s from %s: %s", exc.status, self.remote_addr, exc.detail)
        try:
            self._send_error(exc)
        except ClientDisconnected:
            return
        # Let the client read the answer before the close: see _linger.
        self.linger = True

    # -- one request ---------------------------------------------------------------------------

    def _handle(self, request, later=None):
        """Run the app for one request (or the ``respond`` of its response that waited,
        ``later``), send and log the answer; True if the connection may carry another,
        SUSPENDED if its response now waits without a greenlet (see _suspend)."""
        server = self.server
        if later is not None:
            environ, upgrade, disconnected = self.environ, self.upgrade, self.disconnected
        else:
            self.request = request
            self.response = None
            self.must_close = not request.keep_alive or server.config.keep_alive <= 0
            self.continue_pending = request.expect_continue
            self.body_error = None
            self.error_status = 0
            self.body_started = self.body_cap = 0.0
            self.body_received = self.body_read = 0
            self.handed_over = False
            self.offered_written = None
            started = self.started = perf_counter() \
                if server.access_log or server.stats is not None else 0.0
            environ = build_environ(self.listener_environ, request, server.script_name,
                                    self.remote_addr, self.remote_port)
            # The environ has the headers now; a parked long poll should not hold them twice.
            request.headers = None
            self.environ = environ
            if self.proxied and not environ.keys().isdisjoint(FORWARDED_KEYS):
                for reason in apply_forwarded(environ, server.forwarded_trust):
                    error_log.debug("forwarded headers from %s: %s", self.remote_addr, reason)
            if self.tls_subject is not None:
                # mod_ssl's name for it, which apps behind Apache already read.
                environ["SSL_CLIENT_S_DN"] = self.tls_subject
            self.upgrade = upgrade = "HTTP_UPGRADE" in environ and is_upgrade(environ)
            if upgrade:
                self._offer_socket(environ)
            has_body = request.chunked or request.content_length
            # Bound to this request: a greenlet the app spawned may use them after the
            # request ended, and must not answer the next request or take its body.
            start_response = StartResponse(self, request)
            environ["wsgi.input"] = InputStream(start_response.receive) if has_body \
                else EMPTY_INPUT
            disconnected = self.disconnected = environ["greenserve.disconnected"] = \
                Disconnected(self)
            if request.chunked and server.config.buffer_chunked_bodies and \
                    not self._buffer_chunked_body(environ):
                disconnected.finish(True)
                if started and self.error_status:
                    server.access_log(environ, self.error_status, 0, perf_counter() - started)
                return False
        result = None
        suspended = False
        try:
            if later is None:
                result = server.app(environ, start_response)
                if result.__class__ is ResponseLater and result.environ is environ:
                    later, result = result, None
                    if upgrade:
                        upgrade = self._decline_upgrade()
                    if self._suspend(later):
                        suspended = True
                        return SUSPENDED
                    result = later.respond(bool(later.waitable.ready()))
            else:
                result = self._woken_result(later)
            body = result
            if upgrade and not self.handed_over and self.response is None \
                    and type(result) not in (list, tuple):
                # A lazy body may call start_response with its first piece: only an app
                # that answered nothing at all took the socket.
                body = pull_first(result)
            if upgrade and (self.handed_over or self.response is None):
                self.handed_over = True  # the app took the socket; nothing more to send
            else:
                self._send_result(body)
        except StopIteration:
            # gunicorn's convention, which flask-sock follows: the app is done with the
            # socket it took. Anywhere else it is a bug in the app.
            if upgrade:
                self.handed_over = True
            else:
                self._app_failed(RuntimeError("the app raised StopIteration"))
        except (ClientDisconnected, ProtocolError):
            # The peer left, or the body's framing broke under the app's read (answered
            # below from body_error).
            self.must_close = True
        except (Exception, RequestDeadlineExceeded, SystemExit) as exc:
            # sys.exit() in a view (argparse's error() calls it) is the app failing: reaching
            # the hub it would end the worker and every request in flight. (KeyboardInterrupt
            # is left to propagate: it is the operator's Ctrl-C in a library program.)
            self._app_failed(exc)
        finally:
            if not suspended:
                if result is not None and hasattr(result, "close"):
                    self._close_result(result)
                response = self.response
                keep = not self.must_close and (response is None or response.keep_alive)
                disconnected.finish(not keep)
        response = self.response
        started = self.started
        if self.handed_over:
            # The connection belonged to another protocol: it ends with the app.
            if started:
                # started is also set for --metrics-bind alone, without an access log.
                elapsed = perf_counter() - started
                if server.stats is not None:
                    server.stats.observe(self.request.method, 101, elapsed, self.body_read, 0)
                if server.access_log:
                    server.access_log(environ, 101, 0, elapsed)
            return False
        if self.body_error is not None and (response is None or not response.started):
            # The body's framing broke while the app read it: answer it if we still can.
            self.response = response = None
            self._reject(self.body_error)
        if started:
            stats = server.stats
            status = self.error_status or (response.code if response is not None else 500)
            elapsed = perf_counter() - started
            sent = response.body_sent if response is not None else 0
            if stats is not None:
                stats.observe(self.request.method, status, elapsed, self.body_read, sent)
            if server.access_log:
                server.access_log(environ, status, sent, elapsed,
                                  response.headers if response is not None else ())
        return keep and self.body_error is None and self._finish_body()

    def _close_result(self, result):
        """PEP 3333: the iterable's close() runs once the response is over, whatever
        happened; a failure in it is logged, never lost."""
        try:
            result.close()
        except (Exception, RequestDeadlineExceeded, SystemExit) as exc:
            if isinstance(exc, RequestDeadlineExceeded):
                self.must_close = True
            error_log.error("error in close() of the app's iterable for %s %s",
                            self.environ["REQUEST_METHOD"], self.environ["RAW_URI"],
                            exc_info=exc)

    def _app_failed(self, exc):
        """The app raised (or outlived --request-timeout): an error response if nothing was
        sent yet, else cut the connection (a partial response must not pass as whole)."""
        environ = self.environ
        response = self.response
        if isinstance(exc, RequestDeadlineExceeded):
            error_log.error("%s %s: %s; interrupted", environ["REQUEST_METHOD"],
                            environ["RAW_URI"], exc)
            self.must_close = True
            answer = exc
        elif isinstance(exc, BodyReadTimeout):
            answer = exc
        else:
            error_log.error("Error handling %s %s", environ["REQUEST_METHOD"],
                            environ["RAW_URI"], exc_info=exc)
            if self.server.stats is not None:
                self.server.stats.app_exception()
            answer = AppFailed()
        if response is not None and response.started:
            self.must_close = True
            self._cut_response(response)
            return
        self.response = None
        if isinstance(answer, BodyReadTimeout):
            self._reject(answer)
            return
        # The connection stays usable only if the request body can still be skipped.
        keep = not self.must_close and not self._must_say_close()
        try:
            self._send_error(answer, keep)
        except ClientDisconnected:
            keep = False
        self.must_close = not keep

    def _cut_response(self, response):
        """The response has begun and will not be finished: make the close say so (unless
        its body is whole after all: the app wrote all of its length, then failed)."""
        framing = response.framing
        if response.ended or framing == NO_BODY or (framing == FIXED and
                                                    not response.remaining):
            return  # a clean close loses nothing: what the kernel still queues is whole
        if framing == UNTIL_CLOSE or unsent_bytes(self.sock):
            # RFC 9112 §6.3: a close-delimited body ends where the connection does, so a
            # clean close would pass the part sent for the whole. A reset says it is not.
            # And bytes the kernel still queues (a client not reading, cut by the request
            # deadline) would outlive a clean close in an orphaned socket, holding up to a
            # send buffer of kernel memory for as long as that client keeps its window shut.
            self._abort_on_close()

    def _abort_on_close(self):
        """Make the coming close a reset (SO_LINGER with a zero timeout), not a clean end."""
        self.aborted = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORTIVE_LINGER)
        except OSError:
            pass

    # -- for the disconnect watcher ------------------------------------------------------------

    def fileno(self):
        """The socket's descriptor, for a watcher that waits on it."""
        return self.sock.fileno()

    def poll_peer(self):
        """Read what the client sent while its request runs (kept for the parser).

        Returns PEER_GONE on a socket error (a reset), HALF_CLOSED on EOF, STOP_WATCHING
        when the request's own body reader is on the socket or enough early input is held,
        else None.
        """
        parser = self.parser
        if self.reading_body or parser.buffered >= WATCH_BUFFER_LIMIT:
            return STOP_WATCHING
        try:
            data = read_nowait(self.sock, WATCH_BUFFER_LIMIT)
        except OSError:
            return PEER_GONE
        if data is None:
            return None
        if not data:
            # Over TLS a reset also reads as the end of the stream: the TCP state tells.
            return PEER_GONE if self._tcp_reset() else HALF_CLOSED
        parser.feed(data)
        return STOP_WATCHING if parser.buffered >= WATCH_BUFFER_LIMIT else None

    def _tcp_reset(self):
        """True if the kernel has seen the peer reset the connection (TCP state CLOSE)."""
        try:
            info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        except (OSError, AttributeError):  # not TCP (a unix socket), or not Linux
            return False
        return bool(info) and info[0] == TCP_STATE_CLOSE

