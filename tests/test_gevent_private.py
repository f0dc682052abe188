"""The private gevent attributes greenserve uses (greenserve/gevent_private.py) still exist
and behave as greenserve expects. If a gevent release moves them, this fails first and
loudly: fix gevent_private.py, nothing else."""

import _socket
import os
import socket as stdlib_socket
import ssl
import threading

import gevent
import gevent.event
import pytest
import trustme
from gevent import socket as gsocket

from greenserve.gevent_private import (ConnectionSocket, accept_raw, park_watcher, raw_socket,
                                       read_nowait, readable_waiter)


def test_gevent_version_is_one_this_was_checked_with():
    major = int(gevent.__version__.split(".")[0])
    assert major >= 23, f"gevent {gevent.__version__}: older than any release checked"


def test_raw_socket_is_the_non_blocking_socket_underneath():
    a, b = gsocket.socketpair()
    with a, b:
        raw = raw_socket(a)
        assert isinstance(raw, _socket.socket) and raw.fileno() == a.fileno()
        assert raw.gettimeout() == 0.0  # a single syscall that never waits
        with pytest.raises(BlockingIOError):
            raw.recv(10)
        assert raw.send(b"x") == 1 and b.recv(10) == b"x"


def test_readable_waiter_parks_until_data_arrives():
    a, b = gsocket.socketpair()
    with a, b:
        wait, event = readable_waiter(a)
        assert wait is not None and event is not None
        gevent.spawn_later(0.05, b.sendall, b"ping")
        wait(event)  # returns only once readable
        assert raw_socket(a).recv(10) == b"ping"


def test_park_watcher_calls_back_from_the_hub_when_readable_and_stops_cleanly():
    a, b = gsocket.socketpair()
    with a, b:
        watcher = park_watcher(a)
        called = gevent.event.Event()
        watcher.start(called.set)  # a plain callback, no greenlet waiting
        assert not called.wait(0.05)
        b.sendall(b"x")
        assert called.wait(5)
        watcher.stop()
        # Stopped, it does not get in the way of a greenlet reading or of closing.
        wait, event = readable_waiter(a)
        wait(event)
        assert raw_socket(a).recv(10) == b"x"
    assert a.fileno() == -1


def test_accept_raw_returns_a_descriptor_and_an_address():
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    client = stdlib_socket.create_connection(listener.getsockname())
    try:
        for _ in range(100):
            try:
                fd, address = accept_raw(listener)()
                break
            except BlockingIOError:
                gevent.sleep(0.01)
        assert isinstance(fd, int) and address[0] == "127.0.0.1"
        stdlib_socket.socket(fileno=fd).close()
    finally:
        client.close()
        listener.close()


def test_read_nowait_plain():
    a, b = gsocket.socketpair()
    with a:
        assert read_nowait(a, 100) is None
        b.sendall(b"data")
        assert read_nowait(a, 100) == b"data"
        b.close()
        assert read_nowait(a, 100) == b""


def test_read_nowait_through_tls():
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    a, b = stdlib_socket.socketpair()
    client = {}
    thread = threading.Thread(target=lambda: client.setdefault(
        "tls", client_context.wrap_socket(b, server_hostname="localhost")))
    thread.start()
    from gevent.ssl import SSLContext
    gevent_context = SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(gevent_context)
    server = gevent_context.wrap_socket(gsocket.socket(fileno=a.detach()), server_side=True)
    thread.join(10)
    tls = client["tls"]
    try:
        assert hasattr(server, "_sslobj"), "gevent's SSL socket no longer keeps _sslobj"
        assert read_nowait(server, 100) is None
        tls.sendall(b"secret")
        for _ in range(100):
            data = read_nowait(server, 100)
            if data is not None:
                break
            gevent.sleep(0.01)
        assert data == b"secret"  # decrypted, not ciphertext
    finally:
        tls.close()
        server.close()


def _accepted_pair():
    """(ConnectionSocket of an accepted connection, the client's gevent socket)."""
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = gsocket.create_connection(listener.getsockname())
    fd, _ = accept_raw(listener)()
    listener.close()
    return ConnectionSocket(listener.family, listener.type, listener.proto, fd), client


def test_connection_socket_is_a_gevent_socket_and_closes_its_descriptor():
    server, client = _accepted_pair()
    with client:
        assert isinstance(server, gsocket.socket)
        assert raw_socket(server).gettimeout() == 0.0
        gevent.spawn_later(0.05, client.sendall, b"ping")
        assert server.recv(10) == b"ping"  # waits cooperatively, as gevent's does
        server.sendall(b"pong")
        assert client.recv(10) == b"pong"
        fd = server.fileno()
        server.close()
        assert server.fileno() == -1
        with pytest.raises(OSError):
            os.fstat(fd)  # the descriptor itself is closed, not only the object
        with pytest.raises(OSError):
            server.recv(10)
        assert client.recv(10) == b""  # the peer sees the end of the stream
        server.close()  # twice is harmless


def test_connection_socket_closed_under_a_waiting_greenlet_wakes_it():
    server, client = _accepted_pair()
    with client:
        waiter = gevent.spawn(server.recv, 10)
        gevent.sleep(0)  # the waiter now waits on the socket's read watcher
        server.close()
        waiter.join(5)
        assert waiter.dead and isinstance(waiter.exception, OSError)


def test_connection_socket_stays_open_while_a_file_made_from_it_is_open():
    server, client = _accepted_pair()
    with client:
        reader = server.makefile("rb")
        server.close()
        client.sendall(b"line\n")
        assert reader.readline() == b"line\n"
        reader.close()
        assert server.fileno() == -1


def test_connection_socket_makes_its_write_watcher_when_a_send_must_wait():
    # Most connections never fill the kernel's buffer, so the write watcher is made on the
    # first send that must wait for room; that send still completes, and the close after it
    # closes the descriptor.
    server, client = _accepted_pair()
    with client:
        payload = os.urandom(1 << 16) * 128  # 8 MiB: far more than the socket buffers hold
        sender = gevent.spawn(server.sendall, payload)
        received = bytearray()
        while len(received) < len(payload):
            data = client.recv(1 << 16)
            assert data, "the stream ended early"
            received += data
        sender.join(10)
        assert sender.successful(), sender.exception
        assert bytes(received) == payload
        fd = server.fileno()
        server.close()
        with pytest.raises(OSError):
            os.fstat(fd)
        assert client.recv(10) == b""
