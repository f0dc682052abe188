"""The PEP 3333 bridge: environ building, start_response rules, wsgi.input, file_wrapper.

No sockets and no gevent here: the connection hands in a ``receive(max_bytes)`` callable for
the body and sends whatever these helpers decide.
"""

import io
import os
import re
import sys
from stat import S_ISREG
from urllib.parse import unquote_to_bytes

from .protocol.response import ResponseHeaders


# RFC 9110 §5.6.2 token, for response header names.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: field values are visible characters, obs-text, SP and HTAB; never CR or LF
# (response splitting) nor other controls.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# PEP 3333: status is "NNN reason", a three-digit code and a reason phrase after one space.
_STATUS = re.compile(r"([1-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*")  # RFC 9110 §15: 100-599
_DIGITS = re.compile(r"[0-9]{1,19}")

# RFC 9110 §7.6.1: hop-by-hop fields belong to the server's connection, not to the app.
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "trailers",
                        "transfer-encoding", "upgrade"))

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS",
                                    "PATCH")}
_ENVIRON_KEYS = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
_MAX_CACHED_KEYS = 2048


def environ_key(name):
    """The environ key for a request header name (bytes), or None if it must be dropped."""
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        if b"_" in name:
            # "X_Forwarded_For" would be indistinguishable from "X-Forwarded-For" once mapped
            # to HTTP_X_FORWARDED_FOR, letting a client spoof a proxy's header.
            return None
        lowered = name.lower()
        key = _ENVIRON_KEYS.get(lowered)
        if key is None:
            key = "HTTP_" + lowered.decode("latin-1").upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < _MAX_CACHED_KEYS:
            _ENVIRON_KEYS[name] = key
    return key


# Traffic repeats itself: the parser hands over the same (name, value) header tuples for the
# lines it remembers, and apps answer with the same few status strings and header fields. What
# each became (its environ key and text; its status code; its checked name) is remembered, so
# the next copy skips the work. Only what depends on nothing but the item itself is skipped,
# and only after it passed every check: what depends on the response as a whole (repeated or
# conflicting Content-Length, hop-by-hop fields, an upgrade) runs each time. An app's items
# are looked up only when they are plain str (a str subclass could compare equal to a
# remembered str). Bounded: each memo is emptied when it reaches _MEMO_ENTRIES, and items
# longer than _MEMO_VALUE are not kept (a few MB at worst, a few KB for real traffic).
_MEMO_ENTRIES = 512
_MEMO_VALUE = 1024
_environ_fields = {}  # (name, value) from the parser -> (environ key or None, latin-1 text)
_checked_statuses = {}  # status -> code (200-599 only: a 101 depends on the request)
_checked_fields = {}  # (name, value) -> lowercase name
_plain_lengths = {}  # Content-Length value of plain digits -> its number


def _remember(memo, key, result):
    if len(memo) >= _MEMO_ENTRIES:
        memo.clear()
    memo[key] = result


def forget_memos():
    """Empty the memos (tests compare a warm run with a cold one)."""
    _environ_fields.clear()
    _checked_statuses.clear()
    _checked_fields.clear()
    _plain_lengths.clear()


def base_environ(config, server_name, server_port, multiprocess, file_wrapper=None,
                 errors=None):
    """The per-listener part of every environ, copied for each request.

    It also holds every key a request always sets (placeholders, overwritten each time), so
    the copy starts at its final size instead of growing while the request is built. Keys
    are counted: with 20 here, an environ with Host and no other header (a typical long
    poll) fits CPython's 21-key dict table, half the size of the next one. That is why the
    optional SERVER_SOFTWARE (the Server header says it) and a REQUEST_URI copy of RAW_URI
    are left out.
    """
    return {
        "REQUEST_METHOD": "", "PATH_INFO": "", "QUERY_STRING": "", "RAW_URI": "",
        "SERVER_PROTOCOL": "", "REMOTE_ADDR": "", "REMOTE_PORT": "",
        "wsgi.input": None, "greenserve.disconnected": None,
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SCRIPT_NAME": config.root_path,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": config.url_scheme,
        "wsgi.errors": errors if errors is not None else sys.stderr,
        # PEP 3333: true when the app "may be simultaneously invoked by another thread in
        # the same process": every connection runs it in its own greenlet (gunicorn's gevent
        # worker says True as well).
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": file_wrapper or FileWrapper,
    }


