"""Sans-IO HTTP/1.1 request parser (RFC 9112): bytes in, request heads and body pieces out.

The caller feeds received bytes with ``feed()``, asks for the next request head with
``next_request()`` and for body pieces with ``read_body()``. Both return ``None`` when more
bytes are needed. Every client mistake raises a ``ProtocolError`` carrying its HTTP status.

Two promises hold whatever the split of the input into received pieces:

- the result is the same: the same requests, bodies and trailers, or the same error status.
  An unfinished head or chunk line is rejected as soon as it is certainly bad, and the error
  reported is the first one in byte order, so a client feeding one byte at a time and one
  sending everything at once get the same answer;
- an error is final: after it, ``next_request()`` and ``read_body()`` raise it again and no
  later byte is parsed. The connection must answer with ``exc.status`` and close, since its
  framing can no longer be trusted (RFC 9112 §6.3, §11.2).
"""

import re

from ..errors import (BadRequest, ContentTooLarge, ExpectationFailed, HeaderTooLarge,
                      NotImplementedByServer, ProtocolError, URITooLong)
from .lines import (FIELD_LINE, FIELD_LINES, NOT_IN_FIELD_LINE, NOT_IN_REQUEST_LINE, QUOTED,
                    REQUEST_LINE, REQUEST_LINES, SINGLETON_BITS, TOKEN, check_field_line,
                    check_request_line, check_unfinished_field, forbidden, parse_field_line,
                    parse_request_line, parse_target, quote, remember_request_line)

# RFC 9112 §7.1: chunk-size = 1*HEXDIG, chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS val ] ),
# and nothing else before the CRLF.
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*" + TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + TOKEN + rb"|"
    + QUOTED + rb"))?)*")
# RFC 9112 §7: transfer-coding = token *( OWS ";" OWS transfer-parameter ), one list element
# (possibly empty, RFC 9110 §5.6.1.2) and the comma after it.
# (The OWS after an element sits inside the optional group: two adjacent "[ \t]*" backtrack
# quadratically on a long run of spaces.)
_TRANSFER_CODING = re.compile(
    rb"[ \t]*(?:(" + TOKEN + rb")((?:[ \t]*;[ \t]*" + TOKEN + rb"[ \t]*=[ \t]*(?:" + TOKEN
    + rb"|" + QUOTED + rb"))*)[ \t]*)?(,|\Z)")
# RFC 9110 §8.6: Content-Length = 1*DIGIT.
_CONTENT_LENGTH = re.compile(rb"[0-9]+")
# Longest chunk-size line we accept, extensions included (RFC 9112 §7.1.1 lets servers limit).
MAX_CHUNK_LINE = 4096
# Empty lines tolerated before a request-line (RFC 9112 §2.2 asks for at least one).
MAX_EMPTY_LINES = 8
# Sizes written with more significant digits than this are beyond any body we could take.
_MAX_DECIMAL_DIGITS = 18  # < 10**18 octets
_MAX_HEX_DIGITS = 16  # < 2**64 octets

# Body-reader states; _FAILED once an error was raised.
_NO_BODY, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _FAILED = range(7)

# RFC 9110 §6.5.1: fields needed before the content can be processed (framing, routing,
# connection control, request modifiers, authentication, content format) mean nothing in a
# trailer; they are dropped rather than shown to the application.
_NOT_TRAILERS = frozenset((
    b"content-length", b"transfer-encoding", b"trailer", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"upgrade", b"expect", b"max-forwards", b"range", b"if-match",
    b"if-none-match", b"if-modified-since", b"if-unmodified-since", b"if-range",
    b"authorization", b"proxy-authorization", b"cookie", b"content-type", b"content-encoding",
    b"content-range", b"cache-control", b"pragma"))

class Limits:
    """Size limits for one server; built once from the config."""

    __slots__ = ("request_line", "field_size", "fields", "head", "body")

    def __init__(self, request_line=8192, field_size=8192, fields=100, head=65536, body=0):
        self.request_line = request_line
        self.field_size = field_size
        self.fields = fields
        self.head = head
        self.body = body  # 0 = unlimited

    @classmethod
    def from_config(cls, config):
        return cls(config.limit_request_line, config.limit_request_field_size,
                   config.limit_request_fields, config.limit_request_head, config.max_body_size)


