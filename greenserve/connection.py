"""One client connection: receive -> parse -> run the app -> send, for as long as it persists.

Timers are not gevent Timeouts (a timer object per blocking call costs on every request):
the connection only records which phase it is in and when that phase expires; the server's
sweeper greenlet throws the phase's named exception into it once the deadline has passed.
"""

import logging
import os
import socket
from stat import S_ISREG
from time import monotonic, perf_counter

from gevent import Timeout, getcurrent
from gevent.socket import wait_write

from .disconnect import Disconnected
from .errors import (BodyReadTimeout, ClientDisconnected, ProtocolError,
                     RequestDeadlineExceeded, RequestTimeout)
from .protocol.parser import RequestParser
from .protocol.writer import (CHUNKED, CONTINUE_RESPONSE, FIXED, LAST_CHUNK, NO_BODY,
                              SERVER_NAME, UNTIL_CLOSE, choose_framing, error_response,
                              format_head, frame_chunk, http_date)
from .wsgi import FileWrapper, InputStream, build_environ, check_headers, check_status

error_log = logging.getLogger("greenserve.error")

# Phases: what the connection is waiting for, and so which timer applies.
IDLE, HEAD, APP, BODY, SEND = range(5)

RECEIVE_SIZE = 65536
# An unread request body up to this size is read and discarded to keep the connection.
DRAIN_LIMIT = 1 << 20
# Closing with request bytes still arriving: read and discard this long (or this much)
# first, so the kernel does not answer them with a reset that destroys our response.
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20


class IdleTimeout(Exception):
    """A keep-alive connection stayed idle too long; it is closed without a response."""


class _Closing(Exception):
    """The server is shutting down and this connection is idle."""


def _no_body(max_bytes):
    return b""


# Stateless once at its end, so every bodiless request can share one.
_EMPTY_INPUT = InputStream(_no_body)
_EMPTY_INPUT.read()


