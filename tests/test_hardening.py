"""Attacks on a real server that used to hold it, each with the reproduction it was found with
(scaled down): slow request bodies, eviction at the connection cap, a slow but steady reader,
a --request-timeout firing inside close() or dodged with Upgrade headers, 5xx answers to bad
requests at log level INFO, the Server header setting."""

import logging
import socket
import threading
import time

import pytest
from conftest import read_head, read_response, recv_until_closed
from procs import wait_until


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def echo(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def get(srv, path="/", timeout=10):
    with srv.connect(timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        return read_response(sock, timeout)


class Dripper:
    """A client that sends a request head promising ``length`` body bytes, then one byte
    every ``interval`` seconds until stopped or cut off."""

    def __init__(self, srv, length=100000, interval=0.5, path="/"):
        self.sock = srv.connect(timeout=30)
        self.sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                          % (path.encode(), length))
        self.cut = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._drip, args=(interval,), daemon=True)
        self.thread.start()

    def _drip(self, interval):
        try:
            while not self.stop.wait(interval):
                self.sock.sendall(b"x")
        except OSError:
            self.cut.set()

    def close(self):
        self.stop.set()
        self.thread.join(10)
        self.sock.close()


# -- slow request bodies ----------------------------------------------------------------------

def test_a_body_slower_than_the_minimum_rate_gets_408(serve):
    # Each pause (0.2 s) is far under --body-timeout: only the rate can end this upload.
    with serve(echo, body_timeout=1, body_min_rate=100) as srv:
        drip = Dripper(srv, length=100000, interval=0.2)
        started = time.monotonic()
        try:
            drip.sock.settimeout(30)
            code, _, _ = read_head(drip.sock)
        finally:
            drip.close()
    assert code == 408
    # 1 s of grace plus a second per 100 bytes received (about 10 by then): well under 15 s.
    assert time.monotonic() - started < 15


def test_slow_bodies_at_the_cap_do_not_lock_out_new_clients(serve):
    # The reproduction, scaled down: every slot held by a body dripping one byte at
    # a time into an app that never reads bodies; a normal client must still get in.
    with serve(hello, max_connections=3, body_timeout=60, body_min_rate=0) as srv:
        drips = [Dripper(srv, interval=0.5) for _ in range(3)]
        try:
            started = time.monotonic()
            code, _, body, _ = get(srv, timeout=20)
            waited = time.monotonic() - started
        finally:
            for drip in drips:
                drip.close()
    assert (code, body) == (200, b"ok")
    assert waited < 15


def test_an_unread_body_is_drained_for_a_bounded_time(serve):
    # hello never reads the body; after its response the server discards the rest, but a
    # client dripping it must not keep the connection (and its slot) for ever.
    with serve(hello, body_timeout=60, body_min_rate=0) as srv:
        drip = Dripper(srv, interval=0.2)
        try:
            started = time.monotonic()
            code, _, body, _ = read_response(drip.sock, timeout=30)
            assert (code, body) == (200, b"ok")
            drip.sock.settimeout(30)
            assert recv_until_closed(drip.sock, 30) == b""
            assert time.monotonic() - started < 20  # the drain bound is 5 s
        finally:
            drip.close()


# -- eviction at the connection cap -----------------------------------------------------------

def test_taking_the_last_slot_evicts_nobody(serve):
    with serve(hello, max_connections=2, keep_alive=30) as srv:
        a = srv.connect(timeout=10)
        a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(a)[2] == b"ok"
        b = srv.connect(timeout=10)  # takes the last slot; nobody else is waiting
        b.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(b)[2] == b"ok"
        for sock in (a, b):  # both keep-alive connections still work
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock)[2] == b"ok"
        a.close()
        b.close()


def test_pooled_clients_at_the_cap_never_fail(serve):
    # 5 pooled keep-alive clients at a cap of 5, each making requests in turn: none may be
    # answered with EOF because another pooled client connected.
    with serve(hello, max_connections=5, keep_alive=30) as srv:
        pool = [srv.connect(timeout=10) for _ in range(5)]
        for _ in range(3):
            for sock in pool:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock)[2] == b"ok"
        for sock in pool:
            sock.close()


def test_a_connection_that_becomes_idle_later_makes_room(serve):
    release = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/busy":
            release.wait(30)
        return hello(environ, start_response)

    with serve(app, max_connections=2, keep_alive=60) as srv:
        busy = [srv.connect(timeout=30) for _ in range(2)]
        for sock in busy:
            sock.sendall(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        # Every slot is busy: a newcomer waits in the backlog...
        newcomer = srv.connect(timeout=30)
        newcomer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)  # (give a wrong eviction the chance to happen; nothing to wait for)
        # ...until the busy ones answer and sit idle on keep-alive: one of them must then be
        # closed for it, long before the 60 s keep-alive runs out.
        release.set()
        for sock in busy:
            assert read_response(sock, 10)[2] == b"ok"
        started = time.monotonic()
        assert read_response(newcomer, 20)[2] == b"ok"
        assert time.monotonic() - started < 10
        for sock in busy + [newcomer]:
            sock.close()