class Request:
    """One parsed request head. Header names and values are bytes as received."""

    __slots__ = ("method", "target", "path", "query", "version", "headers", "host",
                 "keep_alive", "content_length", "chunked", "expect_continue", "trailers")

    def __repr__(self):
        return f"<Request {self.method} {self.target} HTTP/1.{self.version}>"


class RequestParser:
    """Incremental parser for the requests of one connection."""

    __slots__ = ("limits", "_buf", "_pos", "_state", "_remaining", "_body_seen", "_error",
                 "_partial", "_checked", "_clean", "_lines", "_empty_lines", "request")

    def __init__(self, limits=None):
        self.limits = limits or Limits()
        self._buf = b""
        self._pos = 0
        self._state = _NO_BODY
        self._remaining = 0  # octets left in the current chunk / body, or trailer lines seen
        self._body_seen = 0
        self._error = None
        # Progress through a head that arrives in pieces, relative to its first octet: lines
        # up to _checked are valid, octets up to _clean hold no forbidden byte.
        self._partial = False
        self._checked = self._clean = self._lines = self._empty_lines = 0
        self.request = None

    # -- input -------------------------------------------------------------------------------

    def feed(self, data):
        """Append received bytes."""
        buf = self._buf
        if self._pos >= len(buf):
            self._buf = data
            self._pos = 0
        elif self._partial:
            # An unfinished head grows in place: joining bytes would copy all of it again for
            # every piece, quadratic in the head size for a client sending an octet at a time.
            if type(buf) is not bytearray:
                self._buf = buf = bytearray(memoryview(buf)[self._pos:])
                self._pos = 0
            buf += data
        else:
            self._buf = buf[self._pos:] + data
            self._pos = 0

    @property
    def buffered(self):
        """Bytes received but not yet consumed."""
        return len(self._buf) - self._pos

    def begins_head_request(self):
        """True if the bytes not yet consumed start a HEAD request-line (the empty lines
        allowed before it are consumed as they arrive): the error answer to a head that
        failed to parse then carries no content either (RFC 9110 §9.3.2)."""
        return self._buf.startswith(b"HEAD ", self._pos)

    @property
    def body_done(self):
        """True when the current request's body has been read completely."""
        return self._state == _NO_BODY

    @property
    def body_unread(self):
        """Body bytes still to come: a number with Content-Length, None if unknown (chunked)."""
        if self._state == _NO_BODY:
            return 0
        if self._state == _LENGTH:
            return self._remaining
        return None

    # -- request heads -------------------------------------------------------------------------

    def next_request(self):
        """Parse the next request head; None if it has not fully arrived yet."""
        if self._state != _NO_BODY:
            if self._state == _FAILED:
                raise self._error
            raise RuntimeError("the previous request body has not been read")
        buf, pos = self._buf, self._pos
        # The common case: a whole, valid head at the start of the buffer, parsed in one go.
        end = -1 if self._partial else buf.find(b"\r\n\r\n", pos)
        if end <= pos or end + 4 - pos > self.limits.head:
            request, end = self._next_request_carefully()
            if request is None:
                return None
        else:
            try:
                request = self._parse_head(buf[pos:end].split(b"\r\n"))
            except ProtocolError:
                # Parse again carefully: it raises the error that comes first in byte order.
                request, end = self._next_request_carefully()
        self._pos = end + 4
        if self._pos == len(buf):
            # All consumed: don't keep the received bytes alive while the app runs (a parked
            # long poll would hold them for minutes).
            self._buf = b""
            self._pos = 0
        elif type(buf) is bytearray:
            # The rest (body, next request) goes back to bytes, which the body reader returns.
            self._buf = bytes(memoryview(buf)[self._pos:])
            self._pos = 0
        self.request = request
        if request.chunked:
            self._state = _CHUNK_SIZE
            self._body_seen = 0
        elif request.content_length:
            self._state = _LENGTH
            self._remaining = request.content_length
        return request

    def _next_request_carefully(self):
        """The slow path: a head arriving in pieces, after empty lines, too large or invalid.

        Returns (request, end of head) or (None, -1) when more bytes are needed.
        """
        buf, pos = self._buf, self._pos
        try:
            if buf.startswith(b"\r\n", pos):
                pos = self._skip_empty_lines(buf, pos)
            # Resume where the last look stopped: no CRLF CRLF can start before that.
            end = buf.find(b"\r\n\r\n", pos + max(self._clean - 2, 0))
            # A head ending past the limit is checked as one whose end has not arrived: that
            # raises what a byte-at-a-time reader finds first, at the latest the 431.
            if end < 0 or end + 4 - pos > self.limits.head:
                self._check_partial_head(buf, pos, len(buf))
                return None, -1
            try:
                request = self._parse_head(bytes(buf[pos:end]).split(b"\r\n"))
            except ProtocolError:
                # An earlier line may hold an error that comes first in byte order.
                self._check_partial_head(buf, pos, end + 2)
                raise
        except ProtocolError as exc:
            self._fail(exc)
            raise
        self._partial = False
        self._checked = self._clean = self._lines = self._empty_lines = 0
        return request, end

    def _fail(self, exc):
        self._state = _FAILED
        self._error = exc

    def _skip_empty_lines(self, buf, pos):
        self._partial = True
        while buf.startswith(b"\r\n", pos):
            pos += 2
            self._empty_lines += 1
            # RFC 9112 §2.2: at least one empty line is ignored; an endless stream of them
            # is not a request and must not hold the connection forever.
            if self._empty_lines > MAX_EMPTY_LINES:
                raise BadRequest(f"more than {MAX_EMPTY_LINES} empty lines before a request")
        self._pos = pos
        return pos

    def _check_partial_head(self, buf, pos, stop):
        """Reject the unfinished head buf[pos:stop] if it is already certain to be bad.

        Complete lines are checked in order as they arrive; the unfinished last line only
        for octets it can never contain and for its length. Progress is kept, so a head
        arriving one byte at a time is still read in linear time.
        """
        self._partial = True
        limits = self.limits
        # Past the head limit nothing else matters: the 431 below comes first in byte order.
        stop = min(stop, pos + limits.head)
        start = pos + self._checked
        while True:
            eol = buf.find(b"\r\n", pos + self._clean, stop)
            if eol < 0:
                break
            line = buf[start:eol]
            if self._lines:
                check_field_line(line, self._lines, limits)
            else:
                check_request_line(line, limits.request_line)
            self._lines += 1
            start = eol + 2
            self._checked = self._clean = start - pos
        # The unfinished line; a CR at its end may be the start of its CRLF.
        end = stop - 1 if buf[stop - 1:stop] == b"\r" else stop
        if end > start:
            if self._lines:
                check_unfinished_field(buf, start, pos + self._clean, end, self._lines, limits)
            else:
                # RFC 9112 §3: no octet outside tokens, URI and SP; RFC 9110 §15.5.15: 414.
                limit = limits.request_line
                bad = NOT_IN_REQUEST_LINE.search(buf, pos + self._clean, min(end, start + limit))
                if bad:
                    raise BadRequest(forbidden(bad, "request line"))
                if end - start > limit:
                    raise URITooLong(f"request line over {limit} bytes")
            self._clean = end - pos
        # RFC 6585 §5: the complete head would be longer still.
        if stop - pos >= limits.head:
            raise HeaderTooLarge(f"header block over {limits.head} bytes")

    def _parse_head(self, lines):
        limits = self.limits
        request_line = lines[0]
        if type(request_line) is not bytes:
            # A caller fed a bytearray: the memos below are keyed by bytes.
            lines = [bytes(line) for line in lines]
            request_line = lines[0]
        # RFC 9112 §3: a server may limit the request-line; over it: 414 (RFC 9110 §15.5.15).
        if len(request_line) > limits.request_line:
            raise URITooLong(f"request line over {limits.request_line} bytes")
        known = REQUEST_LINES.get(request_line)
        if known is None:
            match = REQUEST_LINE.fullmatch(request_line)
            if match is None:
                raise BadRequest(f"malformed request line {quote(request_line)}")
            method, target, major, minor = match.groups()
            if major != b"1":
                parse_request_line(request_line)  # raises the 505
            version = 0 if minor == b"0" else 1
        else:
            method, target, version, path, query, authority = known

        # RFC 6585 §5: too many fields, too long a field or head get 431.
        if len(lines) - 1 > limits.fields:
            raise HeaderTooLarge(f"more than {limits.fields} header fields")
        headers = []
        host = content_length = transfer_encoding = connection = expect = None
        host_count = seen_singletons = 0
        field_size = limits.field_size
        known_fields = FIELD_LINES
        for line in lines[1:]:
            if len(line) > field_size:
                raise HeaderTooLarge(f"header line over {field_size} bytes")
            field = known_fields.get(line)
            if field is None:
                field = parse_field_line(line)
            headers.append(field[0])
            lname = field[1]
            # Only the fields noted here cost more than the lookup.
            if lname is not None:
                if lname == b"host":
                    host_count += 1
                    host = field[0][1]
                    host_valid = field[2]
                elif lname == b"content-length":
                    value = field[0][1]
                    content_length = value if content_length is None \
                        else content_length + b"," + value
                elif lname == b"transfer-encoding":
                    value = field[0][1]
                    transfer_encoding = value if transfer_encoding is None \
                        else transfer_encoding + b"," + value
                elif lname == b"connection":
                    value = field[0][1]
                    connection = value if connection is None else connection + b"," + value
                elif lname == b"expect":
                    value = field[0][1]
                    expect = value if expect is None else expect + b"," + value
                else:
                    # RFC 9110 §5.3: only a list-valued field may be sent as several lines; a
                    # second one of these would be joined into a value no sender meant.
                    bit = SINGLETON_BITS[lname]
                    if seen_singletons & bit:
                        raise BadRequest(f"more than one {quote(field[0][0])} header field")
                    seen_singletons |= bit

        request = Request()
        request.method = method
        request.target = target
        request.version = version
        request.headers = headers
        request.trailers = None
        request.expect_continue = False

        # RFC 9112 §3.2: a server MUST respond 400 to an HTTP/1.1 request without Host, with
        # more than one Host field line, or with an invalid Host value.
        if host_count > 1:
            raise BadRequest("more than one Host header field")
        if host is None:
            if version:
                raise BadRequest("HTTP/1.1 request without a Host header field")
        elif not host_valid:
            raise BadRequest(f"invalid Host header field {quote(host)}")
        if known is None:
            path, query, authority = parse_target(method, target)
            # The request-line passed every check of its own: the next one like it skips them.
            remember_request_line(request_line,
                                  (method, target, version, path, query, authority))
        # RFC 9112 §3.2.2: with an absolute-form target its authority replaces Host.
        request.host = host if authority is None else authority
        request.path = path
        request.query = query

        if transfer_encoding is not None:
            self._parse_transfer_encoding(request, transfer_encoding, content_length, version)
        else:
            request.chunked = False
            request.content_length = 0 if content_length is None \
                else self._parse_content_length(content_length)

        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
        if connection is None:
            request.keep_alive = bool(version)
        elif connection == b"keep-alive":  # what browsers send, spelled out to skip the set
            request.keep_alive = True
        elif connection == b"close":  # what a client closing after one request sends
            request.keep_alive = False
        else:
            options = {token.strip(b" \t").lower() for token in connection.split(b",")}
            if b"close" in options:
                request.keep_alive = False
            else:
                request.keep_alive = bool(version) or b"keep-alive" in options

        if expect is not None:
            # RFC 9110 §10.1.1: 100-continue is the only expectation defined; others get 417,
            # and an HTTP/1.0 request's expectation MUST be ignored.
            if version:
                if expect.strip(b" \t").lower() == b"100-continue":  # the usual single value
                    request.expect_continue = True
                else:
                    # RFC 9110 §10.1.1: Expect = #expectation, a list, which may be split over
                    # lines (§5.3) and whose empty elements a recipient MUST ignore (§5.6.1.2):
                    # "100-continue, 100-continue" expects 100-continue, an empty value nothing.
                    members = {member.strip(b" \t").lower() for member in expect.split(b",")}
                    members.discard(b"")
                    if members - {b"100-continue"}:
                        raise ExpectationFailed(f"unsupported expectation {quote(expect)}")
                    request.expect_continue = bool(members)
        return request

    def _parse_content_length(self, raw):
        if raw.isdigit() and len(raw) <= _MAX_DECIMAL_DIGITS:
            length = int(raw)  # the usual single value
        else:
            # RFC 9110 §8.6: a list of identical values may be taken as one; differing values,
            # signs, spaces inside or anything but digits make the framing unknowable -> 400.
            values = set()
            for item in raw.split(b","):
                item = item.strip(b" \t")
                if _CONTENT_LENGTH.fullmatch(item) is None:
                    raise BadRequest(f"invalid Content-Length {quote(raw)}")
                values.add(item.lstrip(b"0") or b"0")
            if len(values) != 1:
                raise BadRequest(f"conflicting Content-Length values {quote(raw)}")
            digits = values.pop()
            # RFC 9110 §8.6: anticipate large numerals; no body that large will be taken.
            if len(digits) > _MAX_DECIMAL_DIGITS:
                raise ContentTooLarge(f"Content-Length {quote(digits)} is too large")
            length = int(digits)
        # RFC 9110 §15.5.14: over the configured maximum -> 413, before reading any of it.
        if self.limits.body and length > self.limits.body:
            raise ContentTooLarge(f"body of {length} bytes is over the {self.limits.body} limit")
        return length

    def _parse_transfer_encoding(self, request, raw, content_length, version):
        # RFC 9112 §6.1: Transfer-Encoding is HTTP/1.1; a 1.0 message carrying it has
        # unreliable framing (smuggling vector), so it is refused.
        if not version:
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        # RFC 9112 §6.3: both Content-Length and Transfer-Encoding is a smuggling attempt.
        if content_length is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        codings = []  # (lowercase name, parameters)
        pos = 0
        while True:
            match = _TRANSFER_CODING.match(raw, pos)
            if match is None:
                raise BadRequest(f"malformed Transfer-Encoding {quote(raw)}")
            if match.group(1):
                codings.append((match.group(1).lower(), match.group(2)))
            if not match.group(3):
                break
            pos = match.end()
        names = [name for name, _ in codings]
        # RFC 9112 §6.3: unless chunked is the final coding the body length is unknowable: 400.
        if not names or names[-1] != b"chunked":
            if not names or b"chunked" in names:
                raise BadRequest(f"chunked is not the final transfer coding in {quote(raw)}")
            # RFC 9112 §6.1: a transfer coding the server does not understand gets 501.
            raise NotImplementedByServer(f"transfer coding {quote(raw)} is not supported")
        # RFC 9112 §6.1: chunked MUST NOT be applied more than once.
        if names.count(b"chunked") > 1:
            raise BadRequest("chunked applied more than once")
        # RFC 9112 §7.1: chunked has no parameters; peers that ignore one and peers that
        # refuse it would frame the body differently (RFC 9112 §11.2), so refuse it here.
        if codings[-1][1]:
            raise BadRequest(f"parameters on the chunked coding in {quote(raw)}")
        if len(codings) > 1:
            raise NotImplementedByServer(f"transfer coding {quote(raw)} is not supported")
        request.chunked = True
        request.content_length = None

    # -- bodies -------------------------------------------------------------------------------

    def read_body(self, max_bytes=65536):
        """Next piece of the request body, at most ``max_bytes`` (> 0) long.

        Returns non-empty bytes, ``b""`` once the body is complete, or ``None`` when more
        bytes must be fed first.
        """
        state = self._state
        if state == _LENGTH:
            available = len(self._buf) - self._pos
            if not available:
                return None
            size = min(available, self._remaining, max_bytes)
            start = self._pos
            self._pos = start + size
            self._remaining -= size
            if not self._remaining:
                self._state = _NO_BODY
            return self._buf[start:start + size]
        if state == _NO_BODY:
            return b""
        if state == _FAILED:
            raise self._error
        try:
            return self._read_chunked(max_bytes)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _read_chunked(self, max_bytes):
        buf = self._buf
        limits = self.limits
        while True:
            state = self._state
            pos = self._pos
            if state == _CHUNK_DATA:
                available = len(buf) - pos
                if not available:
                    return None
                size = min(available, self._remaining, max_bytes)
                self._pos = pos + size
                self._remaining -= size
                if not self._remaining:
                    self._state = _CHUNK_CRLF
                return buf[pos:pos + size]
            if state == _CHUNK_SIZE:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    _check_unfinished_chunk_line(buf, pos)
                    return None
                line = buf[pos:end]
                # RFC 9112 §7.1.1: the server limits chunk extensions like other message parts.
                if NOT_IN_FIELD_LINE.search(line, 0, MAX_CHUNK_LINE):
                    raise BadRequest(f"invalid octet in chunk-size line {quote(line)}")
                if len(line) > MAX_CHUNK_LINE:
                    raise BadRequest(f"chunk-size line over {MAX_CHUNK_LINE} bytes")
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise BadRequest(f"malformed chunk-size line {quote(line)}")
                digits = match.group(1).lstrip(b"0")
                # RFC 9112 §7.1: anticipate large hex numerals; none that large is acceptable.
                if len(digits) > _MAX_HEX_DIGITS:
                    raise ContentTooLarge(f"chunk size {quote(digits)} is too large")
                size = int(digits, 16) if digits else 0
                self._pos = end + 2
                self._body_seen += size
                # RFC 9110 §15.5.14: the limit is on the decoded body, checked before its data.
                if limits.body and self._body_seen > limits.body:
                    raise ContentTooLarge(f"chunked body over the {limits.body} byte limit")
                if size:
                    self._state = _CHUNK_DATA
                    self._remaining = size
                else:
                    self._state = _TRAILERS
                    self._remaining = 0
                    self.request.trailers = []
            elif state == _CHUNK_CRLF:
                # RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF.
                if not buf.startswith(b"\r\n"[:len(buf) - pos], pos):
                    raise BadRequest("chunk data not followed by CRLF")
                if len(buf) - pos < 2:
                    return None
                self._pos = pos + 2
                self._state = _CHUNK_SIZE
            else:  # _TRAILERS
                # RFC 9112 §7.1.2: trailer fields use the field-line syntax and are limited
                # like header fields.
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    stop = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
                    if stop > pos:
                        check_unfinished_field(buf, pos, pos, stop, self._remaining + 1,
                                                limits, "trailer")
                    return None
                line = buf[pos:end]
                self._pos = end + 2
                if not line:
                    self._state = _NO_BODY
                    return b""
                self._remaining += 1
                check_field_line(line, self._remaining, limits, "trailer")
                name, value = FIELD_LINE.fullmatch(line).groups()
                if name.lower() not in _NOT_TRAILERS:
                    self.request.trailers.append((name, value.strip(b" \t")))


def _check_unfinished_chunk_line(buf, pos):
    end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
    # RFC 9112 §7.1 with §2.2: a bare LF or other control octet never ends or belongs to a
    # chunk-size line; say so now rather than wait for a CRLF that may never come.
    if NOT_IN_FIELD_LINE.search(buf, pos, min(end, pos + MAX_CHUNK_LINE)):
        raise BadRequest(f"invalid octet in chunk-size line {quote(buf[pos:end])}")
    if end - pos > MAX_CHUNK_LINE:
        raise BadRequest(f"chunk-size line over {MAX_CHUNK_LINE} bytes")


