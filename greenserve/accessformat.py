"""Access-log lines: gunicorn's %-atoms, the ``json`` preset, and escaping.

Pure and light (no logging, no threads): ``config`` checks a format with it while the
command line is read, before gevent has patched anything.

What a client or an app controls is escaped, so no request can start a new log line, hide
part of one or reach a terminal as a control sequence. Every code point ``str.isprintable``
rejects (C0, DEL, C1 such as NEL U+0085 and CSI U+009B, U+2028/U+2029, format characters,
unassigned ones) is written ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` in a text format and
``\\uNNNN`` in JSON; ``"`` and ``\\`` are escaped too, so quoted fields stay parseable.
"""

import base64
import binascii
import os
import re
import time
from urllib.parse import unquote_to_bytes

from .errors import ConfigError

JSON_PRESET = "json"

# A rejected request line can be as long as the receive buffer; the log keeps its start.
REJECTED_LINE_LIMIT = 1024


# -- escaping -----------------------------------------------------------------------------

# What a client sends reaches the environ as latin-1 (PEP 3333), so the hot case is a run
# of latin-1 controls: those are escaped by C code (hex), not one Python call per character.
_LATIN1_UNPRINTABLE = "".join(f"\\x{code:02x}" for code in range(0x100)
                              if not chr(code).isprintable())
_UNSAFE_RUN = re.compile(f"[{_LATIN1_UNPRINTABLE}]+|[^\\x00-\\xff]+")


def _escape_char(char):
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _escape_run(match):
    run = match.group()
    if run[0] <= "\xff":
        return "\\x" + run.encode("latin-1").hex(":").replace(":", "\\x")
    # Beyond latin-1 (text an app put in the environ or a header): printable stays.
    return "".join(char if char.isprintable() else _escape_char(char) for char in run)


def escape(text):
    """``text`` with every non-printable code point, ``"`` and ``\\`` escaped."""
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    if text.isprintable():
        return text  # the usual case: one C-level scan, no copy
    return _UNSAFE_RUN.sub(_escape_run, text)


def _json_char(char):
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    # RFC 8259 §7: a character outside the BMP is escaped as a UTF-16 surrogate pair.
    code -= 0x10000
    return f"\\u{0xd800 + (code >> 10):04x}\\u{0xdc00 + (code & 0x3ff):04x}"


def _json_run(match):
    run = match.group()
    if run[0] <= "\xff":
        return "\\u00" + run.encode("latin-1").hex(":").replace(":", "\\u00")
    return "".join(char if char.isprintable() else _json_char(char) for char in run)


def json_string(text):
    """``text`` as a JSON string literal that holds no non-printable code point."""
    if '"' in text or "\\" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    if text.isprintable():
        return f'"{text}"'
    # RFC 8259 §7: control characters must be escaped; the other non-printables are too.
    return f'"{_UNSAFE_RUN.sub(_json_run, text)}"'


# -- time stamps ----------------------------------------------------------------------------

class _Clock:
    """The log's time stamps, formatted once per second (strftime costs microseconds)."""

    def __init__(self):
        self._second = None
        self._common = self._iso = self._zone = ""

    def _tick(self, now):
        second = int(now)
        if second != self._second:
            local = time.localtime(second)
            self._common = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", local)
            self._iso = time.strftime("%Y-%m-%dT%H:%M:%S", local)
            zone = time.strftime("%z", local)
            self._zone = f"{zone[:3]}:{zone[3:]}" if len(zone) == 5 else zone
            self._second = second

    def common(self):
        """Common Log Format: ``[10/Oct/2000:13:55:36 -0700]``."""
        self._tick(time.time())
        return self._common

    def iso(self):
        """ISO 8601 / RFC 3339 with milliseconds: ``2000-10-10T13:55:36.123-07:00``."""
        now = time.time()
        self._tick(now)
        return f"{self._iso}.{int((now % 1) * 1000):03d}{self._zone}"


_clock = _Clock()


# -- atoms: (environ, status, body bytes, seconds, response headers) -> value ----------------

def _remote_user(environ):
    user = environ.get("REMOTE_USER")
    if user:
        return user
    auth = environ.get("HTTP_AUTHORIZATION")
    # RFC 7617 §2: Basic credentials are base64 of "user-id:password" (as gunicorn logs).
    if not auth or auth[:6].lower() != "basic ":
        return None
    try:
        return base64.b64decode(auth[6:].strip(), validate=True).partition(b":")[0].decode()
    except (binascii.Error, ValueError):  # not base64, not ASCII, not UTF-8
        return None


