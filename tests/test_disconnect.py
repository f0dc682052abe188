"""``environ["greenserve.disconnected"]`` through a real server: a client that resets the
connection sets it at once; a client that only half-closes (RFC 9112 §9.6) still gets its
response and does not set it; a failed send sets it."""

import socket
import struct
import threading

import gevent
from gevent.event import Event

from conftest import read_response


def reset(sock):
    """Close with a TCP reset (SO_LINGER 0): the client is certainly gone."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_reset_sets_the_event_while_the_app_waits(serve):
    waiting, results, closed = threading.Event(), [], threading.Event()

    class Body:
        def __iter__(self):
            return iter([b"late"])

        def close(self):
            closed.set()

    def app(environ, start_response):
        gone = environ["greenserve.disconnected"]
        assert not gone.is_set()
        waiting.set()
        results.append(gone.wait(30))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    with serve(app) as srv:
        sock = srv.connect()
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        assert waiting.wait(10)
        reset(sock)
        assert closed.wait(10), "the iterable's close() did not run"
    assert results == [True]  # woken by the reset, long before its 30 s timeout


def test_reset_ends_a_gevent_wait(serve):
    outcome, waiting, done = [], threading.Event(), threading.Event()

    def app(environ, start_response):
        message = Event()  # nobody sets it: only the disconnect can end the wait
        waiting.set()
        ready = gevent.wait([message, environ["greenserve.disconnected"]], count=1, timeout=30)
        outcome.append(len(ready))
        done.set()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    with serve(app) as srv:
        sock = srv.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert waiting.wait(10)
        reset(sock)
        assert done.wait(10)
    assert outcome == [1]


def test_half_close_keeps_the_long_poll_and_gets_the_response(serve):
    seen = []

    def app(environ, start_response):
        gone = environ["greenserve.disconnected"]
        # The client half-closes while we wait: the wait must run its full course.
        fired = gone.wait(1.0)
        seen.append((fired, gone.half_closed))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"news"]

    with serve(app) as srv, srv.connect(timeout=10) as sock:
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        code, _, body, _ = read_response(sock, timeout=10)
    assert (code, body) == (200, b"news")
    assert seen == [(False, True)]


def test_a_failed_send_sets_the_event(serve):
    states = []
    first_sent, finished = threading.Event(), threading.Event()

    def app(environ, start_response):
        gone = environ["greenserve.disconnected"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        yield b"x"
        first_sent.set()
        try:
            for _ in range(10000):  # until the reset peer makes a send fail
                yield b"y" * 65536
        finally:
            states.append(gone.is_set())
            finished.set()

    with serve(app) as srv:
        sock = srv.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert first_sent.wait(10)
        reset(sock)
        assert finished.wait(10)
    assert states == [True]
