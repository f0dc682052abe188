"""Sending a response: the connection's half that turns the app's status, headers and body
into bytes on the socket (the framing rules are protocol/response.py's).

A mixin of ``connection.Connection``, in a module of its own so that each file keeps one job;
only the connection touches its socket.
"""

import fcntl
import logging
import os
import socket
import struct
import termios

from gevent.socket import wait_write

from .errors import ClientDisconnected
from .protocol.response import (CHUNKED, FIXED, NO_BODY, UNTIL_CLOSE, Response,
                                 unread_body_forces_close)
from .protocol.writer import CONTINUE_RESPONSE, format_head
from .timers import APP, SEND
from .wsgi import FileWrapper, check_headers, check_status

error_log = logging.getLogger("greenserve.error")

# A body at least this large leaves with its head in one sendmsg() from where it lies; a
# smaller one is joined to the head first (joining costs less than sendmsg's extra work).
SEND_IN_PLACE = 16384
# TLS's largest record: what _send_slowly hands the SSL object at a time.
TLS_RECORD = 16384
_END = object()  # what next() returns once the app's iterable is exhausted


def unread_bytes(sock):
    """Bytes the peer sent that wait unread in the kernel (FIONREAD); 0 where unknown."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
    except (OSError, ValueError):
        return 0


def unsent_bytes(sock):
    """Bytes written to ``sock`` that the peer has not yet acknowledged (TCP) or read (unix
    socket): Linux's SIOCOUTQ. None where the kernel cannot tell."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, ValueError):
        return None


