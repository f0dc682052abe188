"""Sans-IO HTTP/1.1 request parser (RFC 9112): bytes in, request heads and body pieces out.

The caller feeds received bytes with ``feed()``, asks for the next request head with
``next_request()`` and for body pieces with ``read_body()``. Both return ``None`` when more
bytes are needed. Every client mistake raises a ``ProtocolError`` carrying its HTTP status;
after one, the connection must be closed and nothing further parsed.
"""

import re

from ..errors import (BadRequest, ContentTooLarge, ExpectationFailed, HeaderTooLarge,
                      NotImplementedByServer, URITooLong, VersionNotSupported)

# RFC 9110 §5.6.2: token = 1*tchar.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, single spaces, and
# §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive. Targets are visible ASCII.
_REQUEST_LINE = re.compile(rb"([" + _TCHAR + rb"]+) ([!-~]+) HTTP/([0-9])\.([0-9])")
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; field-value is visible
# characters, obs-text, SP and HTAB (RFC 9110 §5.5), so CR, LF, NUL and other CTLs fail here.
_FIELD_LINE = re.compile(rb"([" + _TCHAR + rb"]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)")
# RFC 9112 §7.1: chunk-size = 1*HEXDIG, then chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS val ] ).
_CHUNK_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*[" + _TCHAR + rb"]+"
    rb"(?:[ \t]*=[ \t]*(?:[" + _TCHAR + rb"]+|\"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]"
    rb"|\\[\t\x20-\x7e\x80-\xff])*\"))?)*)[ \t]*")
# RFC 9110 §8.6: Content-Length = 1*DIGIT. Nineteen digits keep the value a sane integer.
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}")
# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ].
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_BARE_LF = re.compile(rb"(?<!\r)\n")

# Longest chunk-size line we accept, extensions included (RFC 9112 §7.1.1 lets servers limit).
MAX_CHUNK_LINE = 4096

