"""Long polling and streaming through a real server: the disconnect signal, live chunks,
back-pressure."""

import socket
import threading
import time

import gevent
from gevent.event import Event
from conftest import read_response

WAIT = 20  # seconds: the bound on every wait for the server


def announce_when_parked(parked):
    """Set the threading.Event ``parked`` as soon as the calling greenlet blocks.

    The spawned greenlet runs only when the current one yields to the hub, i.e. once the app
    is parked in the wait that follows this call: an event the test thread can wait for.
    """
    gevent.spawn(parked.set)


def settled(read, quiet=0.3, timeout=WAIT):
    """``read()`` once it has stopped changing for ``quiet`` seconds (a producer that stalls)."""
    deadline = time.monotonic() + timeout
    value, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"still changing after {timeout} s: {value}"
        time.sleep(0.02)
        if read() != value:
            value, since = read(), time.monotonic()
    return value


def test_pipelined_request_does_not_count_as_disconnect(serve):
    parked = threading.Event()

    def app(environ, start_response):
        fired = None
        if environ["PATH_INFO"] == "/poll":
            announce_when_parked(parked)
            # Long enough for the pipelined request to arrive during the wait (milliseconds).
            fired = environ["greenserve.disconnected"].wait(1.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%s %s" % (environ["PATH_INFO"].encode(), str(fired).encode())]

    with serve(app) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        assert parked.wait(WAIT), "the app did not start waiting"
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[2] == b"/poll False"
        assert read_response(reader)[2] == b"/next None"


def test_streamed_chunks_arrive_as_they_are_yielded(serve):
    release = [threading.Event() for _ in range(3)]

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def events():
            for index, gate in enumerate(release):
                while not gate.is_set():  # the test thread opens each gate in turn
                    gevent.sleep(0.01)
                yield b"data: %d\n\n" % index
        return events()

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = sock.makefile("rb")
        for index, gate in enumerate(release):
            gate.set()
            if index == 0:
                # PEP 3333: the head leaves with the first non-empty chunk, not before.
                while reader.readline() != b"\r\n":
                    pass
            size = int(reader.readline(), 16)
            assert reader.read(size) == b"data: %d\n\n" % index
            assert reader.read(2) == b"\r\n"


def test_slow_reader_back_pressures_the_app(serve):
    produced = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():
            for _ in range(1000):
                produced.append(1)
                yield b"z" * 65536
        return body()

    with serve(app) as srv, srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # The app stalls once the socket buffers are full, or runs to 1000 without them.
        stalled = settled(lambda: len(produced))
        # 64 MB were available; only what fits in the socket buffers may have been produced.
        assert stalled < 100
        # And it was back-pressure, not a stuck app: reading lets it go on.
        sock.settimeout(WAIT)
        taken = 0
        while taken < 4 << 20:
            data = sock.recv(65536)
            assert data, "the server closed the stream"
            taken += len(data)
        assert settled(lambda: len(produced)) > stalled


def test_repeated_gevent_wait_leaves_no_callbacks_behind(serve):
    counts = []

    def app(environ, start_response):
        gone = environ["greenserve.disconnected"]
        tick = Event()
        for _ in range(200):  # an SSE-style loop: wait for a tick or the client leaving
            gevent.wait([tick, gone], count=1, timeout=0.001)
        counts.append(gone._event.linkcount())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[2] == b"ok"
    assert counts == [0]
