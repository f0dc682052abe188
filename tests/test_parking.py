"""Idle connections park: after PARK_AFTER seconds without a request, a plain-TCP connection
gives up its greenlet and waits on a read watcher, keeping its socket, parser and slot.

Real server, raw-socket clients. What a client must not notice: a parked connection answers
its next request (whole, split, pipelined), still times out, still counts against the cap
and gives way to a newcomer, and closes at once on a graceful stop.
"""

import socket
import time

import pytest

from conftest import read_response, recv_until_closed
from greenserve.connection import PARK_AFTER
from procs import wait_until

WAIT = 20 + 10 * PARK_AFTER
REQUEST = b"GET /n HTTP/1.1\r\nHost: x\r\n\r\n"


def app(environ, start_response):
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _census(server):
    """(parked connections, open connections, greenlets, held slots); None mid-change
    (the server's own thread may be changing the sets while we look)."""
    try:
        connections = list(server.connections)
        parked = sum(1 for connection in connections if connection.parked)
        return parked, len(connections), len(server.spawner.greenlets), server.spawner.held
    except RuntimeError:
        return None


def wait_parked(server, count):
    """Until ``count`` connections are parked and none has a greenlet left."""
    def parked():
        census = _census(server)
        return census is not None and census[0] == census[1] == census[3] == count \
            and census[2] == 0
    wait_until(parked, WAIT, f"{count} parked connection(s)")


def wait_all_closed(server):
    wait_until(lambda: _census(server) == (0, 0, 0, 0), WAIT, "every connection closed")


def test_a_parked_connection_serves_its_next_requests(serve):
    with serve(app, keep_alive=60) as srv, srv.connect(WAIT) as sock:
        sock.sendall(REQUEST)
        assert read_response(sock, WAIT)[2] == b"/n"
        wait_parked(srv.server, 1)
        sock.sendall(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, WAIT)[2] == b"/again"
        wait_parked(srv.server, 1)
        # Two pipelined requests wake it once and are both answered, in order.
        sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = sock.makefile("rb")
        assert read_response(reader, WAIT)[2] == b"/a"
        assert read_response(reader, WAIT)[2] == b"/b"


def test_a_request_split_across_the_wake_up_is_whole(serve):
    with serve(app, keep_alive=60) as srv, srv.connect(WAIT) as sock:
        sock.sendall(REQUEST)
        read_response(sock, WAIT)
        wait_parked(srv.server, 1)
        sock.sendall(b"GET /sp")
        wait_until(lambda: (_census(srv.server) or (1,))[0] == 0, WAIT, "the wake-up")
        sock.sendall(b"lit HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, WAIT)[2] == b"/split"


def test_a_partial_head_after_parking_still_gets_its_408(serve):
    with serve(app, keep_alive=60, header_timeout=1) as srv, srv.connect(WAIT) as sock:
        sock.sendall(REQUEST)
        read_response(sock, WAIT)
        wait_parked(srv.server, 1)
        sock.sendall(b"GET /slow HTTP/1.1\r\n")
        assert b" 408 " in recv_until_closed(sock, WAIT).split(b"\r\n")[0]
        wait_all_closed(srv.server)


def test_a_parked_connection_closes_at_its_keep_alive_timeout(serve):
    keep_alive = PARK_AFTER + 1
    with serve(app, keep_alive=keep_alive) as srv, srv.connect(WAIT) as sock:
        sock.sendall(REQUEST)
        read_response(sock, WAIT)
        started = time.monotonic()
        wait_parked(srv.server, 1)
        assert recv_until_closed(sock, WAIT) == b""
        assert time.monotonic() - started >= keep_alive - 0.5
        wait_all_closed(srv.server)


def test_a_connection_that_never_sends_parks_then_meets_the_header_timeout(serve):
    with serve(app, header_timeout=PARK_AFTER + 1) as srv, srv.connect(WAIT) as sock:
        wait_parked(srv.server, 1)
        # Nothing was asked, so nothing is answered: the connection just closes.
        assert recv_until_closed(sock, WAIT) == b""
        wait_all_closed(srv.server)


def test_a_client_leaving_while_parked_frees_its_slot(serve):
    with serve(app, keep_alive=60) as srv:
        sock = srv.connect(WAIT)
        sock.sendall(REQUEST)
        read_response(sock, WAIT)
        wait_parked(srv.server, 1)
        sock.close()
        wait_all_closed(srv.server)


def test_parked_connections_hold_their_slots_and_give_way_to_a_newcomer(serve):
    with serve(app, keep_alive=60, max_connections=2) as srv:
        first, second = srv.connect(WAIT), srv.connect(WAIT)
        for sock in (first, second):
            sock.sendall(REQUEST)
            read_response(sock, WAIT)
        wait_parked(srv.server, 2)
        assert srv.server.spawner.full()
        with srv.connect(WAIT) as newcomer:
            newcomer.sendall(b"GET /new HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(newcomer, WAIT)[2] == b"/new"
        # The longest-idle one made room: it was closed without a word.
        assert recv_until_closed(first, WAIT) == b""
        second.sendall(b"GET /kept HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(second, WAIT)[2] == b"/kept"
        first.close()
        second.close()


def test_a_graceful_stop_closes_parked_connections_at_once(serve):
    with serve(app, keep_alive=60, stop_timeout=60) as srv, srv.connect(WAIT) as sock:
        sock.sendall(REQUEST)
        read_response(sock, WAIT)
        wait_parked(srv.server, 1)
        started = time.monotonic()
        srv.stop(60)
        assert recv_until_closed(sock, WAIT) == b""
        # Well inside the 60 s graceful timeout: nothing waited for the parked client.
        assert time.monotonic() - started < 30


@pytest.mark.parametrize("family", ["unix"])
def test_unix_socket_connections_park_too(serve, tmp_path, family):
    path = str(tmp_path / "park.sock")
    with serve(app, bind=f"unix:{path}", keep_alive=60) as srv:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(path)
            sock.sendall(REQUEST)
            read_response(sock, WAIT)
            wait_parked(srv.server, 1)
            sock.sendall(REQUEST)
            assert read_response(sock, WAIT)[2] == b"/n"


def test_accepted_tcp_connections_have_nagle_off(serve):
    """Responses leave in one write: Nagle's delay must be off on every accepted TCP socket
    (on Linux inherited from the listener, elsewhere set per connection)."""
    with serve(app, keep_alive=60) as srv, srv.connect(WAIT) as sock:
        sock.sendall(REQUEST)
        read_response(sock, WAIT)
        connection = wait_until(lambda: list(srv.server.connections), WAIT, "the connection")[0]
        assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_connection_greenlets_are_reused_with_a_fresh_context_each_time(serve):
    """A finished connection's greenlet serves the next connection (a new greenlet costs a
    fresh Python stack), but starts it as a new greenlet would: an empty contextvars
    context, nothing of the previous connection."""
    import contextvars

    import greenlet

    seen = contextvars.ContextVar("seen", default="fresh")
    runs = []

    def remembering(environ, start_response):
        runs.append((greenlet.getcurrent(), seen.get()))
        seen.set(environ["PATH_INFO"])
        return app(environ, start_response)

    with serve(remembering, keep_alive=60) as srv:
        for path in (b"/one", b"/two"):
            with srv.connect(WAIT) as sock:
                sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
                assert read_response(sock, WAIT)[2] == path
            wait_all_closed(srv.server)
    (first, first_seen), (second, second_seen) = runs
    assert second is first
    assert first_seen == second_seen == "fresh"