def _request_line(environ):
    method = environ.get("REQUEST_METHOD")
    uri = environ.get("RAW_URI")
    if uri is None:  # not set by every server; rebuild it for environs from elsewhere
        query = environ.get("QUERY_STRING")
        uri = environ.get("PATH_INFO", "") + ("?" + query if query else "")
    protocol = environ.get("SERVER_PROTOCOL")
    if method and protocol:
        return f"{method} {uri} {protocol}"
    # A rejected request: whatever part of the line is known.
    return " ".join(part for part in (method, uri, protocol) if part) or None


TEXT, NUMBER = True, False

# atom -> (what it is, getter, TEXT or NUMBER). Text is escaped ('-' when absent); numbers
# stay numbers, so %(s)d or %(D)08d work too.
ATOMS = {
    "h": ("remote address", lambda e, s, b, d, o: e.get("REMOTE_ADDR"), TEXT),
    "l": ("always '-'", lambda e, s, b, d, o: None, TEXT),
    "u": ("user name (REMOTE_USER or Basic auth)", lambda e, s, b, d, o: _remote_user(e),
          TEXT),
    "t": ("time as [10/Oct/2000:13:55:36 -0700]", lambda e, s, b, d, o: _clock.common(),
          TEXT),
    "r": ("request line", lambda e, s, b, d, o: _request_line(e), TEXT),
    "m": ("method", lambda e, s, b, d, o: e.get("REQUEST_METHOD"), TEXT),
    "U": ("path", lambda e, s, b, d, o: e.get("PATH_INFO"), TEXT),
    "q": ("query string", lambda e, s, b, d, o: e.get("QUERY_STRING"), TEXT),
    "H": ("protocol", lambda e, s, b, d, o: e.get("SERVER_PROTOCOL"), TEXT),
    "s": ("status code", lambda e, s, b, d, o: s, NUMBER),
    "B": ("response body bytes", lambda e, s, b, d, o: b, NUMBER),
    "b": ("the same as B", lambda e, s, b, d, o: b, NUMBER),
    "f": ("referer", lambda e, s, b, d, o: e.get("HTTP_REFERER"), TEXT),
    "a": ("user agent", lambda e, s, b, d, o: e.get("HTTP_USER_AGENT"), TEXT),
    "T": ("duration in whole seconds", lambda e, s, b, d, o: int(d), NUMBER),
    "D": ("duration in microseconds", lambda e, s, b, d, o: int(d * 1_000_000), NUMBER),
    "M": ("duration in milliseconds", lambda e, s, b, d, o: int(d * 1000), NUMBER),
    "L": ("duration in seconds with 6 decimals", lambda e, s, b, d, o: f"{d:.6f}", TEXT),
    # As gunicorn writes it ("<%s>" % os.getpid()); the json preset's pid is a number.
    "p": ("process id as <1234>", lambda e, s, b, d, o: f"<{os.getpid()}>", TEXT),
}

# Text atoms whose empty value is written as it is rather than as '-': gunicorn logs a
# request without a query with %(q)s empty (environ.get('QUERY_STRING')). '-' is kept for a
# rejected request whose line was unreadable (no QUERY_STRING at all).
_EMPTY_AS_IS = frozenset("q")

# %({name}i)s request header, %({name}o)s response header, %({name}e)s environ variable.
_KEYED = re.compile(r"\{([^{}]+)\}([ioe])")

# JSON preset: field name -> the atom that fills it, or None for a field of its own.
JSON_FIELDS = {
    "time": None,  # ISO 8601 rather than the Common Log Format's %(t)s
    "remote_addr": "h", "remote_user": "u", "request": "r", "method": "m", "path": "U",
    "query": "q", "protocol": "H", "status": "s", "bytes": "B", "referer": "f",
    "user_agent": "a", "duration_us": "D", "pid": None,  # a number, not %(p)s's "<1234>"
}
_JSON_OWN = {
    "time": (lambda e, s, b, d, o: _clock.iso(), TEXT),
    "pid": (lambda e, s, b, d, o: os.getpid(), NUMBER),
}


def _request_header(name):
    lowered = name.strip().lower()
    # PEP 3333 / CGI: Content-Type and Content-Length have no HTTP_ prefix.
    if lowered in ("content-type", "content-length"):
        key = lowered.upper().replace("-", "_")
    else:
        key = "HTTP_" + lowered.upper().replace("-", "_")
    return lambda e, s, b, d, o: e.get(key)


def _response_header(name):
    wanted = name.strip().lower()

    def get(environ, status, sent, seconds, headers):
        values = [value for key, value in headers if key.lower() == wanted]
        return ", ".join(values) if values else None
    return get


def _environ_variable(name):
    lowered = name.lower()

    def get(environ, status, sent, seconds, headers):
        value = environ.get(name)
        if value is None:  # gunicorn matches environ names whatever their case
            value = next((v for k, v in environ.items() if k.lower() == lowered), None)
        return value if value is None or isinstance(value, str) else str(value)
    return get


