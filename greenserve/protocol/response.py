"""One response's framing, sans-IO (RFC 9112 §6, RFC 9110 §6.4, §8.6, §15).

A ``Response`` is made when the app calls ``start_response`` with its already validated
status and headers (see ``wsgi.check_status``/``check_headers``). The connection asks it
for bytes and sends them; nothing here touches a socket or a clock other than ``Date``:

    head(content_length) -> status line and headers, with the framing chosen
    body(data)           -> one piece of the body as it goes on the wire
    end()                -> the last chunk, or b""; notes a body shorter than promised
    keep_alive           -> the verdict: may the connection carry another request?

``whole(data)`` is head + body + end for a body known complete in one piece (the common
case), which the connection sends in one write.
"""

from .writer import LAST_CHUNK, SERVER_LINE, date_line, format_head, frame_chunk

# How the body of a response is delimited on the wire.
NO_BODY = 0       # HEAD, 204, 205, 304: headers only
FIXED = 1         # Content-Length
CHUNKED = 2       # Transfer-Encoding: chunked (HTTP/1.1 only)
UNTIL_CLOSE = 3   # the end of the connection marks the end of the body (HTTP/1.0)

# An unread request body up to this size is read and discarded to keep the connection.
DRAIN_LIMIT = 1 << 20


def unread_body_forces_close(unread, continue_pending, drain_limit=DRAIN_LIMIT):
    """RFC 9112 §9.6: a request body we cannot skip means the connection must close.

    ``unread`` is the parser's ``body_unread`` (0, a byte count, or None for chunked).
    A body the client was never invited to send (RFC 9110 §10.1.1: no 100 Continue was
    sent) may never arrive, and one too big to read and discard costs more than a new
    connection; either way we say ``Connection: close`` up front.
    """
    if unread == 0:
        return False
    return continue_pending or unread is None or unread > drain_limit


class ResponseHeaders:
    """What a response's framing needs to know about the app's validated headers (filled in
    by ``wsgi.check_headers``)."""

    __slots__ = ("content_length", "rewrite_length", "close", "has_date", "has_server")