def build_environ(base, request, script_name, remote_addr, remote_port):
    """A request's environ: ``base`` (per listener) plus the request's own keys."""
    environ = base.copy()
    environ["REMOTE_ADDR"] = remote_addr
    environ["REMOTE_PORT"] = remote_port
    method = request.method
    environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
    path = request.path
    # PEP 3333: PATH_INFO is the decoded path as a latin-1 "bytes-as-str".
    # (find, not "in": bytes.__contains__ first tries the operand as an int and raises.)
    if path.find(b"%") >= 0:
        path = unquote_to_bytes(path)
    # RFC 9112 §3.2.4: the asterisk-form (OPTIONS *) names the server, not a resource; CGI
    # allows a PATH_INFO only empty or starting with "/" (RFC 3875 §4.1.5). RAW_URI keeps "*".
    path_info = path.decode("latin-1") if path != b"*" else ""
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        path_info = path_info[len(script_name):]
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = request.query.decode("latin-1")
    environ["RAW_URI"] = request.target.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/1.1" if request.version else "HTTP/1.0"
    known = _environ_fields
    for header in request.headers:
        field = known.get(header)
        if field is None:
            name, value = header
            field = (environ_key(name), value.decode("latin-1"))
            if len(name) + len(value) <= _MEMO_VALUE:
                if len(known) >= _MEMO_ENTRIES:
                    known.clear()
                known[header] = field
        key, value = field
        if key is None:
            continue
        if key in environ:
            # RFC 9110 §5.3: repeated fields combine into one list, in order; RFC 6265 §5.4
            # joins cookies with "; ".
            value = environ[key] + ("; " if key == "HTTP_COOKIE" else ", ") + value
        environ[key] = value
    if request.host is not None:
        # RFC 9112 §3.2.2: with an absolute-form target the authority replaces Host.
        environ["HTTP_HOST"] = request.host.decode("latin-1")
    if request.chunked:
        environ.pop("CONTENT_LENGTH", None)
    elif "CONTENT_LENGTH" in environ:
        # RFC 9110 §8.6 lets "3, 3" (or two identical fields) stand for one value; the app
        # gets that value as plain digits, as CGI defines CONTENT_LENGTH.
        environ["CONTENT_LENGTH"] = str(request.content_length)
    return environ


def is_upgrade(environ):
    """RFC 9110 §7.8: an HTTP/1.1 request asking to switch protocols (e.g. to WebSocket):
    an Upgrade field named in the Connection field."""
    if "HTTP_UPGRADE" not in environ or environ["SERVER_PROTOCOL"] != "HTTP/1.1":
        return False
    options = environ.get("HTTP_CONNECTION", "").lower().split(",")
    return any(option.strip() == "upgrade" for option in options)


def check_status(status, switching=False):
    """Validate an app's status string; return its code. Raises TypeError/ValueError.

    ``switching``: the request asked to upgrade, so 101 Switching Protocols is allowed."""
    if type(status) is not str:
        raise TypeError(f"status must be a str, not {type(status).__name__}: {status!r}")
    code = _checked_statuses.get(status)
    if code is not None:
        return code
    match = _STATUS.fullmatch(status)
    if match is None:
        raise ValueError(f"status must look like '200 OK', got {status!r}")
    code = int(match.group(1))
    if code < 200:
        if not (switching and code == 101):
            # RFC 9110 §15.2: a 1xx is interim; the client would wait for a final response
            # that a WSGI app has no way to send.
            raise ValueError(f"status {status!r}: a WSGI app cannot send 1xx interim responses")
        return code  # depends on the request, so not remembered
    if len(status) <= _MEMO_VALUE:
        _remember(_checked_statuses, status, code)
    return code


