"""Reading a request body for wsgi.input: pauses, a minimum rate, 100-continue, the skipping
of what the app did not read, and --buffer-chunked-bodies.

A mixin of ``connection.Connection``, in a module of its own so that each file keeps one job;
only the connection touches its socket.
"""

from time import monotonic

from .errors import BodyReadTimeout, ClientDisconnected, ContentTooLarge, ProtocolError
from .protocol.response import DRAIN_LIMIT
from .protocol.writer import CONTINUE_RESPONSE
from .timers import BODY
from .wsgi import InputStream

RECEIVE_SIZE = 65536
# An unread request body is discarded for at most this long after the response.
DRAIN_SECONDS = 5.0


class _BufferedBody:
    """A request body already read: served to wsgi.input in pieces of at most max_bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data):
        self.data, self.pos = data, 0

    def read(self, max_bytes):
        start = self.pos
        self.pos = min(len(self.data), start + max_bytes)
        return self.data[start:self.pos]


class BodyReading:
    """wsgi.input's source, and what happens to a body the app leaves unread."""

    __slots__ = ()

    def _buffer_chunked_body(self, environ):
        """--buffer-chunked-bodies: read the whole chunked body first and give the app a
        CONTENT_LENGTH (RFC 9112 §7.1.3 describes this decoding). False: answered already."""
        limit = self.server.config.buffer_chunked_bodies
        pieces, size = [], 0
        try:
            while True:
                data = self._receive_body(RECEIVE_SIZE)
                if not data:
                    break
                size += len(data)
                if size > limit:
                    raise ContentTooLarge(f"chunked request body larger than {limit} bytes")
                pieces.append(data)
        except (ProtocolError, BodyReadTimeout) as exc:
            self._reject(exc)
            return False
        except ClientDisconnected:
            return False
        body = b"".join(pieces)
        environ["CONTENT_LENGTH"] = str(size)
        # The body is decoded now: an app (Bottle, for one) that saw Transfer-Encoding would
        # try to decode the chunks a second time.
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input"] = InputStream(_BufferedBody(body).read)
        return True

    def _finish_body(self):
        """Skip what the app did not read of the request body; True if the connection lives."""
        parser = self.parser
        if parser.body_done:
            return True
        if self.continue_pending:
            # RFC 9110 §10.1.1: we never said 100 Continue, so the client may not send the
            # body at all; closing is the only way to stay in sync.
            return False
        # Bounded in time too: a client dripping an unread body must not hold the slot.
        self.body_cap = monotonic() + DRAIN_SECONDS
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
                    if self.response is None or not self.response.started:
                        self._send(CONTINUE_RESPONSE)
                        self._server_wrote()
                previous = self.phase
                self._enter(BODY, self.server.config.body_timeout, self._body_deadline())
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
                self.body_received += len(chunk)
                parser.feed(chunk)
                data = parser.read_body(max_bytes)
        except ProtocolError as exc:
            self.body_error = exc
            self.must_close = True
            raise
        except ClientDisconnected:
            self.must_close = True
            self.disconnected.set()
            raise
        except BodyReadTimeout:
            self.must_close = True
            raise
        self.body_read += len(data)
        return data

    def _body_deadline(self):
        """When the whole body must have arrived, at --body-min-rate: --body-timeout of
        grace plus a second for every ``rate`` bytes received (0 = no such deadline)."""
        config = self.server.config
        if not self.body_started:
            self.body_started = monotonic()
        cap = self.body_cap
        rate = config.body_min_rate
        if rate:
            by_rate = self.body_started + config.body_timeout + self.body_received / rate
            if not cap or by_rate < cap:
                cap = by_rate
        return cap
