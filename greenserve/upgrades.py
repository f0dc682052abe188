"""The Upgrade hand-over (WebSocket and the like): the socket offered to the app, the request
deadline lifted only once the app has taken it, and the ordinary answer when it has not.

A mixin of ``connection.Connection``, in a module of its own so that each file keeps one job.
"""

import socket
import struct
from itertools import chain
from time import monotonic

from .sending import unsent_bytes
from .timers import APP

# Linux's struct tcp_info (include/uapi/linux/tcp.h): the offset of tcpi_bytes_acked (RFC
# 4898's tcpEStatsAppHCThruOctetsAcked, since Linux 4.1) and the size read up to it.
TCPI_BYTES_ACKED = 120
TCP_INFO_SIZE = 128


def bytes_written(sock, high=False):
    """How many bytes ``sock`` has written so far (acknowledged by the peer or still queued);
    None where the kernel cannot tell (not TCP, or not Linux).

    The two counts are read one after the other, and an acknowledgement in between moves
    bytes from one to the other: ``high`` reads the queue first (an overcount, never an
    undercount), else the acknowledged count first (never an overcount)."""
    unsent = unsent_bytes(sock) if high else None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return None
    if not high:
        unsent = unsent_bytes(sock)
    if len(info) < TCP_INFO_SIZE or unsent is None:
        return None
    return struct.unpack_from("Q", info, TCPI_BYTES_ACKED)[0] + unsent


class UpgradeHandOver:
    """Offering the socket of an Upgrade request to the app, and what follows."""

    __slots__ = ()

    def _decline_upgrade(self):
        """The app answers an Upgrade request later (respond_later): it did not take the
        socket it was offered. Serve it as an ordinary request, then close. False."""
        self.upgrade = False
        self.must_close = True
        request_timeout = self.server.config.request_timeout
        if request_timeout and not self.request_deadline:
            # _offer_socket lifted it for a hand-over that did not come.
            self.request_deadline = monotonic() + request_timeout
        return False

    def _took_socket(self):
        """An Upgrade request at its deadline: has the app taken the socket (a 101 sent, or
        bytes of its own written since it was offered)? Then the deadline no longer applies.
        An app answering through start_response did not; the server's own writes before
        (100 Continue) move the mark they are counted from (see _server_wrote)."""
        if self.handed_over:
            return True
        if self.response is not None or self.offered_written is None:
            return False
        written = bytes_written(self.sock)  # read low: an ACK in between undercounts
        return written is not None and written > self.offered_written

    def _server_wrote(self):
        """The server itself wrote on an Upgrade request's socket before any answer (100
        Continue): those bytes are not the app's handshake."""
        if self.upgrade and self.offered_written is not None:
            self.offered_written = bytes_written(self.sock, high=True)

    def _offer_socket(self, environ):
        """An Upgrade request (e.g. WebSocket): let the app take the connection over.

        The socket is offered under the keys WebSocket libraries look for (gunicorn's,
        used by simple-websocket and flask-sock). The app either does the handshake itself
        on the socket, or calls start_response("101 Switching Protocols", ...), which is
        sent at once. Either way the connection is the app's until it returns: no
        keep-alive afterwards, and no --request-timeout once the app has taken it (it
        would cut a long-lived socket; see _took_socket).
        ``greenserve.stopping`` (a gevent Event) is set when a graceful stop begins, so
        such an app can close its side (WebSocket 1001) instead of being cut off at the
        end of --graceful-timeout.
        """
        environ["greenserve.socket"] = environ["gunicorn.socket"] = self.sock
        environ["greenserve.stopping"] = self.server.stopping_event
        # Any client may send Upgrade: the deadline is only lifted once the app has taken
        # the socket (sent a 101, or written its own handshake, which the kernel's count of
        # bytes written shows). Where that count is unknown (a unix socket), at once.
        self.offered_written = bytes_written(self.sock, high=True)
        if self.offered_written is None:
            self.request_deadline = 0.0
            self._enter(APP, 0)


def pull_first(result):
    """``result``'s pieces as a list or chain, its first one already pulled (so that a
    generator's start_response has run)."""
    pieces = iter(result)
    for first in pieces:
        return chain((first,), pieces)
    return []