_KEYED_GETTERS = {"i": _request_header, "o": _response_header, "e": _environ_variable}


def atom(key):
    """(getter, TEXT or NUMBER) for one atom name; ConfigError when there is no such atom."""
    if key in ATOMS:
        return ATOMS[key][1:]
    keyed = _KEYED.fullmatch(key)
    if keyed:
        return _KEYED_GETTERS[keyed.group(2)](keyed.group(1)), TEXT
    raise ConfigError(f"access-log-format: unknown key '{key}' (known: {' '.join(ATOMS)}, "
                      f"{{Header}}i, {{Header}}o, {{VARIABLE}}e, or the preset 'json')")


# -- compiled formats --------------------------------------------------------------------------

# '%%', '%(name)' or a bare '%' (which would format the whole mapping: refused).
_FIELD = re.compile(r"%(%|\(([^)]*)\))?")


def compile_format(spec):
    """A ``render(environ, status, body_bytes, seconds, response_headers)`` -> line.

    ``spec`` is gunicorn's %-style format or ``json``. A bad one is a ``ConfigError``
    naming the problem, raised now rather than on the first request.
    """
    if spec.strip().lower() == JSON_PRESET:
        return _render_json
    if not spec:
        raise ConfigError("access-log-format: is empty (give a format, or json)")
    getters = {}
    for match in _FIELD.finditer(spec):
        if match.group(1) is None:
            raise ConfigError(f"access-log-format: {spec!r} has a '%' without an atom name "
                              f"(write %(h)s for an atom, %% for a literal %)")
        key = match.group(2)
        if key is not None and key not in getters:
            getters[key] = atom(key)
    if not getters:  # most likely a misspelt preset
        raise ConfigError(f"access-log-format: {spec!r} has no atom (such as %(h)s), so "
                          f"every line would be the same")
    for text, number in (("-", 0), ("a\u00e9b", 1234567)):
        try:  # a broken conversion (e.g. '%(h)' or '%(h)d') fails here, not per request
            spec % {key: text if kind is TEXT else number for key, (_, kind) in getters.items()}
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"access-log-format: {spec!r} is not a valid format: "
                              f"{exc}") from None
    fields = tuple((key, get, kind, "" if key in _EMPTY_AS_IS else "-")
                   for key, (get, kind) in getters.items())

    def render(environ, status, sent, seconds, headers=()):
        values = {}
        for key, get, kind, empty in fields:
            value = get(environ, status, sent, seconds, headers)
            if kind is TEXT:
                value = escape(value) if value else (empty if value == "" else "-")
            values[key] = value
        return spec % values
    return render


_JSON_GETTERS = tuple((f'"{name}":', _JSON_OWN[name] if key is None else ATOMS[key][1:])
                      for name, key in JSON_FIELDS.items())


def _render_json(environ, status, sent, seconds, headers=()):
    parts = []
    for name, (get, kind) in _JSON_GETTERS:
        value = get(environ, status, sent, seconds, headers)
        if value is None:
            parts.append(name + "null")
        elif kind is TEXT:
            parts.append(name + json_string(value))
        else:
            parts.append(f"{name}{int(value)}")
    return "{" + ",".join(parts) + "}"


# -- requests the parser rejected -------------------------------------------------------------

def rejected_environ(remote_addr, remote_port=None, request_line=None):
    """The little that is known of a rejected request, as an environ for the formats."""
    environ = {"REMOTE_ADDR": remote_addr}
    if remote_port is not None:
        environ["REMOTE_PORT"] = str(remote_port)
    if not request_line:
        return environ
    if isinstance(request_line, (bytes, bytearray, memoryview)):
        # RFC 9112 §2.2: a recipient parses octets; latin-1 keeps each one as it came.
        request_line = bytes(request_line[:REJECTED_LINE_LIMIT + 1]).decode("latin-1")
    line = request_line.partition("\n")[0]
    line = line[:-1] if line.endswith("\r") else line
    if len(line) > REJECTED_LINE_LIMIT:
        line = line[:REJECTED_LINE_LIMIT] + "..."
    parts = line.split(" ")
    # RFC 9112 §3: request-line = method SP request-target SP HTTP-version
    if len(parts) == 3 and all(parts):
        method, target, protocol = parts
        path, _, query = target.partition("?")
        environ.update(REQUEST_METHOD=method, RAW_URI=target, SERVER_PROTOCOL=protocol,
                       PATH_INFO=unquote_to_bytes(path.encode("latin-1", "replace"))
                       .decode("latin-1"), QUERY_STRING=query)
    elif line:
        environ["RAW_URI"] = line  # %(r)s shows it as it came
    return environ
