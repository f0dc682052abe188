"""Socket-level HTTP/1.1 behaviour of a real server: framing errors, limits, keep-alive,
pipelining, 100-continue, response framing. Raw sockets, so every byte is checked."""

import socket
import threading
import time

import pytest
from conftest import read_head, read_response, recv_until_closed


def hello(environ, start_response):
    body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def echo(environ, start_response):
    """Echo the request body back, reading it in pieces as a real app might."""
    stream = environ["wsgi.input"]
    parts = []
    while True:
        data = stream.read(7)
        if not data:
            break
        parts.append(data)
    body = b"".join(parts)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def ignores_body(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def exchange(srv, data, timeout=5.0):
    """Send raw bytes, return everything received until the server closes."""
    with srv.connect(timeout) as sock:
        sock.sendall(data)
        return recv_until_closed(sock, timeout)


def status_of(raw):
    return int(raw.split(b" ", 2)[1])


# -- framing errors close the connection, and nothing after them is parsed ------------------

@pytest.mark.parametrize("request_bytes, status", [
    # RFC 9112 §6.3: both Content-Length and Transfer-Encoding -> 400.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400),
    # RFC 9112 §6.1: an unknown transfer coding -> 501.
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    # RFC 9112 §6.3: chunked not last -> 400.
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 -> 400.
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # RFC 9110 §8.6: differing Content-Length values -> 400.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400),
    # RFC 9112 §3.2: Host is required in HTTP/1.1, once.
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # RFC 9112 §5.1 / §5.2: whitespace before the colon, obs-fold.
    (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    # RFC 9110 §5.5: NUL and bare CR in a value.
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # RFC 9110 §6.2 / §15.6.6: only HTTP/1.x.
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
    # RFC 9110 §10.1.1: unknown expectation -> 417.
    (b"POST / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\na", 417),
    # Malformed chunked framing found while the app reads the body.
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
     400),
])
def test_bad_framing_is_rejected_and_the_connection_closed(serve, request_bytes, status):
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    with serve(echo) as srv:
        raw = exchange(srv, request_bytes + smuggled)
    assert status_of(raw) == status, raw
    assert raw.count(b"\r\nServer: greenserve\r\n") == 1, f"bytes after the error were parsed: {raw!r}"
    assert b"Connection: close" in raw


@pytest.mark.parametrize("request_bytes, status", [
    (b"HEAD / HTTP/1.1\r\n\r\n", 400),
    (b"HEAD /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
])
def test_an_error_answer_to_a_head_that_failed_to_parse_has_no_content(serve, request_bytes,
                                                                        status):
    # RFC 9110 §9.3.2: no content in a response to HEAD, whatever its status.
    with serve(echo, limit_request_line=100) as srv:
        raw = exchange(srv, request_bytes)
    assert status_of(raw) == status
    assert raw.endswith(b"\r\n\r\n") and raw.count(b"\r\n\r\n") == 1, raw


def test_http2_preface_gets_505_not_a_hang(serve):
    # Answered at once, not when the (long) header timer would end a hung read.
    with serve(hello, header_timeout=60) as srv:
        start = time.monotonic()
        raw = exchange(srv, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", timeout=60)
    assert status_of(raw) == 505
    assert time.monotonic() - start < 20


def test_bare_lf_request_is_rejected_promptly(serve):
    with serve(hello, header_timeout=60) as srv:
        start = time.monotonic()
        raw = exchange(srv, b"GET / HTTP/1.1\nHost: x\n\n", timeout=60)
    assert status_of(raw) == 400
    assert time.monotonic() - start < 20


# -- limits ----------------------------------------------------------------------------------

def test_long_request_line_gets_414(serve):
    with serve(hello, limit_request_line=100) as srv:
        raw = exchange(srv, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(raw) == 414


def test_long_request_line_gets_414_before_it_ends(serve):
    with serve(hello, limit_request_line=100) as srv:
        with srv.connect() as sock:
            sock.sendall(b"GET /" + b"a" * 300)  # no CRLF yet: rejected without waiting
            raw = recv_until_closed(sock, 3)
    assert status_of(raw) == 414


def test_long_header_line_gets_431(serve):
    with serve(hello, limit_request_field_size=100) as srv:
        raw = exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200 + b"\r\n\r\n")
    assert status_of(raw) == 431


def test_too_many_headers_gets_431(serve):
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(12))
    with serve(hello, limit_request_fields=10) as srv:
        raw = exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status_of(raw) == 431


def test_header_block_over_limit_gets_431(serve):
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(30))
    with serve(hello, limit_request_head=1000) as srv:
        raw = exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert status_of(raw) == 431


def test_body_over_max_body_size_gets_413_without_reading_it(serve):
    calls = []

    def app(environ, start_response):
        calls.append(1)
        return hello(environ, start_response)

    with serve(app, max_body_size=10) as srv:
        with srv.connect() as sock:
            # Only the head is sent: a 413 must come without waiting for the body.
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            raw = recv_until_closed(sock, 3)
    assert status_of(raw) == 413
    assert not calls


def test_chunked_body_over_max_body_size_gets_413(serve):
    with serve(echo, max_body_size=10) as srv:
        raw = exchange(srv, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    assert status_of(raw) == 413


# -- keep-alive, close, pipelining ------------------------------------------------------------

def test_http11_keeps_alive_by_default(serve):
    with serve(hello) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            code, headers, body, _ = read_response(reader)
            assert (code, body) == (200, b"hello")
            assert "connection" not in headers


def test_http11_connection_close_is_honoured(serve):
    with serve(hello) as srv:
        raw = exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200") == 1
    assert b"Connection: close" in raw


def test_http10_closes_by_default(serve):
    with serve(hello) as srv:
        raw = exchange(srv, b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert raw.count(b"200 OK") == 1
    assert raw.endswith(b"hello")


def test_http10_keep_alive_on_request(serve):
    with serve(hello) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            code, headers, body, _ = read_response(reader)
            assert code == 200 and headers["connection"] == "keep-alive"


def test_pipelined_requests_are_answered_in_order(serve):
    def app(environ, start_response):
        body = environ["PATH_INFO"].encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
                     + b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     + b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = sock.makefile("rb")
        bodies = [read_response(reader)[2] for _ in range(7)]
    assert bodies == [b"/0", b"/1", b"/2", b"/3", b"/4", b"/post", b"/last"]


def test_pipelined_requests_split_at_every_offset(serve):
    data = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: t\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nwxyz")
    with serve(echo) as srv:
        for offset in range(1, len(data), 7):
            with srv.connect() as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(data[:offset])
                time.sleep(0.002)
                sock.sendall(data[offset:])
                reader = sock.makefile("rb")
                assert read_response(reader)[2] == b"abcde"
                assert read_response(reader)[2] == b"wxyz"


def test_unread_small_body_is_drained_and_connection_kept(serve):
    with serve(ignores_body) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
                     b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[2] == b"ok"
        code, headers, body, _ = read_response(reader)
        assert (code, body) == (200, b"ok")


def test_unread_huge_body_closes_the_connection(serve):
    with serve(ignores_body) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        sock.sendall(b"x" * 65536)
        code, headers, body, _ = read_response(sock)
        assert code == 200
        # The server drains at most its limit, then closes instead of reading 100 MB.
        payload = b"x" * 65536
        deadline = time.monotonic() + 10
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                sock.sendall(payload)
        assert time.monotonic() < deadline


# -- Expect: 100-continue ------------------------------------------------------------------

@pytest.mark.parametrize("expect", [
    b"Expect: 100-continue\r\n",
    # RFC 9110 §10.1.1: Expect = #expectation; a list split over two lines (RFC 9110 §5.3)
    # holds no member other than 100-continue, so it draws no 417.
    b"Expect: 100-continue\r\nExpect: 100-continue\r\n",
], ids=["once", "repeated"])
def test_100_continue_is_sent_when_the_app_reads(serve, expect):
    with serve(echo) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n" + expect + b"Content-Length: 5\r\n\r\n")
        reader = sock.makefile("rb")
        assert reader.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert reader.readline() == b"\r\n"
        sock.sendall(b"hello")
        code, headers, body, _ = read_response(reader)
        assert (code, body) == (200, b"hello")


def test_100_continue_is_not_sent_when_the_app_answers_without_reading(serve):
    with serve(ignores_body) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 5\r\n\r\n")
        raw = recv_until_closed(sock, 3)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw
    assert b"100 Continue" not in raw
    assert b"Connection: close" in raw


def test_100_continue_precedes_a_101_switching_protocols(serve):
    # RFC 9110 §7.8: a server that receives both Upgrade and "Expect: 100-continue" MUST send
    # a 100 (Continue) response before sending a 101 (Switching Protocols) response.
    def switches(environ, start_response):
        start_response("101 Switching Protocols", [("Upgrade", "echo"),
                                                   ("Connection", "Upgrade")])
        environ["greenserve.socket"].sendall(b"switched")
        return []

    with serve(switches, validate=False) as srv:
        raw = exchange(srv, b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                            b"Upgrade: echo\r\nExpect: 100-continue\r\n"
                            b"Content-Length: 5\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 "), raw
    assert raw.endswith(b"\r\n\r\nswitched")


# -- response framing -----------------------------------------------------------------------

def framing_app(environ, start_response):
    """One response shape per path, for the framing families below."""
    path = environ["PATH_INFO"]
    if path == "/empty-status":
        start_response(environ["QUERY_STRING"].replace("+", " "), [("Content-Type", "text/plain")])
        return [b"never sent"]
    if path == "/duplicate-length":
        start_response("200 OK", [("Content-Length", "2"), ("Content-Length", " 2")])
        return [b"ok"]
    if path == "/too-long":
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abc", b"defgh"]
    if path == "/too-short":
        start_response("200 OK", [("Content-Length", "10")])
        return [b"abc"]
    return hello(environ, start_response)


def test_response_framing_keeps_a_pipelined_connection_in_sync(serve):
    """The response table (test_response.py) end to end: every bodiless or corrected
    response is followed at once by the next one on the same connection."""
    paths = ["/", "/empty-status?204+No+Content", "/empty-status?205+Reset+Content",
             "/empty-status?304+Not+Modified", "/duplicate-length", "/too-long", "/"]
    with serve(framing_app, validate=False) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n" + b"".join(
            b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p.encode() for p in paths)
            + b"GET /too-short HTTP/1.1\r\nHost: x\r\n\r\n")
        code, headers, raw = read_head(reader)  # HEAD: the GET's length, no body
        assert code == 200 and headers["content-length"] == "5"
        assert b"\r\nServer: greenserve\r\n" in raw and b" GMT\r\n" in raw
        answers = [read_response(reader) for _ in paths]
        assert [(a[0], a[2]) for a in answers] == [
            (200, b"hello"), (204, b""), (205, b""), (304, b""), (200, b"ok"), (200, b"abc"),
            (200, b"hello")]
        assert "content-length" not in answers[1][1]
        assert answers[2][1]["content-length"] == "0"
        assert answers[4][3].count(b"Content-Length") == 1
        # A body shorter than its Content-Length can only be signalled by closing.
        code, headers, _ = read_head(reader)
        assert code == 200 and headers["content-length"] == "10"
        assert reader.read() == b"abc"


@pytest.mark.parametrize("method, headers", [
    (b"HEAD", []),                            # RFC 9110 §9.3.2: no content at all
    (b"GET", [("Content-Length", "5")]),      # the length is met by the first piece
])
def test_iteration_stops_once_the_response_can_carry_nothing_more(serve, method, headers):
    """PEP 3333: the server stops iterating once enough has been sent. An endless
    generator that never waits must be closed after the piece that completed the response,
    and the connection goes on serving requests."""
    closed = threading.Event()

    def endless(environ, start_response):
        if environ["PATH_INFO"] == "/next":
            return hello(environ, start_response)
        start_response("200 OK", [("Content-Type", "text/plain")] + headers)

        def pieces():
            try:
                while True:
                    yield b"hello"
            finally:
                closed.set()
        return pieces()

    with serve(endless) as srv, srv.connect(timeout=20) as sock:
        reader = sock.makefile("rb")
        sock.sendall(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
        if method == b"HEAD":
            code, _, _ = read_head(reader, timeout=20)
        else:
            code, _, body, _ = read_response(reader, timeout=20)
            assert body == b"hello"
        assert code == 200
        assert closed.wait(10), "the generator was still being pulled"
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader, timeout=20)[2] == b"hello"


@pytest.mark.parametrize("options, query", [({"keep_alive": 0}, b""), ({}, b"?close")])
def test_a_server_side_close_survives_the_clients_late_bytes(serve, options, query):
    """RFC 9112 §9.6: a server closing a connection its client expected to keep closes in
    stages. Here the client sends its next request while a large response, which the server
    ends with Connection: close of its own accord, is on its way; a plain close() would
    answer those bytes with a reset that destroys what the client has not read yet."""
    with serve(sized_app, validate=False, **options) as srv, srv.connect(timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /3000000%s HTTP/1.1\r\nHost: x\r\n\r\n" % query)
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /5 HTTP/1.1\r\nHost: x\r\n\r\n")  # late: never answered
        rest = recv_until_closed(sock, timeout=20)
    head, _, body = (first + rest).partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert body == sized_body(3000000)


def sized_body(size):
    return bytes(range(256)) * (size // 256) + b"z" * (size % 256)


def sized_app(environ, start_response):
    """GET /SIZE: a body of SIZE bytes in one piece; ?own adds the app's Content-Length,
    ?close the app's Connection: close."""
    size = int(environ["PATH_INFO"][1:])
    headers = [("Content-Type", "application/octet-stream")]
    if environ["QUERY_STRING"] == "own":
        headers.append(("Content-Length", str(size)))
    elif environ["QUERY_STRING"] == "close":
        headers.append(("Connection", "close"))
    start_response("200 OK", headers)
    return [sized_body(size)]


def test_large_bodies_sent_in_place_survive_a_full_socket_buffer(serve):
    """A large single-piece body leaves with its head from where it lies (one sendmsg).
    Pipelined requests for more than the kernel buffers hold make those sends stop
    part-way, and the rest must follow in order, byte for byte."""
    sizes = [1 << 20] * 6 + [16383, 16384, 16385, 200000, 5, 70000, 0, 1 << 20, 40000, 16384]
    # Unwrapped: wsgiref.validate's iterator would hide the one-piece list this is about.
    with serve(sized_app, validate=False) as srv, srv.connect(timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        requests = b"".join(b"GET /%d%s HTTP/1.1\r\nHost: x\r\n\r\n"
                            % (size, b"?own" if i % 2 else b"") for i, size in enumerate(sizes))
        sock.sendall(requests + b"HEAD /300000 HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = sock.makefile("rb")
        for size in sizes:
            code, headers, body, _ = read_response(reader, timeout=30)
            assert code == 200 and headers["content-length"] == str(size)
            assert body == sized_body(size)
        code, headers, _ = read_head(reader, timeout=30)
        assert code == 200 and headers["content-length"] == "300000"
        sock.sendall(b"GET /5 HTTP/1.1\r\nHost: x\r\n\r\n")  # still in sync
        assert read_response(reader, timeout=30)[2] == sized_body(5)


def test_unknown_length_is_chunked_on_http11_and_close_delimited_on_http10(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"one", b"", b"two"])

    with serve(app) as srv:
        raw11 = exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw10 = exchange(srv, b"GET / HTTP/1.0\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in raw11
    assert raw11.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n")
    assert b"Transfer-Encoding" not in raw10 and b"Content-Length" not in raw10
    assert raw10.endswith(b"\r\n\r\nonetwo")


# -- request bodies -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 7, 1000, 300000])
def test_content_length_body_round_trip(serve, size):
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    with serve(echo) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size + payload)
        code, headers, body, _ = read_response(sock)
    assert code == 200 and body == payload


def test_chunked_body_round_trip_with_extensions_and_trailers(serve):
    with serve(echo) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;name=value\r\nhello\r\n1;a;b=\"q\"\r\n \r\nA\r\n0123456789\r\n"
                     b"0\r\nX-Checksum: 1\r\n\r\n")
        code, headers, body, _ = read_response(sock)
    assert body == b"hello 0123456789"


def test_client_closing_mid_body_does_not_hang(serve):
    with serve(echo) as srv:
        with srv.connect() as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            sock.shutdown(socket.SHUT_WR)
            raw = recv_until_closed(sock, 20)
        # The body can never be complete: nothing is answered, and the connection closes.
        assert raw == b""
        # The server is still fine.
        assert status_of(exchange(srv, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close"
                                       b"\r\n\r\n")) == 200


def read_all(stream):
    return b"".join(iter(lambda: stream.read(8192), b""))


def catches_everything(environ, start_response):
    """Read the body as a framework does: any error while handling the request becomes the
    app's own 500 (Flask, Django and Bottle all answer so)."""
    try:
        body = read_all(environ["wsgi.input"])
    except Exception:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"the app failed"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def catches_with_exc_info(environ, start_response):
    """Bottle's way: the 500 is started with exc_info."""
    try:
        read_all(environ["wsgi.input"])
    except Exception:
        import sys
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                       sys.exc_info())
        return [b"the app failed"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("app", [catches_everything, catches_with_exc_info])
@pytest.mark.parametrize("body, status", [
    # Over --max-body-size: 413, as for a body whose Content-Length says so.
    (b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", 413),
    # A malformed chunk size: 400.
    (b"zz\r\n12345678\r\n0\r\n\r\n", 400),
])
def test_chunked_body_error_is_answered_as_such_when_the_app_turns_it_into_a_500(
        serve, app, body, status):
    with serve(app, max_body_size=10) as srv:
        raw = exchange(srv, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            + body)
    assert status_of(raw) == status, raw
    assert b"the app failed" not in raw
    assert b"Connection: close" in raw


def test_chunked_body_error_leaves_an_app_s_own_4xx_alone(serve):
    def answers_itself(environ, start_response):
        try:
            read_all(environ["wsgi.input"])
        except Exception:
            start_response("422 Unprocessable Content", [("Content-Type", "text/plain")])
            return [b"upload refused by the app"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with serve(answers_itself, max_body_size=10) as srv:
        raw = exchange(srv, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
    assert status_of(raw) == 422
    assert b"upload refused by the app" in raw