def check_headers(headers, upgrade=False):
    """Validate an app's header list (PEP 3333, RFC 9110 §5); returns ResponseHeaders.

    Raises TypeError/ValueError on a bad type, a non-token name, CR/LF or other controls in
    a value (response splitting), non-latin-1 text, or a hop-by-hop field. A
    ``Connection: close`` from the app is honoured instead of refused; ``upgrade`` allows
    the Connection and Upgrade fields of a 101 Switching Protocols or a 426 Upgrade
    Required.
    """
    if type(headers) is not list:
        raise TypeError(f"headers must be a list, not {type(headers).__name__}")
    info = ResponseHeaders()
    info.content_length = None
    info.rewrite_length = info.close = info.has_date = info.has_server = False
    known = _checked_fields
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"each header must be a (name, value) tuple, got {item!r}")
        name, value = item
        # A str subclass could compare equal to a remembered str: only plain str may hit.
        lname = known.get(item) if type(name) is str and type(value) is str else None
        if lname is None:
            lname = _check_field(name, value)
        if lname in _SPECIAL_RESPONSE_FIELDS:
            if lname == "content-length":
                length = _plain_lengths.get(value)
                if length is None:
                    digits = value.strip()
                    # RFC 9110 §8.6: Content-Length = 1*DIGIT.
                    if not _DIGITS.fullmatch(digits):
                        raise ValueError(f"invalid Content-Length {value!r}")
                    length = int(digits)
                    if digits != value or digits[0] == "0" and len(digits) > 1:
                        info.rewrite_length = True  # sent as plain digits
                    else:
                        _remember(_plain_lengths, value, length)
                if info.content_length is not None:
                    # RFC 9110 §8.6: repeats of one value are one value, sent once.
                    if length != info.content_length:
                        raise ValueError(f"invalid Content-Length {value!r}")
                    info.rewrite_length = True
                info.content_length = length
            elif lname == "date":
                info.has_date = True
            elif lname == "server":
                info.has_server = True
            elif lname == "connection" and value.strip().lower() == "close":
                info.close = True
            elif upgrade and lname in ("connection", "upgrade"):
                pass  # RFC 9110 §7.8, §15.5.22: a 101 or 426 names the protocol
            else:
                raise ValueError(f"hop-by-hop header {name!r} is not allowed from an app "
                                 f"(PEP 3333); the server frames the connection")
    return info


def _check_field(name, value):
    """The lowercase name of a valid (name, value) header; remembered for the next one."""
    # RFC 9110 §5.1: field-name = token.
    if type(name) is not str or not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if type(value) is not str:
        raise TypeError(f"header {name} value must be a str, not {type(value).__name__}")
    if not _FIELD_VALUE.fullmatch(value):
        raise ValueError(f"invalid character (CR, LF, control or non-latin-1) in header "
                         f"{name}: {value!r}")
    lname = name.lower()
    if len(name) + len(value) <= _MEMO_VALUE:
        _remember(_checked_fields, (name, value), lname)
    return lname


_SPECIAL_RESPONSE_FIELDS = HOP_BY_HOP | {"content-length", "date", "server"}


class StartResponse:
    """PEP 3333's ``start_response`` for one request, the ``write()`` it returns, and
    (``receive``) the reads of the request's body behind its ``wsgi.input``.

    All three belong to the request they were given for. A greenlet the app spawned may
    still hold them after that request ended; on a keep-alive connection the next
    request's response and body are not theirs, so they then raise. ``connection`` does
    the work (``_start_response(self, status, headers, exc_info)``, ``_write(data)``,
    ``_receive_body(max_bytes)``); its ``request`` attribute is the request it now serves.
    One C object per request where compiled: three ``functools.partial`` cost three times
    as much on every request.
    """

    __slots__ = ("_connection", "_request")

    def __init__(self, connection, request):
        self._connection = connection
        self._request = request

    def __call__(self, status, response_headers, exc_info=None):
        connection = self._connection
        if connection.request is not self._request:
            raise AssertionError("start_response() called after its request ended")
        return connection._start_response(self, status, response_headers, exc_info)

    def write(self, data):
        connection = self._connection
        if connection.request is not self._request:
            raise AssertionError("write() called after its request ended")
        connection._write(data)

    def receive(self, max_bytes):
        connection = self._connection
        if connection.request is not self._request:
            # The parser now holds the next request's bytes, never this one's.
            raise ValueError("read of the body of a request that has ended")
        return connection._receive_body(max_bytes)