class ResponseSending:
    """start_response, write() and the sending of the app's iterable and files."""

    __slots__ = ()

    def _start_response(self, start_response, status, headers, exc_info=None):
        """PEP 3333's start_response, called through the app's ``wsgi.StartResponse``
        (which checks that its request is still the one served); returns its ``write``."""
        if self.error_status:
            # The server has answered this request itself (the app failed, or its body
            # broke): RFC 9112 §9.3, one response per request; a second one (from the
            # iterable's close()) would be read as the answer to the next request.
            raise AssertionError("start_response() called after the server answered the "
                                 "request with an error")
        response = self.response
        if exc_info is not None:
            try:
                if response is not None and response.started:
                    # PEP 3333: too late to change the status; re-raise the app's error.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif response is not None or self.handed_over:
            raise AssertionError("start_response() called twice without exc_info (PEP 3333)")
        code = check_status(status, self.upgrade)
        if code == 101:
            # RFC 9110 §15.2.2: the switch takes effect right after this response's head.
            check_headers(headers, upgrade=True)
            self.handed_over = True
            self.request_deadline = 0.0  # the socket is the app's now, for as long as it likes
            head = format_head(status, headers, "")
            if self.continue_pending:
                # RFC 9110 §7.8: a server that receives both Upgrade and "Expect:
                # 100-continue" MUST send a 100 (Continue) response before the 101.
                self.continue_pending = False
                head = CONTINUE_RESPONSE + head
            self._send(head)
            return start_response.write
        if code >= 500 and self.body_error is not None:
            # Reading the request body failed under the app (a chunked body over
            # --max-body-size, broken chunk framing) and the app, as frameworks do, turned
            # that into a server error. The fault is the client's: it gets the body's own
            # answer (413, 400), sent once this error leaves the app.
            raise self.body_error
        # RFC 9110 §15.5.22: a 426 MUST name the protocol to switch to in Upgrade, sent with
        # the "upgrade" connection option (§7.8): the one answer besides a 101 with them.
        info = check_headers(headers, code == 426)
        request = self.request
        self.response = Response(status, code, headers, info, request.method == b"HEAD",
                                 request.version, not self.must_close,
                                 self.server.server_line)
        return start_response.write

    def _must_say_close(self):
        """Reasons outside the response to announce ``Connection: close``: a draining
        server, or a request body we cannot skip (RFC 9112 §9.6)."""
        return self.server.stopping or unread_body_forces_close(
            self.parser.body_unread, self.continue_pending)

    def _started_response(self):
        response = self.response
        if response is None:
            raise AssertionError("the app returned a body before calling start_response()")
        return response

    def _write(self, data):
        """The ``write()`` callable of PEP 3333 (through ``StartResponse.write``): send at
        once."""
        response = self.response
        if type(data) is not bytes:
            raise TypeError(f"write() takes bytes, not {type(data).__name__}")
        if self.handed_over:
            self._send(data)  # after a 101: the other protocol's bytes, as they are
            return
        if response is None:
            raise AssertionError("write() called before start_response()")
        if not data:
            return
        if response.started:
            if response.ended:
                # RFC 9112 §6.3: once the body has ended (its last chunk, or its length, sent)
                # the next bytes on the connection are read as the next response: a write()
                # from the iterable's close() must not put its bytes there.
                raise AssertionError("write() called after the response ended")
            self._send(response.body(data))
        else:
            self._send(response.head(None, self._must_say_close()) + response.body(data))

    def _send_result(self, result):
        """Send the app's iterable; the head leaves with the first non-empty piece."""
        if isinstance(result, FileWrapper) and self._send_file(result):
            return
        response = self.response
        if type(result) in (list, tuple) and len(result) == 1 and (
                response is None or not response.started):
            # A single-piece body has a known length: one send, with Content-Length.
            data = result[0]
            if type(data) is not bytes:
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            if response is None:
                raise AssertionError("the app returned a body before calling start_response()")
            # Inline of _must_say_close(): this is the hot path of most responses.
            unread = self.parser.body_unread
            head, rest = response.whole_parts(data, self.server.stopping or (
                unread != 0 and unread_body_forces_close(unread, self.continue_pending)))
            if len(rest) < SEND_IN_PLACE:
                self._send(head + rest if rest else head)
            else:
                self._send_two(head, rest)
            if response.excess or response.short:
                self._log_framing_errors(response)
            return
        send = self._send
        pieces = iter(result)
        for data in pieces:
            if type(data) is not bytes:
                raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
            if not data:
                continue
            response = self._started_response()
            if response.started:  # the app used write() first
                send(response.body(data))
            else:
                send(response.head(None, self._must_say_close()) + response.body(data))
            # The head is out: the response and its framing can no longer change, so the rest
            # of the body goes straight from the iterable to the framing and the send.
            framing = response.framing
            if framing == CHUNKED or framing == UNTIL_CLOSE:
                body = response.body
                for data in pieces:
                    if type(data) is not bytes:
                        raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
                    if data:
                        send(body(data))
            elif framing == FIXED:
                # PEP 3333: stop iterating once the length is met: pulling on would run the
                # app's generator for no one, never noticing that the client has left.
                while response.remaining:
                    data = next(pieces, _END)
                    if data is _END:
                        break
                    if type(data) is not bytes:
                        raise TypeError(f"the app yielded {type(data).__name__}, not bytes")
                    if data:
                        send(response.body(data))
            # A HEAD (or 204, 304) answer takes nothing more, for the same reason.
            break
        response = self._started_response()
        if response.started:
            self._send(response.end())
        else:
            # The body was empty: say so with a length rather than chunked framing.
            self._send(response.whole(b"", self._must_say_close()))
        if response.excess or response.short:
            self._log_framing_errors(response)

    def _log_framing_errors(self, response):
        environ = self.environ
        if response.excess:
            error_log.error("%s %s: the app sent %d bytes more than its Content-Length; "
                            "the excess was dropped", environ["REQUEST_METHOD"],
                            environ["RAW_URI"], response.excess)
        if response.short:
            error_log.error("%s %s: the app sent %d bytes less than its Content-Length; "
                            "closing the connection", environ["REQUEST_METHOD"],
                            environ["RAW_URI"], response.short)

    def _send(self, data):
        """Send all of ``data``; ClientDisconnected if the peer is gone or stalls."""
        if not data:
            return
        raw_sock = self.raw_sock
        if raw_sock is None:  # TLS: every send goes through the SSL object
            self._send_slowly(memoryview(data))
            return
        try:
            # Usually the kernel takes it all at once: one syscall on the raw non-blocking
            # socket, no timer phase, no gevent wrapper. Only a full buffer waits below.
            sent = raw_sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc, len(data))
        if sent < len(data):
            self._send_slowly(memoryview(data)[sent:])

    def _send_two(self, head, body):
        """Send ``head`` then a large ``body`` in one syscall (sendmsg), without first
        copying the body behind the head: at 64 KiB the copy costs more than the call."""
        raw_sock = self.raw_sock
        if raw_sock is None:  # TLS: the SSL object takes one buffer
            self._send(head + body)
            return
        try:
            sent = raw_sock.sendmsg((head, body))
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._lost(exc, len(head) + len(body))
        if sent < len(head):  # rare (the buffer was all but full): copy, then wait
            self._send_slowly(memoryview(head + body)[sent:])
        elif sent < len(head) + len(body):
            self._send_slowly(memoryview(body)[sent - len(head):])

    def _send_slowly(self, view):
        """Wait for room in the kernel's buffer, re-arming the send timer on every bit of
        progress: --send-timeout bounds a stalled reader, not a slow steady one."""
        sock = self.sock
        send = sock.send
        send_timeout = self.server.config.send_timeout
        # TLS: the SSL object's write returns only once all it was given is written,
        # however many waits that takes, and meanwhile fills the kernel's queue again as
        # the client drains it: measured against the level at the write's start, a client
        # reading steadily seemed stalled, and was cut at --send-timeout (send_progressed).
        # One TLS record at a time re-arms the timer as the plain socket's partial sends do.
        piece = TLS_RECORD if self.raw_sock is None else len(view)
        try:
            while view:
                self._enter(SEND, send_timeout)
                self.send_queued = unsent_bytes(sock)
                view = view[send(view[:piece]):]
        except OSError as exc:
            self._lost(exc, len(view))
        finally:
            self._enter(APP, 0)

    def send_progressed(self, now):
        """Did the client take enough of the response since the send timer was armed?

        A sender waits for the kernel to signal room, which Linux does only once about a
        third of the socket's buffer is free: a client reading slowly but steadily can take
        longer than --send-timeout to free that much. The kernel's queue shrinking is the
        progress that counts, by at least --send-min-rate bytes a second: a client that
        keeps its window all but shut and takes a byte now and then would otherwise hold
        its slot, and a send buffer of kernel memory, for as long as it likes (a "slow
        read" attack). Its new level and the time start the next check's window.
        """
        queued = unsent_bytes(self.sock)
        armed_with = self.send_queued
        if queued is None or armed_with is None or queued >= armed_with:
            return False
        rate = self.server.config.send_min_rate
        if rate and queued and armed_with - queued < rate * (now - self.phase_started):
            return False
        self.send_queued = queued
        self.phase_started = now
        return True

    def _lost(self, exc, unsent=0):
        """A send failed, ``unsent`` bytes short: the peer is gone (or stopped reading past
        the send timeout)."""
        if self.disconnected is not None:
            self.disconnected.set()
        response = self.response
        if response is not None and unsent:
            # The access log and the metrics count the body bytes that left, not the ones
            # framed: what was not sent is the end of what was framed, so the body's (a few
            # bytes of chunk framing aside).
            response.body_sent = max(0, response.body_sent - unsent)
        # The rest of the response will never be sent: close with a reset. RFC 9112 §6.3: a
        # close-delimited body ends where the connection does, and a client dropped by
        # --send-timeout may read again later: a clean close would pass the part sent for
        # the whole (and an app that catches this error cannot undo that). Whatever the
        # framing, a clean close would also leave the bytes the kernel still queues for a
        # reader that keeps its window shut: an orphaned connection holding up to a send
        # buffer of kernel memory for as long as that client likes.
        self._abort_on_close()
        if isinstance(exc, ClientDisconnected):
            raise exc
        raise ClientDisconnected(f"connection lost while sending: {exc}") from None

    def _send_file(self, wrapper):
        """Send a real file with os.sendfile; False if it is not one (then iterate)."""
        response = self.response
        if response is not None and response.started:
            return False  # write() already started the body: keep its framing, iterate
        source = wrapper.sendfile_source()
        # Over TLS the bytes must be encrypted on their way: read and send instead.
        if source is None or self.raw_sock is None or not hasattr(os, "sendfile") or \
                self.sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            return False
        fd, offset, available = source
        response = self._started_response()
        self._send(response.head(available, self._must_say_close()))
        if response.framing != NO_BODY:
            self._sendfile(fd, offset, min(available, response.remaining), response)
        self._send(response.end())
        self._log_framing_errors(response)
        return True

    def _sendfile(self, fd, offset, length, response):
        sock_fd = self.sock.fileno()
        send_timeout = self.server.config.send_timeout
        self._enter(SEND, send_timeout)
        self.send_queued = unsent_bytes(self.sock)
        try:
            while length > 0:
                try:
                    sent = os.sendfile(sock_fd, fd, offset, min(length, 1 << 20))
                except BlockingIOError:
                    try:
                        wait_write(sock_fd)
                    except OSError as exc:  # the send timer's ClientDisconnected
                        self._lost(exc)
                    continue
                except OSError as exc:
                    self._lost(exc)
                if sent == 0:
                    break  # the file shrank under us
                offset += sent
                length -= sent
                response.sent_directly(sent)
                self._enter(SEND, send_timeout)
                self.send_queued = unsent_bytes(self.sock)
        finally:
            self._enter(APP, 0)
