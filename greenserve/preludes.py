"""What may come before a connection's first request: a PROXY protocol header, then a TLS
handshake.

A mixin of ``connection.Connection``, in a module of its own so that each file keeps one job;
only the connection touches its socket.
"""

import logging

from .bodies import RECEIVE_SIZE
from .errors import ProtocolError
from .protocol.proxy import ProxyProtocolParser
from .timers import READING_HEAD

error_log = logging.getLogger("greenserve.error")


class ConnectionPreludes:
    """--proxy-protocol and TLS, before HTTP."""

    __slots__ = ()

    def _read_proxy_header(self):
        """--proxy-protocol: read the PROXY header (HAProxy spec v1/v2) that precedes the
        first request; take the client address from it. False: close the connection."""
        server = self.server
        peer = self.remote_addr
        if not server.proxy_allow.trusts(peer):
            error_log.debug("closing %s: not allowed to send a PROXY header", peer or "unix")
            return False
        proxy = ProxyProtocolParser()
        # With TLS next, not one byte past the header may be taken: the ClientHello that
        # follows it belongs to the handshake. So then it is read a byte at a time (one
        # header per connection, at most a few hundred bytes).
        size = 1 if server.tls_context is not None else RECEIVE_SIZE
        # The whole header must come within the head timer, like a request head.
        self._enter(READING_HEAD, server.config.header_timeout)
        try:
            header = None
            while header is None:
                data = self.sock.recv(size)
                if not data:
                    return False
                header = proxy.feed(data)
        except ProtocolError as exc:  # malformed, or RequestTimeout from the timer
            error_log.debug("closing %s: %s", peer or "unix", exc.detail or exc)
            return False
        if header.client is not None:
            self.remote_addr, self.remote_port = header.client
            self.proxied = server.forwarded_trust.trusts(self.remote_addr)
        elif header.command == "PROXY":
            # The proxy relays a client it cannot name (v1 UNKNOWN, a v2 unspecified or
            # datagram source): the bytes are that client's, so its forwarded headers must
            # not pass for the proxy's. Only LOCAL connections (the proxy's own, such as its
            # health checks) keep the proxy's trust.
            self.proxied = False
        if proxy.rest:
            self.parser.feed(proxy.rest)
        return True

    def _start_tls(self):
        """TLS handshake in this greenlet, bounded by --header-timeout like a request head
        (a client that connects and never speaks TLS is closed). False: close."""
        import ssl
        server = self.server
        self._enter(READING_HEAD, server.config.header_timeout)
        try:
            sock = server.tls_context.wrap_socket(self.sock, server_side=True,
                                                  do_handshake_on_connect=False)
            self.sock = sock
            sock.do_handshake()
        except (ssl.SSLError, OSError, ProtocolError) as exc:
            # A port scanner, an HTTP client on the HTTPS port, a slow or bad handshake:
            # the client's business, so debug.
            error_log.debug("TLS handshake with %s failed: %s", self.remote_addr or "unix",
                            getattr(exc, "detail", None) or exc)
            return False
        self.raw_sock = None
        certificate = sock.getpeercert()
        if certificate:
            from .tls import subject_dn
            self.tls_subject = subject_dn(certificate)
        return True