def test_a_silent_new_connection_is_not_idle_for_eviction(serve):
    # A connection that has not sent its first request is not an idle keep-alive one: the
    # kept-alive client is evicted before it only if it has stalled at least a second.
    with serve(hello, max_connections=2, keep_alive=60, header_timeout=60) as srv:
        kept = srv.connect(timeout=10)
        kept.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(kept)[2] == b"ok"
        silent = srv.connect(timeout=10)  # sends nothing
        assert get(srv)[2] == b"ok"       # the newcomer got a slot...
        assert kept.recv(10) == b""       # ...from the idle kept-alive connection
        silent.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(silent)[2] == b"ok"
        kept.close()
        silent.close()


# -- sending ------------------------------------------------------------------------------------

def test_a_slow_steady_reader_is_not_cut_off(serve):
    size = 4 << 20

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return [b"z" * size]  # one big piece: sent across many waits for the reader

    # The reader takes ~2 s to read it all, far more than --send-timeout (0.5 s) in total,
    # but it never pauses that long.
    with serve(app, send_timeout=0.5) as srv, srv.connect(timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = 0
        started = time.monotonic()
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += len(data)
            time.sleep(0.03)  # ~2 MB/s at most
        elapsed = time.monotonic() - started
    assert received > size and elapsed > 0.5


class SlowReader:
    """A client with a small receive window that asks for ``size`` bytes and then takes
    ``step`` bytes every ``interval`` seconds (in a thread), so the server's send waits on
    it."""

    def __init__(self, srv, size, step, interval):
        # The server's send buffer, inherited from its listener, kept small: on loopback
        # the kernel would otherwise grow it to megabytes and take the whole body at once.
        srv.server._listeners[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        self.sock = srv.connect(timeout=30)
        # Before the handshake, so the window it advertises stays small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.sendall(b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
        self.step, self.interval = step, interval
        self.received = 0
        self.ended = threading.Event()  # the server closed or reset the connection
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            # The client's own pace: a pause between reads, not a wait for the server.
            while not self.stop.wait(self.interval):
                data = self.sock.recv(self.step)
                if not data:
                    break
                self.received += len(data)
        except OSError:
            pass
        self.ended.set()

    def close(self):
        self.stop.set()
        self.thread.join(30)
        self.sock.close()


def sized(environ, start_response):
    size = int(environ["PATH_INFO"][1:])
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    return [b"z" * size]


def test_a_reader_slower_than_the_minimum_send_rate_is_dropped(serve):
    # The "slow read" attack: a window kept almost shut, opened a little now and then. That
    # is progress, so --send-timeout alone would never end it. Here about 20 KB/s, in steps
    # small enough to ack something in every 2 s window, against a minimum of 100 KB/s:
    # dropped at the first check, long before it has the 1 MiB it asked for (most of a
    # minute at its pace). The client still reads what its own buffer holds before it
    # sees the reset.
    size = 1 << 20
    with serve(sized, send_timeout=2, send_min_rate=100_000) as srv:
        reader = SlowReader(srv, size, step=2048, interval=0.1)
        try:
            wait_until(lambda: not srv.server.connections, 30, "the slow reader dropped")
        finally:
            reader.close()
    assert reader.received < size


def test_a_reader_above_the_minimum_send_rate_gets_the_whole_body(serve):
    # The same small windows, read a bit faster, at the default minimum (500 bytes/s): the
    # send waits on this reader for seconds, across --send-timeout windows, and is never
    # cut. (The kernel opens so small a window in fits and starts: about 4 KB/s get through.)
    size = 56 << 10
    with serve(sized, send_timeout=2) as srv:
        started = time.monotonic()
        reader = SlowReader(srv, size, step=2048, interval=0.1)
        try:
            assert reader.ended.wait(60)
        finally:
            reader.close()
        elapsed = time.monotonic() - started
    assert reader.received > size  # the head and the whole body
    assert elapsed > 2


# -- request deadline inside close() -----------------------------------------------------------

def test_request_timeout_inside_close_is_logged_and_the_request_accounted(serve, caplog):
    closed_started, lines = threading.Event(), []

    class Body:
        def __iter__(self):
            return iter([b"ok"])

        def close(self):
            closed_started.set()
            import gevent
            gevent.sleep(30)  # outlives --request-timeout

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return Body()

    def access_log(environ, status, sent, seconds, headers=()):
        lines.append((environ["PATH_INFO"], status))

    with serve(app, request_timeout=1) as srv:
        srv.server.access_log = access_log
        started = time.monotonic()
        code, _, body, _ = get(srv, "/slow-close")
        assert (code, body) == (200, b"ok")
        assert closed_started.wait(10)
        deadline = time.monotonic() + 20
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
    assert lines == [("/slow-close", 200)]
    assert time.monotonic() - started < 20
    assert any("close()" in r.getMessage() for r in caplog.records)


# -- request deadline and Upgrade ----------------------------------------------------------------

def test_upgrade_headers_do_not_lift_the_request_timeout_of_an_ordinary_app(serve):
    """Any client may add Upgrade: the deadline is only lifted once the app takes the
    socket, so an app that answers normally keeps its --request-timeout."""
    def slow(environ, start_response):
        import gevent
        gevent.sleep(30)  # outlives --request-timeout
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"late"]

    with serve(slow, request_timeout=1) as srv, srv.connect(timeout=20) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
        code, _, _, _ = read_response(sock, timeout=20)
    assert code == 503
    assert time.monotonic() - started < 15


def _wait_for_no_connections(srv, bound=20):
    deadline = time.monotonic() + bound
    while srv.server.connections and time.monotonic() < deadline:
        time.sleep(0.05)
    return not srv.server.connections


def test_upgrade_headers_on_a_stream_to_a_client_that_stops_reading_are_cut_off(serve):
    """The server's own response bytes are not the app taking the socket: a stream answered
    through start_response keeps its deadline, and the connection is cut when it passes."""
    def stream(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        piece = b"x" * 65536
        return (piece for _ in range(800))  # 50 MiB: far more than the socket buffers hold

    with serve(stream, request_timeout=1, send_timeout=60) as srv, \
            srv.connect(timeout=20) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")  # then the client stops reading
        assert _wait_for_no_connections(srv), "the stalled stream outlived its deadline"


def test_upgrade_headers_with_100_continue_and_a_stalled_body_keep_the_deadline(serve):
    """The server's 100 Continue is not the app's handshake either."""
    def reader(environ, start_response):
        environ["wsgi.input"].read(100)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    with serve(reader, request_timeout=1, body_timeout=60) as srv, \
            srv.connect(timeout=20) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 100\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"part of it")  # and no more
        code, _, _, _ = read_response(sock, timeout=20)
    assert code == 503


def test_an_app_writing_its_own_handshake_keeps_its_socket_past_the_request_timeout(serve):
    """An app that took the socket (here it writes its own 101 and echoes) is not cut off
    at --request-timeout: the socket is long-lived now."""
    def raw_echo(environ, start_response):
        sock = environ["greenserve.socket"]
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                     b"Connection: Upgrade\r\n\r\n")
        while True:
            data = sock.recv(100)
            if not data:
                return []
            sock.sendall(data)

    with serve(raw_echo, validate=False, request_timeout=0.5) as srv, \
            srv.connect(timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                     b"Upgrade: echo\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101 ")
        deadline = time.monotonic() + 1.5  # three times the request timeout
        while time.monotonic() < deadline:  # the passing time itself is what is tested
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
            time.sleep(0.1)