# Body-reader states.
_NO_BODY, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS = range(6)


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

    __slots__ = ("limits", "_buf", "_pos", "_state", "_remaining", "_body_seen", "request")

    def __init__(self, limits=None):
        self.limits = limits or Limits()
        self._buf = b""
        self._pos = 0
        self._state = _NO_BODY
        self._remaining = 0
        self._body_seen = 0
        self.request = None

    # -- input -------------------------------------------------------------------------------

    def feed(self, data):
        """Append received bytes."""
        if self._pos >= len(self._buf):
            self._buf = data
        else:
            self._buf = self._buf[self._pos:] + data
        self._pos = 0

    @property
    def buffered(self):
        """Bytes received but not yet consumed."""
        return len(self._buf) - self._pos

    @property
    def body_done(self):
        """True when the current request's body has been read completely."""
        return self._state == _NO_BODY

    # -- request heads -------------------------------------------------------------------------

    def next_request(self):
        """Parse the next request head; None if it has not fully arrived yet."""
        if self._state != _NO_BODY:
            raise RuntimeError("the previous request body has not been read")
        buf, pos = self._buf, self._pos
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
        while buf.startswith(b"\r\n", pos):
            pos += 2
        self._pos = pos
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            self._check_partial_head(buf, pos)
            return None
        if end + 4 - pos > self.limits.head:
            raise HeaderTooLarge(f"header block over {self.limits.head} bytes")
        lines = buf[pos:end].split(b"\r\n")
        self._pos = end + 4
        request = self._parse_head(lines)
        self.request = request
        if request.chunked:
            self._state = _CHUNK_SIZE
            self._body_seen = 0
        elif request.content_length:
            self._state = _LENGTH
            self._remaining = request.content_length
        return request

    def _check_partial_head(self, buf, pos):
        """Reject an unfinished head as soon as it is certain to be bad or too large."""
        size = len(buf) - pos
        if size == 0:
            return
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            if size > self.limits.request_line:
                raise URITooLong(f"request line over {self.limits.request_line} bytes")
        elif line_end - pos > self.limits.request_line:
            raise URITooLong(f"request line over {self.limits.request_line} bytes")
        elif len(buf) - buf.rfind(b"\r\n", pos) - 2 > self.limits.field_size:
            raise HeaderTooLarge(f"header line over {self.limits.field_size} bytes")
        if size > self.limits.head:
            raise HeaderTooLarge(f"header block over {self.limits.head} bytes")
        # RFC 9112 §2.2: a bare LF is not a line terminator here; say so now instead of
        # waiting for a CRLF CRLF that a lenient client will never send.
        bare = _BARE_LF.search(buf, pos)
        if bare:
            raise BadRequest("bare LF in request head (lines must end with CRLF)")
        if buf.startswith(b"PRI * HTTP/2.0\r\n", pos):
            # RFC 9113 §3.4: the HTTP/2 preface; we speak HTTP/1.1 only.
            raise VersionNotSupported("HTTP/2 connection preface on an HTTP/1.1 port")

    def _parse_head(self, lines):
        limits = self.limits
        line = lines[0]
        if len(line) > limits.request_line:
            raise URITooLong(f"request line over {limits.request_line} bytes")
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            raise BadRequest(f"malformed request line {_quote(line)}")
        method, target, major, minor = match.groups()
        # RFC 9110 §6.2: only HTTP/1.x is spoken here; 1.2+ is handled as 1.1.
        if major != b"1":
            raise VersionNotSupported(f"HTTP/{major.decode()}.{minor.decode()} is not supported")
        version = 0 if minor == b"0" else 1

        if len(lines) - 1 > limits.fields:
            raise HeaderTooLarge(f"more than {limits.fields} header fields")
        headers = []
        host = content_length = transfer_encoding = connection = expect = None
        host_count = 0
        field_size = limits.field_size
        for line in lines[1:]:
            if len(line) > field_size:
                raise HeaderTooLarge(f"header line over {field_size} bytes")
            match = _FIELD_LINE.fullmatch(line)
            if match is None:
                raise BadRequest(_diagnose_field_line(line))
            name, value = match.groups()
            value = value.rstrip(b" \t")
            headers.append((name, value))
            lname = name.lower()
            if lname in _FRAMING_FIELDS:
                if lname == b"host":
                    host_count += 1
                    host = value
                elif lname == b"content-length":
                    content_length = value if content_length is None \
                        else content_length + b"," + value
                elif lname == b"transfer-encoding":
                    transfer_encoding = value if transfer_encoding is None \
                        else transfer_encoding + b"," + value
                elif lname == b"connection":
                    connection = value if connection is None else connection + b"," + value
                else:
                    expect = value if expect is None else expect + b"," + value

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
        elif _HOST.fullmatch(host) is None:
            raise BadRequest(f"invalid Host header field {_quote(host)}")
        request.host = host
        self._parse_target(request, method, target)

        if transfer_encoding is not None:
            self._parse_transfer_encoding(request, transfer_encoding, content_length, version)
        else:
            request.chunked = False
            request.content_length = 0 if content_length is None \
                else self._parse_content_length(content_length)

        # RFC 9112 §9.3: HTTP/1.1 persists unless "close"; HTTP/1.0 only with "keep-alive".
        if connection is None:
            request.keep_alive = bool(version)
        else:
            options = {token.strip().lower() for token in connection.split(b",")}
            if b"close" in options:
                request.keep_alive = False
            else:
                request.keep_alive = bool(version) or b"keep-alive" in options

        if expect is not None:
            # RFC 9110 §10.1.1: 100-continue is the only expectation defined; others get 417,
            # and an HTTP/1.0 request's expectation MUST be ignored.
            if version:
                if expect.strip().lower() != b"100-continue":
                    raise ExpectationFailed(f"unsupported expectation {_quote(expect)}")
                request.expect_continue = True
        return request

    def _parse_target(self, request, method, target):
        # RFC 9112 §3.2.1: origin-form, the usual case.
        if target[0] == 47:  # "/"
            path, _, query = target.partition(b"?")
        elif target == b"*":
            # RFC 9112 §3.2.4: asterisk-form is only used for a server-wide OPTIONS.
            if method != b"OPTIONS":
                raise BadRequest("asterisk-form target is only allowed with OPTIONS")
            path, query = b"*", b""
        elif method == b"CONNECT":
            # RFC 9110 §9.3.6: CONNECT asks for a tunnel, which an origin server does not offer.
            raise NotImplementedByServer("CONNECT is not supported")
        else:
            # RFC 9112 §3.2.2: a server MUST accept absolute-form and then MUST ignore Host in
            # favour of the target's authority.
            match = _ABSOLUTE_FORM.fullmatch(target)
            if match is None or match.group(1).lower() not in (b"http", b"https"):
                raise BadRequest(f"invalid request target {_quote(target)}")
            authority = match.group(2)
            if not authority or _HOST.fullmatch(authority) is None or b"@" in authority:
                raise BadRequest(f"invalid authority in request target {_quote(target)}")
            request.host = authority
            path = match.group(3) or b"/"
            query = match.group(4) or b""
        # RFC 3986 §2.1: "%" must start a percent-encoding, or the decoded path is ambiguous;
        # RFC 9112 §3.2: a fragment is never part of a request-target.
        if b"%" in target and _BAD_PERCENT.search(target):
            raise BadRequest(f"invalid percent-encoding in {_quote(target)}")
        if b"#" in target:
            raise BadRequest(f"fragment in request target {_quote(target)}")
        request.path = path
        request.query = query

    def _parse_content_length(self, raw):
        # RFC 9110 §8.6: a list of identical values may be taken as one; differing values,
        # signs, spaces inside or anything but digits make the framing unknowable -> 400.
        values = set()
        for item in raw.split(b","):
            item = item.strip(b" \t")
            if _CONTENT_LENGTH.fullmatch(item) is None:
                raise BadRequest(f"invalid Content-Length {_quote(raw)}")
            values.add(int(item))
        if len(values) != 1:
            raise BadRequest(f"conflicting Content-Length values {_quote(raw)}")
        length = values.pop()
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
        codings = [item.strip(b" \t").lower() for item in raw.split(b",")]
        codings = [coding for coding in codings if coding]
        if not codings:
            raise BadRequest("empty Transfer-Encoding")
        if codings[-1] != b"chunked":
            # RFC 9112 §6.3: chunked must be final in a request, else 400; RFC 9112 §6.1:
            # a coding the server does not understand gets 501.
            if b"chunked" in codings:
                raise BadRequest("chunked is not the final transfer coding")
            raise NotImplementedByServer(f"transfer coding {_quote(raw)} is not supported")
        # RFC 9112 §6.1: chunked MUST NOT be applied more than once.
        if codings.count(b"chunked") > 1:
            raise BadRequest("chunked applied more than once")
        if len(codings) > 1:
            raise NotImplementedByServer(f"transfer coding {_quote(raw)} is not supported")
        request.chunked = True
        request.content_length = None

    # -- bodies -------------------------------------------------------------------------------

    def read_body(self, max_bytes=65536):
        """Next piece of the request body.

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
        return self._read_chunked(max_bytes)

    def _read_chunked(self, max_bytes):
        buf = self._buf
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
                    if len(buf) - pos > MAX_CHUNK_LINE:
                        raise BadRequest(f"chunk-size line over {MAX_CHUNK_LINE} bytes")
                    return None
                line = buf[pos:end]
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise BadRequest(f"malformed chunk-size line {_quote(line)}")
                size = int(match.group(1), 16)
                self._pos = end + 2
                self._body_seen += size
                if self.limits.body and self._body_seen > self.limits.body:
                    raise ContentTooLarge(f"chunked body over the {self.limits.body} byte limit")
                if size:
                    self._state = _CHUNK_DATA
                    self._remaining = size
                else:
                    self._state = _TRAILERS
                    self.request.trailers = []
            elif state == _CHUNK_CRLF:
                if len(buf) - pos < 2:
                    if len(buf) > pos and buf[pos] != 13:
                        raise BadRequest("chunk data not followed by CRLF")
                    return None
                # RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF.
                if not buf.startswith(b"\r\n", pos):
                    raise BadRequest("chunk data not followed by CRLF")
                self._pos = pos + 2
                self._state = _CHUNK_SIZE
            else:  # _TRAILERS
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > self.limits.field_size:
                        raise HeaderTooLarge(f"trailer line over {self.limits.field_size} bytes")
                    return None
                line = buf[pos:end]
                self._pos = end + 2
                if not line:
                    self._state = _NO_BODY
                    return b""
                # RFC 9112 §7.1.2: trailer fields use the field-line syntax; a server may
                # discard them, but they are limited like header fields.
                if len(line) > self.limits.field_size:
                    raise HeaderTooLarge(f"trailer line over {self.limits.field_size} bytes")
                match = _FIELD_LINE.fullmatch(line)
                if match is None:
                    raise BadRequest(_diagnose_field_line(line))
                trailers = self.request.trailers
                if len(trailers) >= self.limits.fields:
                    raise HeaderTooLarge(f"more than {self.limits.fields} trailer fields")
                trailers.append((match.group(1), match.group(2).rstrip(b" \t")))


_FRAMING_FIELDS = frozenset((b"host", b"content-length", b"transfer-encoding", b"connection",
                             b"expect"))


def _diagnose_field_line(line):
    """Explain why a field line failed to parse (the cold path, so it can take its time)."""
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: obs-fold is refused with 400 outside message/http.
        return f"obsolete line folding in {_quote(line)}"
    name, colon, value = line.partition(b":")
    if not colon:
        return f"header line without a colon {_quote(line)}"
    if name != name.rstrip(b" \t"):
        # RFC 9112 §5.1: whitespace between field name and colon MUST be rejected (400).
        return f"whitespace before the colon in {_quote(line)}"
    if not name or not re.fullmatch(rb"[" + _TCHAR + rb"]+", name):
        return f"invalid header name {_quote(name)}"
    # RFC 9110 §5.5: CR, LF and NUL (and other controls) are invalid in field values.
    return f"invalid character in the value of {_quote(name)}"


def _quote(data, limit=60):
    """Show the offending bytes in an error message, shortened."""
    text = repr(bytes(data[:limit]))[1:]
    return text + ("..." if len(data) > limit else "")