class Response:
    """The framing state of one response; see the module docstring."""

    __slots__ = ("status", "code", "headers", "info", "head_request", "version",
                 "keep_alive", "server", "framing", "remaining", "body_sent", "excess",
                 "short", "started", "ended")

    def __init__(self, status, code, headers, info, head_request, version, keep_alive,
                 server=SERVER_LINE):
        """``info`` is the ``ResponseHeaders`` summary of ``headers``; ``version`` is 1
        for HTTP/1.1, 0 for 1.0; ``keep_alive`` is whether the request allows another;
        ``server`` the preformatted Server field added when the app sends none."""
        self.status = status
        self.code = code
        self.headers = headers
        self.info = info
        self.head_request = head_request
        self.version = version
        self.keep_alive = keep_alive and not info.close
        self.server = server
        self.framing = NO_BODY
        self.remaining = 0
        self.body_sent = 0    # body bytes sent (the access log's %(b)s)
        self.excess = 0       # bytes the app sent beyond its Content-Length, dropped
        self.short = 0        # bytes the app promised but never sent
        self.started = False  # head() was called
        self.ended = False    # the body is over (end(), or whole()): nothing may follow it

    # -- head -----------------------------------------------------------------------------

    def head(self, content_length=None, close=False):
        """Status line and headers. ``content_length`` is the body's length when known (the
        app's own Content-Length wins); ``close`` asks for ``Connection: close``."""
        info = self.info
        code = self.code
        app_length = info.content_length
        if app_length is not None:
            content_length = app_length
        keep_alive = self.keep_alive and not close
        # RFC 9110 §9.3.2, §15.3.5, §15.3.6, §15.4.5: HEAD responses, 204, 205 and 304
        # carry no content (a 1xx never reaches here: the WSGI bridge refuses it).
        if self.head_request or code == 204 or code == 205 or code == 304:
            framing = NO_BODY
        elif content_length is not None:
            framing = FIXED
        elif self.version:
            framing = CHUNKED
        else:
            # RFC 9112 §6.3: without a length an HTTP/1.0 body ends when the connection does.
            framing = UNTIL_CLOSE
            keep_alive = False
        self.keep_alive = keep_alive
        self.framing = framing
        self.remaining = content_length if framing == FIXED else 0
        self.started = True

        headers = self.headers
        extra = ""  # the fields the server adds, in this order (short str += is in place)
        if app_length is not None:
            if code == 204 or code == 205 or info.rewrite_length:
                # RFC 9110 §8.6: Content-Length is a singleton (the app's duplicates or
                # padded value become one plain field) and a 204 has none (§15.3.5).
                headers = [h for h in headers if h[0].lower() != "content-length"]
                if code != 204 and code != 205:
                    extra = f"Content-Length: {app_length}\r\n"
        elif content_length is not None and (framing == FIXED or (
                self.head_request and code != 204 and code != 205 and code != 304)):
            # RFC 9110 §9.3.2: a HEAD response may carry the length a GET would have.
            extra = f"Content-Length: {content_length}\r\n"
        if code == 205:
            # RFC 9110 §15.3.6: no content in a 205, said with a length of 0 (unlike a 204, a
            # client would otherwise read until the connection closes).
            extra += "Content-Length: 0\r\n"
        if framing == CHUNKED:
            extra += "Transfer-Encoding: chunked\r\n"
        if not info.has_date:
            # RFC 9110 §6.6.1: an origin server with a clock sends Date.
            extra += date_line()
        if not info.has_server and self.server:
            extra += self.server
        if not keep_alive:
            # RFC 9112 §9.6: a server that will close says so in the response.
            extra += "Connection: close\r\n"
        elif not self.version:
            # RFC 9112 §9.3: an HTTP/1.0 client keeps the connection only when told so.
            extra += "Connection: keep-alive\r\n"
        if info.close:
            headers = [h for h in headers if h[0].lower() != "connection"]
        return format_head(self.status, headers, extra)

    # -- body -----------------------------------------------------------------------------

    def body(self, data):
        """One piece of the body as it goes on the wire under the chosen framing."""
        framing = self.framing
        if framing == FIXED:
            remaining = self.remaining
            if len(data) > remaining:
                # RFC 9112 §6.3: bytes past Content-Length would be read as the next
                # response; they are dropped and counted for the error log.
                self.excess += len(data) - remaining
                data = data[:remaining]
            self.remaining = remaining - len(data)
        elif framing == CHUNKED:
            self.body_sent += len(data)
            return frame_chunk(data)
        elif framing == NO_BODY:
            return b""
        self.body_sent += len(data)
        return data

    def sent_directly(self, count):
        """Account for ``count`` body bytes the connection sent itself (sendfile, which it
        uses only under Content-Length framing)."""
        self.body_sent += count
        self.remaining -= count

    def end(self):
        """The body is over: the bytes that end it (the last chunk) or b""."""
        self.ended = True
        framing = self.framing
        if framing == CHUNKED:
            return LAST_CHUNK
        if framing == FIXED and self.remaining:
            # RFC 9112 §8: fewer bytes than promised; the client would wait for the rest or
            # read the next response as body, so only a close tells it the truth.
            self.short = self.remaining
            self.keep_alive = False
        elif framing == UNTIL_CLOSE:
            self.keep_alive = False
        return b""

    def whole(self, data, close=False):
        """Head, body and end of a body known complete: ``data`` (bytes, maybe empty)."""
        head, rest = self.whole_parts(data, close)
        return head + rest if rest else head

    def whole_parts(self, data, close=False):
        """``whole()`` as two pieces, (head, the rest). Under Content-Length the rest is
        ``data`` itself, so a large body can be sent from where it lies instead of being
        copied behind the head."""
        length = self.info.content_length
        if length is None and (data or not self.head_request):
            # An empty body answering HEAD says nothing of the GET's length: no "0" then.
            length = len(data)
        head = self.head(length, close)
        if self.framing == FIXED and len(data) == length:
            self.remaining = 0
            self.body_sent = length
            self.ended = True
            return head, data  # the usual case, framed in place
        return head, (self.body(data) + self.end() if data else self.end())