# -- what a client's mistakes cost the log -------------------------------------------------------

@pytest.mark.parametrize("request_bytes, status", [
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
])
def test_5xx_drawn_by_a_clients_request_alone_are_not_logged_at_info(serve, caplog,
                                                                     request_bytes, status):
    """A flood of such requests must not flood the log at its default level: they are the
    client's doing, like a 400. The server's own failures (500, 503) stay at INFO."""
    caplog.set_level(logging.DEBUG, logger="greenserve.error")
    with serve(hello) as srv, srv.connect() as sock:
        sock.sendall(request_bytes)
        assert recv_until_closed(sock).startswith(b"HTTP/1.1 %d " % status)
    rejections = [r for r in caplog.records if r.getMessage().startswith(f"{status} from ")]
    assert rejections and all(r.levelno == logging.DEBUG for r in rejections)


# -- Server header ------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, expected", [("edge", b"Server: edge\r\n"), ("", None)])
def test_server_header_setting(serve, setting, expected):
    with serve(hello, server_header=setting) as srv:
        raw = get(srv)[3]
        with srv.connect() as sock:
            sock.sendall(b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n")  # a 400 of our own
            error = recv_until_closed(sock)
    for head in (raw, error):
        if expected is None:
            assert b"Server:" not in head
        else:
            assert expected in head


# -- --buffer-chunked-bodies ---------------------------------------------------------------------

def test_buffered_chunked_body_reaches_the_app_with_a_length(serve):
    seen = []

    def app(environ, start_response):
        # A framework that still saw Transfer-Encoding would decode the chunks again.
        seen.append((environ.get("CONTENT_LENGTH"), environ.get("HTTP_TRANSFER_ENCODING")))
        return echo(environ, start_response)

    with serve(app, buffer_chunked_bodies=100) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert read_response(reader)[2] == b"hello world"
        # Over the limit: 413, and the app never runs.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"65\r\n" + b"x" * 101 + b"\r\n0\r\n\r\n")
        code, headers, _, _ = read_response(reader)
    assert (code, headers["connection"]) == (413, "close")
    assert seen == [("11", None)]