class InputStream:
    """``wsgi.input``: the request body, read on demand through ``receive(max_bytes)``.

    ``receive`` returns non-empty bytes, or b"" once the body is complete; it raises
    ClientDisconnected or BodyReadTimeout (IOError subclasses) when the body cannot arrive.
    Pieces are joined once per call and consumed by moving an offset, so reading a large
    body costs time in proportion to its size, however it is read.
    """

    __slots__ = ("_receive", "_buffer", "_pos", "_done")

    def __init__(self, receive):
        self._receive = receive
        self._buffer = b""
        self._pos = 0
        self._done = False

    def read(self, size=-1):
        buf, pos = self._buffer, self._pos
        have = len(buf) - pos
        unlimited = size is None or size < 0
        if not unlimited and have >= size:
            self._pos = pos + size
            return buf[pos:pos + size]
        parts = [buf[pos:]] if have else []
        while (unlimited or have < size) and not self._done:
            data = self._receive(65536 if unlimited else max(size - have, 8192))
            if not data:
                self._done = True
                break
            parts.append(data)
            have += len(data)
        joined = b"".join(parts)
        if unlimited or len(joined) <= size:
            self._buffer, self._pos = b"", 0
            return joined
        self._buffer, self._pos = joined, size
        return joined[:size]

    def readline(self, size=-1):
        if size is None:
            size = -1
        buf, pos = self._buffer, self._pos
        newline = buf.find(b"\n", pos)
        if newline < 0 and not self._done and (size < 0 or len(buf) - pos < size):
            parts = [buf[pos:]]
            have = len(buf) - pos
            while True:
                data = self._receive(65536)
                if not data:
                    self._done = True
                    break
                parts.append(data)
                have += len(data)
                if b"\n" in data or 0 <= size <= have:
                    break
            buf, pos = b"".join(parts), 0
            newline = buf.find(b"\n")
        end = newline + 1 if newline >= 0 else len(buf)
        if 0 <= size < end - pos:
            end = pos + size
        self._buffer, self._pos = buf, end
        return buf[pos:end]

    def readlines(self, hint=-1):
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line


def _no_body(max_bytes):
    return b""


# Stateless once at its end, so every bodiless request can share one.
EMPTY_INPUT = InputStream(_no_body)
EMPTY_INPUT.read()


_BUFFERED_FILES = (io.BufferedReader, io.BufferedRandom)


class FileWrapper:
    """``wsgi.file_wrapper``: the server sends a real file with os.sendfile when it can."""

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike, blksize=65536):
        self.filelike = filelike
        self.blksize = blksize

    def sendfile_source(self):
        """``(fd, offset, bytes available)`` when the wrapped object is a plain open file
        of a regular file, else None (then the server iterates)."""
        filelike = self.filelike
        # PEP 3333: sending the wrapper must give what iterating read(blksize) gives. Only a
        # plain binary file reads the bytes its descriptor holds: a gzip, bz2 or lzma file
        # (and any wrapper passing fileno() through) would send its compressed source.
        kind = type(filelike)
        if kind is not io.FileIO and (kind not in _BUFFERED_FILES
                                      or type(getattr(filelike, "raw", None)) is not io.FileIO):
            return None
        try:
            fd = filelike.fileno()
            offset = filelike.tell()
            stat = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return None
        # Pipes, sockets and /proc files report no size: their length is found by reading.
        if not S_ISREG(stat.st_mode) or not stat.st_size or offset > stat.st_size:
            return None
        return fd, offset, stat.st_size - offset

    def __iter__(self):
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def close(self):
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()
