"""Response framing (greenserve/protocol/response.py), bytes only, with the clock pinned.

One table crosses method x version/keep-alive x status x the app's Content-Length x body
shape, and compares every cell byte for byte with a reference written here straight from
RFC 9110/9112 (not from the module). A few literal responses pin the exact format.
"""

import itertools
import sys

import pytest

from greenserve.protocol import response as response_module
from greenserve.protocol.response import (CHUNKED, DRAIN_LIMIT, FIXED, NO_BODY, UNTIL_CLOSE,
                                          Response, unread_body_forces_close)
from greenserve.wsgi import check_headers, check_status, forget_memos

DATE = "Mon, 30 Nov 2026 08:00:00 GMT"

# "cold": the bridge's memos of checked statuses and header fields are empty when make()
# checks them; "warm": make() has them checked once before, as on a server's next response.
MEMO = "cold"


@pytest.fixture(autouse=True)
def pinned_clock(monkeypatch):
    monkeypatch.setattr(response_module, "date_line", lambda: f"Date: {DATE}\r\n")


@pytest.fixture(autouse=True, params=["cold", "warm"])
def memo(request, monkeypatch):
    """Every test twice: with the status and headers checked cold, then warm."""
    monkeypatch.setattr(sys.modules[__name__], "MEMO", request.param)
    forget_memos()
    return request.param


def make(status="200 OK", headers=None, method="GET", version=1, keep_alive=True):
    headers = [("Content-Type", "text/plain")] if headers is None else headers
    if MEMO == "warm":
        check_status(status)
        check_headers(headers)
    else:
        forget_memos()
    return Response(status, check_status(status), headers, check_headers(headers),
                    method == "HEAD", version, keep_alive)


# -- literal responses ---------------------------------------------------------------------

def test_one_piece_get_http11():
    r = make()
    assert r.whole(b"hello") == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
        b"Date: " + DATE.encode() + b"\r\nServer: greenserve\r\n\r\nhello")
    assert r.keep_alive and r.body_sent == 5


def test_streamed_get_http11_is_chunked():
    r = make()
    wire = r.head() + r.body(b"ab") + r.body(b"cde") + r.end()
    assert wire == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        b"Date: " + DATE.encode() + b"\r\nServer: greenserve\r\n\r\n"
        b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
    assert r.keep_alive and r.body_sent == 5


def test_streamed_http10_keep_alive_ends_with_the_connection():
    r = make(version=0)
    wire = r.head() + r.body(b"ab") + r.end()
    assert wire == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: " + DATE.encode()
        + b"\r\nServer: greenserve\r\nConnection: close\r\n\r\nab")
    assert not r.keep_alive


def test_http10_keep_alive_is_announced():
    r = make(version=0)
    assert b"\r\nConnection: keep-alive\r\n" in r.whole(b"x")
    assert r.keep_alive


def test_app_date_and_server_are_kept_and_not_repeated():
    r = make(headers=[("Date", "x"), ("Server", "mine")])
    assert r.whole(b"") == (b"HTTP/1.1 200 OK\r\nDate: x\r\nServer: mine\r\n"
                            b"Content-Length: 0\r\n\r\n")


def test_app_connection_close_is_honoured_once():
    r = make(headers=[("Connection", "close")])
    head = r.whole(b"x")
    assert head.count(b"Connection") == 1 and b"Connection: close\r\n" in head
    assert not r.keep_alive


def test_close_requested_by_the_connection():
    r = make()
    assert b"Connection: close\r\n" in r.whole(b"x", close=True)
    assert not r.keep_alive


def test_head_response_keeps_the_get_length_but_no_body():
    r = make(method="HEAD")
    assert r.whole(b"hello").endswith(b"Content-Length: 5\r\nDate: " + DATE.encode()
                                      + b"\r\nServer: greenserve\r\n\r\n")
    assert r.body_sent == 0 and r.framing == NO_BODY


def test_empty_head_response_claims_no_length():
    r = make(method="HEAD")
    assert b"Content-Length" not in r.whole(b"")


def test_excess_is_dropped_and_counted_and_short_is_reported():
    r = make(headers=[("Content-Length", "3")])
    assert r.head().endswith(b"\r\n\r\n")
    assert r.body(b"abcdef") == b"abc"
    assert r.body(b"gh") == b""
    assert r.end() == b"" and r.excess == 5 and r.short == 0 and r.keep_alive
    r = make(headers=[("Content-Length", "10")])
    r.head()
    r.body(b"abc")
    assert r.end() == b"" and r.short == 7 and not r.keep_alive


def test_sendfile_accounting():
    r = make()
    head = r.head(100)
    assert b"Content-Length: 100\r\n" in head and r.framing == FIXED
    r.sent_directly(60)
    r.sent_directly(40)
    assert r.end() == b"" and r.body_sent == 100 and r.keep_alive


def test_1xx_is_refused_by_the_bridge():
    with pytest.raises(ValueError, match="1xx"):
        check_status("101 Switching Protocols")


@pytest.mark.parametrize("unread, continue_pending, closes", [
    (0, False, False), (0, True, False), (10, False, False), (10, True, True),
    (None, False, True), (DRAIN_LIMIT, False, False), (DRAIN_LIMIT + 1, False, True),
])
def test_unread_request_body_rule(unread, continue_pending, closes):
    assert unread_body_forces_close(unread, continue_pending) is closes


# -- the table -------------------------------------------------------------------------------

