"""Reader for the ``tests/corpus/*.http`` request corpus.

A case file is a block of ``# key: value`` lines followed by the raw request bytes::

    # rfc: RFC 9112 §3: request-line = method SP request-target SP HTTP-version
    # request: GET /a?b HTTP/1.1
    # path: /a
    # query: b
    # host: example.com
    # header: Host: example.com
    GET /a?b HTTP/1.1\\r\\n
    Host: example.com\\r\\n
    \\r\\n

In the raw part the newline ending each line of the file is ignored and every byte that matters
is written as an escape: ``\\r \\n \\t \\0 \\\\ \\xHH``. So bare CR, bare LF, NUL and obs-text are
all expressible, and trailing whitespace cannot be eaten by an editor.

Keys (values use the same escapes):

- ``rfc`` (one or more, required): the section the case exercises, and why;
- ``limits``: ``name=value`` pairs for ``Limits`` (request_line, field_size, fields, head, body);
- ``repeat``: the raw bytes are repeated this many times;
- ``request: METHOD TARGET HTTP/1.x`` starts the expectation for the next parsed request; after
  it: ``path`` (default ``/``), ``query`` (default empty), ``host`` (default: none), ``keep-alive``
  (yes/no, default yes), ``framing`` (``length N`` or ``chunked``, default ``length 0``),
  ``expect-continue`` (yes/no, default no), ``body`` (the decoded body, default empty), and
  ``header`` / ``trailer`` lines ``Name: value`` (the complete lists, in order; default none;
  trailers are ``[]`` rather than ``None`` for chunked requests);
- ``error: NNN``: after the listed requests the parser raises a ProtocolError with this status;
- ``pending: yes``: the input ends inside a message (the parser waits for more bytes).

Without ``error`` or ``pending`` the input must be consumed completely by the listed requests.
"""

import os
import re

CORPUS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

_ESCAPE = re.compile(r"\\(r|n|t|0|\\|x[0-9A-Fa-f]{2})|\\")
_SIMPLE = {"r": b"\r", "n": b"\n", "t": b"\t", "0": b"\0", "\\": b"\\"}
_META = re.compile(r"# ([a-z-]+): ?(.*)")
_REQUEST_KEYS = {"path", "query", "host", "keep-alive", "framing", "expect-continue", "body",
                 "header", "trailer"}
_LIMIT_NAMES = {"request_line", "field_size", "fields", "head", "body"}


class CorpusError(Exception):
    """A corpus file does not follow the format."""


def unescape(text):
    """Decode the corpus escapes into bytes; an unknown escape is an error, not a guess."""
    if not text.isascii():
        raise CorpusError(f"non-ASCII text {text!r}: write bytes as \\xHH")

    def one(match):
        code = match.group(1)
        if code is None:
            raise CorpusError(f"unknown escape in {text!r}")
        return _SIMPLE[code].decode("latin-1") if code in _SIMPLE else chr(int(code[1:], 16))

    return _ESCAPE.sub(one, text).encode("latin-1")


def _field(value):
    name, colon, rest = value.partition(":")
    if not colon:
        raise CorpusError(f"field without a colon: {value!r}")
    return unescape(name), unescape(rest[1:] if rest.startswith(" ") else rest)


def _yes_no(value):
    if value not in ("yes", "no"):
        raise CorpusError(f"expected yes or no, got {value!r}")
    return value == "yes"


def new_expected_request(line):
    """The expected record for ``# request: METHOD TARGET HTTP/1.x``, with the defaults."""
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1"):
        raise CorpusError(f"bad request expectation {line!r}")
    return {"method": unescape(parts[0]), "target": unescape(parts[1]),
            "version": 0 if parts[2] == "HTTP/1.0" else 1, "path": b"/", "query": b"",
            "host": None, "keep_alive": True, "framing": "length 0", "expect_continue": False,
            "body": b"", "headers": [], "trailers": []}


def _finish(record):
    if record is not None and record["framing"] != "chunked":
        if record["trailers"]:
            raise CorpusError("trailers on a request that is not chunked")
        record["trailers"] = None


class Case:
    """One parsed corpus file."""

    def __init__(self, name, text):
        self.name = name
        self.rfc = []
        self.limits = {}
        self.repeat = 1
        self.requests = []
        self.error = None
        self.pending = False
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        index = 0
        current = None
        while index < len(lines) and lines[index].startswith("# "):
            match = _META.fullmatch(lines[index])
            if match is None:
                raise CorpusError(f"{name}: bad metadata line {lines[index]!r}")
            key, value = match.groups()
            index += 1
            if key == "rfc":
                self.rfc.append(value)
            elif key == "limits":
                for pair in value.split():
                    limit, _, number = pair.partition("=")
                    if limit not in _LIMIT_NAMES:
                        raise CorpusError(f"{name}: unknown limit {limit!r}")
                    self.limits[limit] = int(number)
            elif key == "repeat":
                self.repeat = int(value)
            elif key == "request":
                _finish(current)
                current = new_expected_request(value)
                self.requests.append(current)
            elif key == "error":
                self.error = int(value)
            elif key == "pending":
                self.pending = _yes_no(value)
            elif key in _REQUEST_KEYS:
                if current is None:
                    raise CorpusError(f"{name}: {key!r} before any 'request'")
                if key in ("path", "query", "body"):
                    current[key] = unescape(value)
                elif key == "host":
                    current["host"] = unescape(value)
                elif key == "keep-alive":
                    current["keep_alive"] = _yes_no(value)
                elif key == "expect-continue":
                    current["expect_continue"] = _yes_no(value)
                elif key == "framing":
                    if not re.fullmatch(r"chunked|length [0-9]+", value):
                        raise CorpusError(f"{name}: bad framing {value!r}")
                    current["framing"] = value
                elif key == "header":
                    current["headers"].append(_field(value))
                else:
                    current["trailers"].append(_field(value))
            else:
                raise CorpusError(f"{name}: unknown key {key!r}")
        _finish(current)
        if not self.rfc:
            raise CorpusError(f"{name}: no 'rfc' line")
        if self.error is not None and self.pending:
            raise CorpusError(f"{name}: both 'error' and 'pending'")
        if self.error is None and not self.pending and not self.requests:
            raise CorpusError(f"{name}: expects no request, no error and nothing pending")
        self.data = b"".join(unescape(line) for line in lines[index:]) * self.repeat
        if not self.data:
            raise CorpusError(f"{name}: no request bytes")

    def __repr__(self):
        return f"<Case {self.name}>"


def load_corpus(directory=CORPUS_DIR):
    """All cases, sorted by file name."""
    cases = []
    for filename in sorted(os.listdir(directory)):
        if filename.endswith(".http"):
            with open(os.path.join(directory, filename), encoding="utf-8") as file:
                cases.append(Case(filename[:-5], file.read()))
    return cases
