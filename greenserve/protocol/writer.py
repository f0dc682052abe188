"""Sans-IO response bytes (RFC 9112 §4-§7): Date, status line and head, chunks, errors.

The framing rules of an app's response live in ``response.py``; these are the pieces it
and the connection's error answers are made of."""

import time
from email.utils import formatdate
from http import HTTPStatus

SERVER_NAME = "greenserve"
SERVER_LINE = f"Server: {SERVER_NAME}\r\n"


def server_line(text):
    """The preformatted ``Server`` field for ``text`` ('' = send none). The caller has
    validated it as a field value (RFC 9110 §10.2.4)."""
    return f"Server: {text}\r\n" if text else ""

LAST_CHUNK = b"0\r\n\r\n"

_date_second = 0
_date_value = ""
_date_line = ""


def http_date():
    """The current ``Date`` value, formatted at most once a second (RFC 9110 §6.6.1)."""
    global _date_second, _date_value, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_value = formatdate(now, usegmt=True)
        _date_line = f"Date: {_date_value}\r\n"
        _date_second = now
    return _date_value


def date_line():
    """The current ``Date`` field as a head line, ``"Date: ...\\r\\n"``."""
    if int(time.time()) != _date_second:
        http_date()
    return _date_line


def format_head(status, headers, extra):
    """Status line and header block as bytes; ``extra`` is preformatted "Name: v\\r\\n" text.

    The caller has validated ``status`` and ``headers`` (latin-1 text without CR/LF).
    """
    lines = ["HTTP/1.1 ", status, "\r\n"]
    for name, value in headers:
        lines.append(name)
        lines.append(": ")
        lines.append(value)
        lines.append("\r\n")
    lines.append(extra)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def frame_chunk(data):
    """One chunk of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def status_line(code):
    """``"404 Not Found"`` for a status code, with the registered reason phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def error_response(status_code, detail="", reason=None, keep_alive=False, head=False,
                   server=SERVER_LINE):
    """A complete short text/plain error response; closes the connection by default.

    ``head``: answering HEAD, so the same headers but no body (RFC 9110 §9.3.2).
    ``server``: the preformatted Server field (see ``server_line``).
    """
    status = f"{status_code} {reason}" if reason else status_line(status_code)
    body = (status + ("\n" + detail if detail else "") + "\n").encode("latin-1", "replace")
    extra = (f"Date: {http_date()}\r\n{server}"
             f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
             f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n")
    return format_head(status, (), extra) + (b"" if head else body)


CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
