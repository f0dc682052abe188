"""Long polling and streaming through a real server: the disconnect signal, live chunks,
back-pressure."""

import socket
import threading
import time

import gevent
from gevent.event import Event
from conftest import read_response


def test_pipelined_request_does_not_count_as_disconnect(serve):
    def app(environ, start_response):
        fired = None
        if environ["PATH_INFO"] == "/poll":
            fired = environ["greenserve.disconnected"].wait(0.5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%s %s" % (environ["PATH_INFO"].encode(), str(fired).encode())]

    with serve(app) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
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
        time.sleep(0.5)
        # 64 MB were available; only what fits in the socket buffers may have been produced.
        assert len(produced) < 100


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