METHODS = ["GET", "HEAD"]
CONNECTIONS = [(1, True), (1, False), (0, True), (0, False)]  # (HTTP/1.x minor, keep-alive)
STATUSES = ["200 OK", "204 No Content", "205 Reset Content", "304 Not Modified",
            "500 Internal Server Error"]
LENGTHS = ["absent", "exact", "padded", "duplicated", "short", "long"]
SHAPES = {
    "one piece": [b"hello world"],
    "empty": [],
    "many": [b"hel", b"", b"lo w", b"orld"],
    "write": [b"hello", b" world"],  # write() calls: the same framing path as many pieces
    "file": [b"hello world"],
}


def app_headers(length, n):
    """The app's headers for one cell; None when the cell makes no sense."""
    base = [("Content-Type", "text/plain")]
    if length == "absent":
        return base
    if length == "exact":
        return base + [("Content-Length", str(n))]
    if length == "padded":
        return base + [("Content-Length", f" {n} ")]
    if length == "duplicated":
        return base + [("Content-Length", str(n)), ("content-length", str(n))]
    if length == "short":  # the body is shorter than promised
        return base + [("Content-Length", str(n + 3))]
    if n < 2:
        return None
    return base + [("Content-Length", str(n - 2))]  # "long": the body is longer


def reference(method, version, keep_alive, status, headers, pieces, shape):
    """What RFC 9110/9112 require on the wire, and whether the connection may persist."""
    code = int(status[:3])
    body = b"".join(pieces)
    declared = [int(v) for k, v in headers if k.lower() == "content-length"]
    app_length = declared[0] if declared else None
    # RFC 9110 §9.3.2, §15.3.5, §15.3.6, §15.4.5: no content for HEAD, 204, 205, 304.
    no_content = method == "HEAD" or code in (204, 205, 304)
    if app_length is not None:
        length = app_length
    elif shape in ("one piece", "empty", "file") and (body or method != "HEAD"):
        length = len(body)  # the server knows the whole body before sending the head
    else:
        length = None
    if no_content:
        framing = NO_BODY
    elif length is not None:
        framing = FIXED
    else:
        # RFC 9112 §6.1/§6.3: chunked needs HTTP/1.1; an HTTP/1.0 body ends with the close.
        framing = CHUNKED if version else UNTIL_CLOSE
    persists = keep_alive and framing != UNTIL_CLOSE

    lines = [f"HTTP/1.1 {status}"]
    rewrite = len(declared) > 1 or any(
        k.lower() == "content-length" and (v != v.strip() or v.strip() != str(int(v)))
        for k, v in headers)
    for name, value in headers:
        if name.lower() == "content-length" and (code in (204, 205) or rewrite):
            continue  # RFC 9110 §8.6: one plain value; none in a 204 (§15.3.5)
        lines.append(f"{name}: {value}")
    if app_length is not None:
        if rewrite and code not in (204, 205):
            lines.append(f"Content-Length: {app_length}")
    elif length is not None and (framing == FIXED or (method == "HEAD" and code not in (
            204, 205, 304))):
        lines.append(f"Content-Length: {length}")
    if code == 205:
        lines.append("Content-Length: 0")
    if framing == CHUNKED:
        lines.append("Transfer-Encoding: chunked")
    lines.append(f"Date: {DATE}")
    lines.append("Server: greenserve")
    if not persists:
        lines.append("Connection: close")
    elif not version:
        lines.append("Connection: keep-alive")
    wire = ("\r\n".join(lines) + "\r\n\r\n").encode()

    if framing == FIXED:
        wire += body[:length]
        if len(body) < length:
            persists = False  # RFC 9112 §8: an incomplete message ends with a close
    elif framing == CHUNKED:
        wire += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"
    elif framing == UNTIL_CLOSE:
        wire += body
    return wire, persists


def drive(response, pieces, shape):
    """Feed the pieces to ``response`` the way the connection does for each shape."""
    if shape in ("one piece", "empty"):
        return response.whole(b"".join(pieces))
    if shape == "file":
        size = len(pieces[0])
        wire = response.head(size)
        if response.framing != NO_BODY:
            count = min(size, response.remaining)
            wire += pieces[0][:count]  # what sendfile puts on the wire
            response.sent_directly(count)
        return wire + response.end()
    wire = b""
    for piece in pieces:
        if not piece:
            continue
        if response.started:
            wire += response.body(piece)
        else:
            wire += response.head() + response.body(piece)
    if not response.started:
        return wire + response.whole(b"")
    return wire + response.end()


CELLS = [cell for cell in itertools.product(METHODS, CONNECTIONS, STATUSES, LENGTHS, SHAPES)
         if app_headers(cell[3], len(b"".join(SHAPES[cell[4]]))) is not None]


@pytest.mark.parametrize("method, connection, status, length, shape", CELLS)
def test_table(method, connection, status, length, shape):
    version, keep_alive = connection
    pieces = SHAPES[shape]
    headers = app_headers(length, len(b"".join(pieces)))
    response = make(status, headers, method, version, keep_alive)
    wire = drive(response, pieces, shape)
    expected, persists = reference(method, version, keep_alive, status, headers, pieces, shape)
    assert wire == expected
    assert response.keep_alive is persists


def test_table_covers_what_it_claims():
    shapes = {cell[4] for cell in CELLS}
    assert shapes == set(SHAPES) and len(CELLS) > 900