class Connection:
    """Serves the requests of one accepted socket; ``run()`` is the greenlet body."""

    # Slots: thousands of parked long polls each hold one of these.
    __slots__ = ("server", "sock", "raw_send", "parser", "greenlet", "phase", "deadline",
                 "phase_seq", "request_deadline", "phase_started", "requests",
                 "reading_body", "disconnected", "request", "status", "headers_sent",
                 "environ", "listener_environ", "remote_addr", "remote_port", "keep_alive",
                 "continue_pending", "body_error", "body_sent", "method", "status_code",
                 "response_info", "response_headers", "framing", "remaining", "linger")

    def __init__(self, server, sock, address, listener_environ):
        self.server = server
        self.sock = sock
        # The raw, non-blocking socket under gevent's wrapper (see _send).
        self.raw_send = sock._sock.send
        self.parser = RequestParser(server.limits)
        self.greenlet = None
        # Timer state, read by the server's sweeper.
        self.phase = IDLE
        self.deadline = 0.0
        self.phase_seq = 0
        self.request_deadline = 0.0  # absolute; 0 = none
        self.phase_started = 0.0
        self.requests = 0
        self.reading_body = False
        self.disconnected = None
        self.linger = False
        # Per-request response state (reset by _handle).
        self.request = None
        self.status = None
        self.headers_sent = False
        self.environ = None
        # Not a per-connection environ copy: an idle connection should cost little.
        self.listener_environ = listener_environ
        if isinstance(address, tuple):
            self.remote_addr = address[0]
            self.remote_port = str(address[1])
        else:
            self.remote_addr = self.remote_port = ""

    # -- timers ------------------------------------------------------------------------------

    def _enter(self, phase, timeout):
        """Start a phase whose timer expires ``timeout`` seconds from now (0 = never).

        While a request runs, its own deadline (--request-timeout) caps every phase's.
        """
        self.phase = phase
        self.phase_seq += 1
        now = self.phase_started = monotonic()
        deadline = now + timeout if timeout else 0.0
        request_deadline = self.request_deadline
        if request_deadline and (not deadline or request_deadline < deadline):
            deadline = request_deadline
        self.deadline = deadline

    def expire(self, seq):
        """Called from the hub when the deadline of phase number ``seq`` has passed."""
        glet = self.greenlet
        if seq != self.phase_seq or glet is None or glet.dead:
            return
        phase = self.phase
        self.deadline = 0.0
        if self.request_deadline and monotonic() >= self.request_deadline:
            self.request_deadline = 0.0
            glet.throw(RequestDeadlineExceeded(
                f"request still running after {self.server.config.request_timeout} s"))
        elif phase == IDLE:
            glet.throw(IdleTimeout())
        elif phase == HEAD:
            glet.throw(RequestTimeout(
                f"request head not received within {self.server.config.header_timeout} s"))
        elif phase == BODY:
            glet.throw(BodyReadTimeout(
                f"request body stalled for {self.server.config.body_timeout} s"))
        elif phase == SEND:
            glet.throw(ClientDisconnected(
                f"client read nothing for {self.server.config.send_timeout} s"))

    @property
    def idle(self):
        """Waiting for a request with nothing of it received: safe to close."""
        return self.phase == IDLE and not self.parser.buffered

    def close_if_idle(self):
        """Graceful stop: close now if waiting between requests; True if it did."""
        glet = self.greenlet
        if self.idle and glet is not None and not glet.dead:
            glet.throw(_Closing())
            return True
        return False

    # -- the connection loop -----------------------------------------------------------------

    def run(self):
        server = self.server
        self.greenlet = getcurrent()
        server.connections.add(self)
        sock = self.sock
        try:
            if sock.family != socket.AF_UNIX:
                # Headers and body leave in one write, so Nagle would only add latency.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve()
        except (IdleTimeout, _Closing, ClientDisconnected, ConnectionError,
                RequestDeadlineExceeded):
            pass
        except OSError as exc:
            error_log.debug("connection error: %s", exc)
        finally:
            server.connections.discard(self)
            self.phase = IDLE
            self.deadline = 0.0
            if self.linger:
                self._linger()
            try:
                sock.close()
            except OSError:
                pass

    def _linger(self):
        """RFC 9112 §9.6: half-close, then read and discard until the client closes or a
        bound passes, so unread request bytes do not make the kernel reset the connection
        (and destroy the response) before the client has read it."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            discarded = 0
            with Timeout(LINGER_SECONDS, False):
                while discarded < LINGER_BYTES:
                    data = self.sock.recv(65536)
                    if not data:
                        break
                    discarded += len(data)
        except Exception:  # the peer reset or went away: nothing left to protect
            pass

    def _serve(self):
        server = self.server
        config = server.config
        parser = self.parser
        recv = self.sock.recv
        # Between keep-alive requests the next one has almost never arrived yet: wait for
        # readability first instead of paying a failing recv() (syscall + exception) each
        # time. gevent's recv() does the same wait internally; older gevents lack the hook.
        wait_readable = getattr(self.sock, "_wait", None)
        read_event = getattr(self.sock, "_read_event", None)
        if read_event is None:
            wait_readable = None
        between_requests = False
        keep_alive_timeout = config.keep_alive
        header_timeout = config.header_timeout
        request_timeout = config.request_timeout
        # A fresh connection gets the header timer for its first request.
        self._enter(IDLE, header_timeout)
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
                        self._enter(HEAD, header_timeout)
                    data = recv(RECEIVE_SIZE)
                    if not data:
                        if parser.buffered:
                            raise ClientDisconnected("client closed mid-request")
                        return
                    parser.feed(data)
                    request = parser.next_request()
            except ProtocolError as exc:
                self._reject(exc)
                return
            if request_timeout:
                self.request_deadline = monotonic() + request_timeout
            self._enter(APP, 0)
            self.requests += 1
            try:
                keep = self._handle(request)
            finally:
                self.request_deadline = 0.0
                server.requests_served += 1
            if not keep and not parser.body_done:
                self.linger = True
            if not keep or server.stopping:
                return
            self._enter(IDLE, keep_alive_timeout)
            between_requests = not parser.buffered

    def _reject(self, exc):
        """Answer a request we could not parse, then let the caller close."""
        self._enter(SEND, self.server.config.send_timeout)
        if exc.status >= 500 or exc.status == 408:
            error_log.info("%s from %s: %s", exc.status,
                           self.remote_addr, exc.detail)
        else:
            error_log.debug("%s from %s: %s", exc.status,
                            self.remote_addr, exc.detail)
        try:
            self.sock.sendall(error_response(exc.status, exc.detail, exc.reason))
        except OSError:
            return
        # Let the client read the answer before the close: see _linger.
        self.linger = True

    # -- one request ---------------------------------------------------------------------------

    def _handle(self, request):
        """Run the app for one request; True if the connection may carry another."""
        server = self.server
        self.request = request
        self.status = None
        self.headers_sent = False
        self.keep_alive = request.keep_alive and server.config.keep_alive > 0
        self.continue_pending = request.expect_continue
        self.body_error = None
        self.body_sent = 0  # body bytes, as the access log's %(b)s reports (like gunicorn)
        started = perf_counter() if server.access_log else 0.0
        environ = build_environ(self.listener_environ, request, server.script_name,
                                self.remote_addr, self.remote_port)
        # The environ has the headers now; a parked long poll should not hold them twice.
        request.headers = None
        self.environ = environ
        self.method = environ["REQUEST_METHOD"]
        has_body = request.chunked or request.content_length
        environ["wsgi.input"] = InputStream(self._receive_body) if has_body else _EMPTY_INPUT
        self.disconnected = environ["greenserve.disconnected"] = Disconnected(self)

        result = None
        try:
            result = server.app(environ, self._start_response)
            self._send_result(result)
        except ClientDisconnected:
            self.keep_alive = False
        except ProtocolError:
            # The body's framing broke under the app's read; answered below.
            self.keep_alive = False
        except RequestDeadlineExceeded as exc:
            self._deadline_exceeded(exc)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise
            self._app_failed(exc)
        finally:
            if result is not None and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    error_log.exception("error in close() of the app's iterable for %s %s",
                                        self.method, environ["RAW_URI"])
            self.disconnected.finish(not self.keep_alive)
        if self.body_error is not None:
            # The body's framing broke while the app read it: answer it if we still can.
            if not self.headers_sent:
                self._reject(self.body_error)
            return False
        if started:
            server.access_log(environ, self.status_code if self.status else 500,
                              self.body_sent, perf_counter() - started)
        if not self.keep_alive:
            return False
        return self._finish_body()

    def _app_failed(self, exc):
        """The app raised: 500 if nothing was sent yet, else cut the connection."""
        environ = self.environ
        if isinstance(exc, BodyReadTimeout):
            self.keep_alive = False
            if not self.headers_sent:
                self._reject(RequestTimeout(str(exc)))
            return
        error_log.error("Error handling %s %s", self.method, environ["RAW_URI"],
                        exc_info=exc)
        if self.headers_sent:
            # The client has a partial response; closing is the only honest signal.
            self.keep_alive = False
            return
        self.status = "500 Internal Server Error"
        self.status_code = 500
        # The connection stays usable if the request body can still be skipped.
        self.keep_alive = self.keep_alive and not self.continue_pending
        try:
            self._send(error_response(500, "The server could not complete the request.",
                                      keep_alive=self.keep_alive, head=self.method == "HEAD"))
        except ClientDisconnected:
            self.keep_alive = False

    def _deadline_exceeded(self, exc):
        """--request-timeout: 503 if nothing was sent, else cut; the worker lives on."""
        error_log.error("%s %s: %s; interrupted", self.method, self.environ["RAW_URI"], exc)
        self.keep_alive = False
        if not self.headers_sent:
            self.status = "503 Service Unavailable"
            self.status_code = 503
            try:
                self._send(error_response(503, "The request took too long.",
                                          head=self.method == "HEAD"))
            except ClientDisconnected:
                pass

    def _finish_body(self):
        """Skip what the app did not read of the request body; True if the connection lives."""
        parser = self.parser
        if parser.body_done:
            return True
        if self.continue_pending:
            # RFC 9110 §10.1.1: we never said 100 Continue, so the client may not send the
            # body at all; closing is the only way to stay in sync.
            return False
        drained = 0
        try:
            while drained <= DRAIN_LIMIT:
                data = self._receive_body(RECEIVE_SIZE)
                if not data:
                    return True
                drained += len(data)
        except (ProtocolError, ClientDisconnected, BodyReadTimeout):
            pass
        return False

    # -- request body --------------------------------------------------------------------------

    def _receive_body(self, max_bytes):
        """Next piece of the body for wsgi.input; b"" at its end."""
        parser = self.parser
        try:
            data = parser.read_body(max_bytes)
            while data is None:
                if self.continue_pending:
                    # RFC 9110 §10.1.1: the client waits for 100 Continue before sending;
                    # RFC 9110 §15.2: but never a 1xx once the final response has begun.
                    self.continue_pending = False
                    if not self.headers_sent:
                        self._send(CONTINUE_RESPONSE)
                previous = self.phase
                self._enter(BODY, self.server.config.body_timeout)
                self.reading_body = True
                try:
                    chunk = self.sock.recv(RECEIVE_SIZE)
                except (BodyReadTimeout, ClientDisconnected):
                    raise
                except OSError as exc:
                    raise ClientDisconnected(f"connection lost while reading the body: {exc}")
                finally:
                    self.reading_body = False
                    self._enter(previous, 0)
                if not chunk:
                    raise ClientDisconnected("client closed the connection mid-body")
                parser.feed(chunk)
                data = parser.read_body(max_bytes)
        except ProtocolError as exc:
            self.body_error = exc
            self.keep_alive = False
            raise
        except ClientDisconnected:
            self.keep_alive = False
            self.disconnected.set()
            raise
        except BodyReadTimeout:
            self.keep_alive = False
            raise
        return data

    # -- response ------------------------------------------------------------------------------

    def _start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change the status; re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info (PEP 3333)")
        self.status_code = check_status(status)
        self.response_info = check_headers(headers)
        self.status = status
        self.response_headers = headers
        return self._write

    def _head_bytes(self, content_length):
        """Decide the framing and format the status line and headers."""
        info = self.response_info
        code = self.status_code
        framing, keep_alive = choose_framing(self.method, code, self.request.version,
                                             content_length, self.keep_alive)
        unread = self.parser.body_unread
        if info.close or self.server.stopping or (unread != 0 and (
                self.continue_pending or unread is None or unread > DRAIN_LIMIT)):
            # A body the client was never invited to send, or one too big to skip, cannot
            # be kept in sync: say now that the connection will close (RFC 9112 §9.6).
            keep_alive = False
        self.keep_alive = keep_alive
        self.framing = framing
        self.remaining = content_length if framing == FIXED else 0
        headers = self.response_headers
        extra = []
        if info.content_length is not None:
            if code == 204 or code == 205 or info.rewrite_length:
                # RFC 9110 §8.6: none in a 204, and a singleton: the app's duplicates or
                # padded value become one plain field below.
                headers = [h for h in headers if h[0].lower() != "content-length"]
                if code != 204 and code != 205:
                    extra.append(f"Content-Length: {info.content_length}\r\n")
        elif content_length is not None and (
                framing == FIXED or (self.method == "HEAD" and code != 204 and code != 304
                                     and code != 205)):
            # RFC 9110 §9.3.2: a HEAD response carries the length a GET would have.
            extra.append(f"Content-Length: {content_length}\r\n")
        if code == 205:
            # RFC 9110 §15.3.6: no content in a 205, said with a length of 0 (unlike 204 a
            # client would otherwise read until the connection closes).
            extra.append("Content-Length: 0\r\n")
        if framing == CHUNKED:
            extra.append("Transfer-Encoding: chunked\r\n")
        if not info.has_date:
            extra.append(f"Date: {http_date()}\r\n")
        if not info.has_server:
            extra.append(f"Server: {SERVER_NAME}\r\n")
        if not keep_alive:
            extra.append("Connection: close\r\n")
        elif not self.request.version:
            extra.append("Connection: keep-alive\r\n")
        if info.close:
            headers = [h for h in headers if h[0].lower() != "connection"]
        self.headers_sent = True
        return format_head(self.status, headers, "".join(extra))

    def _frame(self, data):
        """Body bytes as they go on the wire under the chosen framing."""
        framing = self.framing
        if framing == FIXED:
            if len(data) > self.remaining:
                error_log.error("%s %s: the app sent more than its Content-Length; "
                                "the excess was dropped", self.method, self.environ["RAW_URI"])
                data = data[:self.remaining]
            self.remaining -= len(data)
            self.body_sent += len(data)
            return data
        if framing == CHUNKED:
            self.body_sent += len(data)
            return frame_chunk(data)
        if framing == UNTIL_CLOSE:
            self.body_sent += len(data)
            return data
        return b""

    def _write(self, data):
        """The ``write()`` callable of PEP 3333: send at once."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if not data:
            return
        if self.headers_sent:
            self._send(self._frame(data))
        else:
            head = self._head_bytes(self.response_info.content_length)
            self._send(head + self._frame(data))

    def _send(self, data):
        if not data:
            return
        size = len(data)
        try:
            # Usually the kernel takes it all at once: one syscall on the raw non-blocking
            # socket, no timer phase, no gevent wrapper. Only a full buffer waits below.
            sent = self.raw_send(data)
            if sent < size:
                self._enter(SEND, self.server.config.send_timeout)
                try:
                    self.sock.sendall(memoryview(data)[sent:])
                finally:
                    self._enter(APP, 0)
        except BlockingIOError:
            self._enter(SEND, self.server.config.send_timeout)
            try:
                self.sock.sendall(data)
            except OSError as exc:
                self._lost(exc)
            finally:
                self._enter(APP, 0)
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc):
        """A send failed: the peer is gone (or stopped reading past the send timeout)."""
        if self.disconnected is not None:
            self.disconnected.set()
        if isinstance(exc, ClientDisconnected):
            raise exc
        raise ClientDisconnected(f"connection lost while sending: {exc}") from None

    def _send_result(self, result):
        """Send the app's iterable, coalescing the head with the first non-empty chunk."""
        if isinstance(result, FileWrapper) and self._send_file(result):
            return
        if type(result) in (list, tuple) and len(result) == 1 and not self.headers_sent:
            # A single-chunk body has a known length: send it with Content-Length.
            self._require_status()
            data = result[0]
            if type(data) is not bytes:
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            info = self.response_info
            length = info.content_length
            if length is None and (data or self.method != "HEAD"):
                length = len(data)
            self._send(self._head_bytes(length) + self._frame(data))
            self._finish_response()
            return
        for data in result:
            if type(data) is not bytes:
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            if not data:
                continue
            if self.headers_sent:
                self._send(self._frame(data))
            else:
                self._require_status()
                self._send(self._head_bytes(self.response_info.content_length)
                           + self._frame(data))
        self._require_status()
        if not self.headers_sent:
            # The body was empty: say so with a length rather than chunked framing.
            info = self.response_info
            length = info.content_length
            if length is None and self.method != "HEAD":
                # An empty HEAD body says nothing about the GET's length, so no "0" for it.
                length = 0
            self._send(self._head_bytes(length))
        self._finish_response()

    def _require_status(self):
        if self.status is None:
            raise AssertionError("the app returned a body before calling start_response()")

    def _finish_response(self):
        framing = self.framing
        if framing == CHUNKED:
            self._send(LAST_CHUNK)
        elif framing == FIXED and self.remaining:
            # Fewer bytes than promised: the client would wait forever for the rest or read
            # the next response as body; only a close tells it the response is incomplete.
            error_log.error("%s %s: the app sent %d bytes less than its Content-Length; "
                            "closing the connection", self.method, self.environ["RAW_URI"],
                            self.remaining)
            self.keep_alive = False
        elif framing == UNTIL_CLOSE:
            self.keep_alive = False

    def _send_file(self, wrapper):
        """Send a real file with os.sendfile; False if it is not one (then iterate)."""
        if self.headers_sent:
            return False  # write() already started the body: keep its framing, iterate
        filelike = wrapper.filelike
        try:
            fd = filelike.fileno()
            offset = filelike.tell()
            stat = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return False
        size = stat.st_size
        if not S_ISREG(stat.st_mode) or not size:
            # Pipes, sockets and /proc files report no size: their length is found by reading.
            return False
        if self.sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) or \
                not hasattr(os, "sendfile") or offset > size:
            return False
        self._require_status()
        info = self.response_info
        length = size - offset if info.content_length is None \
            else min(info.content_length, size - offset)
        self._send(self._head_bytes(length if info.content_length is None
                                    else info.content_length))
        if self.framing == NO_BODY:
            return True
        sock_fd = self.sock.fileno()
        self._enter(SEND, self.server.config.send_timeout)
        try:
            while length > 0:
                try:
                    sent = os.sendfile(sock_fd, fd, offset, min(length, 1 << 20))
                except BlockingIOError:
                    wait_write(sock_fd)
                    continue
                except OSError as exc:
                    if isinstance(exc, ClientDisconnected):
                        raise
                    raise ClientDisconnected(f"connection lost while sending a file: {exc}")
                if sent == 0:
                    break  # the file shrank under us
                offset += sent
                length -= sent
                self.remaining -= sent
                self.body_sent += sent
                self._enter(SEND, self.server.config.send_timeout)
        finally:
            self._enter(APP, 0)
        self._finish_response()
        return True
