"""``greenserve.respond_later``: a long poll that waits without a greenlet.

Real server on 127.0.0.1:0, raw-socket clients. The app returns ``respond_later(...)``, so it
is not wrapped in ``wsgiref.validate`` (the validator would hide that object and turn the wait
into the blocking fallback, tested on its own below); the answer each ``respond`` gives is
made by a validated WSGI app instead.
"""

import contextlib
import socket
import threading
from wsgiref.validate import validator

import pytest

from conftest import read_response, recv_until_closed
from greenserve import respond_later
from greenserve.later import ResponseLater
from procs import wait_until

WAIT = 20.0


def _answer_app(environ, start_response):
    body = environ["answer"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


class Room:
    """The app: ``GET /wait[?timeout=S]`` waits for ``POST /fire``; ``/count`` says how many
    wait. Every call of ``respond`` is recorded with what the server told it."""

    def __init__(self):
        self.event = None
        self.waiting = 0
        self.calls = []  # (ready, client gone?)
        self.called = threading.Event()

    def __call__(self, environ, start_response):
        from gevent.event import Event

        path = environ["PATH_INFO"]
        if self.event is None:
            self.event = Event()
        if path == "/fire":
            event, self.event = self.event, Event()
            event.set()
            return self._say(environ, start_response, "fired")
        if path == "/count":
            return self._say(environ, start_response, str(self.waiting))
        if path == "/boom":
            return respond_later(environ, self.event, self._boom, 0.01)
        if path != "/wait":
            return self._say(environ, start_response, "pong")
        query = environ.get("QUERY_STRING", "")
        timeout = float(query.split("=", 1)[1]) if query.startswith("timeout=") else None
        self.waiting += 1

        def respond(ready):
            self.waiting -= 1
            self.calls.append((ready, environ["greenserve.disconnected"].is_set()))
            self.called.set()
            return self._say(environ, start_response, f"ready={ready}")

        return respond_later(environ, self.event, respond, timeout)

    def _boom(self, ready):
        raise RuntimeError("respond failed")

    @staticmethod
    def _say(environ, start_response, text):
        environ["answer"] = text
        return validator(_answer_app)(environ, start_response)


def _request(path):
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def _get(srv, path):
    with srv.connect(WAIT) as sock:
        sock.sendall(_request(path))
        return read_response(sock, WAIT)


def _waiting(srv, room, count):
    """Until ``count`` responses wait, and none of them holds a greenlet."""
    def settled():
        try:
            waiting = [c for c in list(srv.server.connections) if c.later is not None]
        except RuntimeError:  # the server's thread changed the set while we looked
            return False
        return len(waiting) == count and all(c.greenlet is None for c in waiting) \
            and room.waiting == count
    wait_until(settled, WAIT, f"{count} waiting response(s)")


@contextlib.contextmanager
def waiting_clients(srv, room, count):
    """``count`` clients whose ``GET /wait`` waits (as _waiting checks); closed at the end."""
    socks = [srv.connect(WAIT) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(_request("/wait"))
        _waiting(srv, room, count)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_waiting_responses_hold_no_greenlet_and_are_answered_when_the_event_fires(serve):
    room = Room()
    with serve(room, validate=False, keep_alive=60) as srv, \
            waiting_clients(srv, room, 20) as socks:
        spawner = srv.server.spawner
        assert spawner.held == 20 and len(srv.server.connections) == 20
        assert _get(srv, "/fire")[2] == b"fired"
        for sock in socks:
            code, headers, body, _ = read_response(sock, WAIT)
            assert (code, body) == (200, b"ready=True")
            assert headers.get("connection") != "close"
        # Each connection stays open and serves its next request.
        for sock in socks:
            sock.sendall(_request("/ping"))
            assert read_response(sock, WAIT)[2] == b"pong"
    assert room.calls == [(True, False)] * 20


def test_woken_responses_share_a_greenlet_and_each_starts_in_a_fresh_context(serve):
    """Responses woken at once are answered in a row by one greenlet, and still each
    ``respond`` runs as in a greenlet of its own: an empty contextvars context, nothing of
    the response before it."""
    import contextvars

    import greenlet

    seen = contextvars.ContextVar("seen", default="fresh")
    room = Room()
    runs = []

    def remembering(environ, start_response):
        later = room(environ, start_response)
        if isinstance(later, ResponseLater):
            respond = later.respond

            def respond_remembering(ready):
                runs.append((greenlet.getcurrent(), seen.get()))
                seen.set("used")
                return respond(ready)
            later.respond = respond_remembering
        return later

    with serve(remembering, validate=False, keep_alive=60) as srv, \
            waiting_clients(srv, room, 10) as socks:
        assert _get(srv, "/fire")[2] == b"fired"
        for sock in socks:
            assert read_response(sock, WAIT)[:3:2] == (200, b"ready=True")
    assert [context for _, context in runs] == ["fresh"] * 10
    assert len({id(glet) for glet, _ in runs}) == 1


def test_a_respond_that_blocks_does_not_hold_up_the_others_woken_with_it(serve):
    """Woken responses answered in a row: the first ``respond`` blocks (on I/O, a lock, an
    event), and the others are answered meanwhile, not after it."""
    from gevent.event import Event

    fire, gate = Event(), Event()
    calls = []

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path in ("/fire", "/open"):
            (fire if path == "/fire" else gate).set()
            return Room._say(environ, start_response, path)
        name = environ["QUERY_STRING"]

        def respond(ready):
            calls.append(name)
            if len(calls) == 1:
                gate.wait()  # blocks this greenlet until the test opens the gate
            return Room._say(environ, start_response, name)
        return respond_later(environ, fire, respond)

    with serve(app, validate=False, keep_alive=60) as srv:
        socks = {name: srv.connect(WAIT) for name in ("a", "b", "c")}
        try:
            for name, sock in socks.items():
                sock.sendall(_request("/wait?" + name))
            wait_until(lambda: sum(c.later is not None for c in list(srv.server.connections))
                       == 3, WAIT, "three waiting responses")
            assert _get(srv, "/fire")[2] == b"/fire"
            wait_until(lambda: len(calls) == 3, WAIT, "every respond called")
            blocked = calls[0]
            for name in calls[1:]:
                assert read_response(socks[name], WAIT)[2] == name.encode()
            assert _get(srv, "/open")[2] == b"/open"
            assert read_response(socks[blocked], WAIT)[2] == blocked.encode()
        finally:
            for sock in socks.values():
                sock.close()


def test_a_timeout_answers_not_ready_and_the_connection_stays_usable(serve):
    room = Room()
    with serve(room, validate=False) as srv, srv.connect(WAIT) as sock:
        sock.sendall(_request("/wait?timeout=0.3"))
        assert read_response(sock, WAIT)[:3:2] == (200, b"ready=False")
        sock.sendall(_request("/ping"))
        assert read_response(sock, WAIT)[2] == b"pong"
    assert room.calls == [(False, False)]


def test_an_event_already_set_or_a_zero_timeout_answers_at_once(serve):
    room = Room()
    with serve(room, validate=False) as srv, srv.connect(WAIT) as sock:
        sock.sendall(_request("/wait?timeout=0"))
        assert read_response(sock, WAIT)[2] == b"ready=False"
    assert room.calls == [(False, False)]


def test_a_client_that_resets_ends_the_wait_and_respond_learns_it(serve):
    room = Room()
    with serve(room, validate=False) as srv:
        sock = srv.connect(WAIT)
        sock.sendall(_request("/wait"))
        _waiting(srv, room, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: a reset
        assert room.called.wait(WAIT)
        wait_until(lambda: not srv.server.connections, WAIT, "the connection closed")
        assert srv.server.spawner.held == 0
    assert room.calls == [(False, True)]


def test_a_half_closed_client_still_gets_its_answer(serve):
    # RFC 9112 §9.6: a client may half-close after its request and still read the answer.
    room = Room()
    with serve(room, validate=False) as srv, srv.connect(WAIT) as sock:
        sock.sendall(_request("/wait"))
        _waiting(srv, room, 1)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: all(c.disconnected is None or c.disconnected.half_closed
                               for c in list(srv.server.connections)), WAIT, "the half-close")
        assert _get(srv, "/fire")[2] == b"fired"
        code, _, body, _ = read_response(sock, WAIT)
        assert (code, body) == (200, b"ready=True")
    assert room.calls == [(True, False)]


def test_the_request_deadline_answers_503_and_respond_still_runs_once(serve):
    room = Room()
    with serve(room, validate=False, request_timeout=0.5) as srv, srv.connect(WAIT) as sock:
        sock.sendall(_request("/wait"))
        code, headers, body, _ = read_response(sock, WAIT)
        assert code == 503 and headers["connection"] == "close"
        assert recv_until_closed(sock, WAIT) == b""
        wait_until(lambda: srv.server.spawner.held == 0, WAIT, "the slot freed")
    assert room.calls == [(False, False)] and room.waiting == 0


def test_a_failing_respond_gets_a_500(serve):
    room = Room()
    with serve(room, validate=False) as srv, srv.connect(WAIT) as sock:
        sock.sendall(_request("/boom"))
        assert read_response(sock, WAIT)[0] == 500
        sock.sendall(_request("/ping"))
        assert read_response(sock, WAIT)[2] == b"pong"


def test_a_stopping_server_answers_waiting_responses_at_once(serve):
    room = Room()
    with serve(room, validate=False, graceful_timeout=30, stop_timeout=30) as srv, \
            waiting_clients(srv, room, 3) as socks:
        stopper = threading.Thread(target=srv.stop, args=(30,))
        stopper.start()
        for sock in socks:
            code, headers, body, _ = read_response(sock, WAIT)
            assert (code, body, headers["connection"]) == (200, b"ready=False", "close")
        stopper.join(WAIT)
        assert not stopper.is_alive()
    assert room.calls == [(False, False)] * 3


def test_middleware_in_between_falls_back_to_waiting_in_the_greenlet(serve):
    # wsgiref.validate wraps the returned object, so the server never sees it: iterating it
    # waits in place, as under any other gevent server.
    room = Room()
    with serve(room, keep_alive=60) as srv, srv.connect(WAIT) as sock:
        sock.sendall(_request("/wait"))
        wait_until(lambda: room.waiting == 1, WAIT, "the waiting request")
        assert [c.later for c in list(srv.server.connections)] == [None]
        assert _get(srv, "/fire")[2] == b"fired"
        assert read_response(sock, WAIT)[:3:2] == (200, b"ready=True")
        sock.sendall(_request("/wait?timeout=0.2"))
        assert read_response(sock, WAIT)[2] == b"ready=False"
    assert room.calls == [(True, False), (False, False)]


@pytest.mark.parametrize("timeout", [-1, float("nan"), "5", True, 10 ** 400])
def test_a_bad_timeout_is_refused_where_the_app_passes_it(timeout):
    from gevent.event import Event

    with pytest.raises((ValueError, TypeError)):
        respond_later({}, Event(), lambda ready: [], timeout)


def test_what_is_not_a_gevent_waitable_is_refused_where_the_app_passes_it():
    import threading as real_threading

    from gevent.event import Event

    with pytest.raises(TypeError, match="not a gevent waitable"):
        respond_later({}, real_threading.Event(), lambda ready: [], 5)
    with pytest.raises(TypeError, match="respond must be callable"):
        respond_later({}, Event(), [b"not a function"], 5)


def test_the_fallback_closes_what_respond_returned():
    from gevent.event import Event

    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    event = Event()
    event.set()
    later = respond_later({}, event, lambda ready: Body([b"ready" if ready else b"no"]))
    assert isinstance(later, ResponseLater)
    assert list(later) == [b"ready"]
    later.close()
    assert closed == [True]


H2C = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def test_an_upgrade_request_answered_later_gets_its_answer(serve):
    # curl --http2 and Java's HttpClient ask for h2c on every plain http:// request: an app
    # that answers later has not taken the socket, so the request is an ordinary one.
    room = Room()
    with serve(room, validate=False) as srv, srv.connect(WAIT) as sock:
        sock.sendall(b"GET /wait?timeout=0.2 HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n")
        code, headers, body, _ = read_response(sock, WAIT)
        assert (code, body, headers["connection"]) == (200, b"ready=False", "close")
    assert room.calls == [(False, False)]


def test_an_upgrade_request_to_a_generator_app_gets_its_answer(serve):
    # A generator calls start_response only when its first piece is pulled: the server must
    # pull it before deciding the app took the socket.
    def lazy_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"lazy "
        yield b"answer"

    with serve(lazy_app) as srv, srv.connect(WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + H2C + b"\r\n")
        code, _, body, _ = read_response(sock, WAIT)
        assert (code, body) == (200, b"lazy answer")


def test_a_slot_freed_early_in_a_row_lets_a_waiting_newcomer_in_while_a_later_one_blocks(serve):
    """At the connection cap, with a newcomer waiting: of the responses woken together, the
    first closes its connection and the next one's ``respond`` blocks. The slot the first
    gave back must let the newcomer in now, not once the blocked one is done."""
    from gevent.event import Event

    fire, gate = Event(), Event()
    hubs, calls = [], []

    def app(environ, start_response):
        import gevent

        if environ["PATH_INFO"] != "/wait":
            return Room._say(environ, start_response, environ["PATH_INFO"])
        hubs.append(gevent.get_hub())
        name = environ["QUERY_STRING"]

        def respond(ready):
            calls.append(name)
            if name == "blocks":
                gate.wait()
            return Room._say(environ, start_response, name)
        return respond_later(environ, fire, respond)

    with serve(app, validate=False, keep_alive=60, max_connections=2) as srv:
        closes, blocks = srv.connect(WAIT), srv.connect(WAIT)
        newcomer = None
        try:
            # Answered in the order they began waiting: the one that closes first.
            closes.sendall(b"GET /wait?closes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            wait_until(lambda: any(c.later is not None for c in list(srv.server.connections)),
                       WAIT, "the first waiting response")
            blocks.sendall(_request("/wait?blocks"))
            wait_until(lambda: sum(c.later is not None for c in list(srv.server.connections))
                       == 2, WAIT, "two waiting responses")
            newcomer = srv.connect(WAIT)
            newcomer.sendall(_request("/new"))
            acceptor = srv.server._acceptors[0]
            wait_until(lambda: acceptor.paused, WAIT, "the acceptor paused at the cap")
            hub = hubs[0]
            hub.loop.run_callback_threadsafe(fire.set)
            assert read_response(closes, WAIT)[2] == b"closes"
            wait_until(lambda: calls == ["closes", "blocks"], WAIT, "both responds called")
            assert read_response(newcomer, 5)[2] == b"/new"
        finally:
            hubs[0].loop.run_callback_threadsafe(gate.set)
            for sock in (closes, blocks, newcomer):
                if sock is not None:
                    sock.close()


def test_a_long_row_of_woken_responses_gives_the_hub_its_turns(serve):
    """Woken at once, many responses are answered in rows of Spawner.RESUMED_IN_A_ROW, and
    the hub gets its turn between rows (I/O, timers), as it did between callbacks: gevent
    polls only between its callbacks, looking at the clock every 50 of them, so rows queued
    as callbacks back to back would hold it 50 times longer. A timer started by the first
    ``respond`` must fire before the last one runs."""
    import sys

    from gevent.event import Event

    from greenserve.spawner import RESUMED_IN_A_ROW

    count = 3 * RESUMED_IN_A_ROW
    fire = Event()
    calls, fired_after, hubs, timers = [], [], [], []

    def app(environ, start_response):
        import gevent

        if environ["PATH_INFO"] != "/wait":
            return Room._say(environ, start_response, "pong")
        hubs.append(gevent.get_hub())
        name = environ["QUERY_STRING"]

        def respond(ready):
            if not calls:
                timer = gevent.get_hub().loop.timer(0)
                timer.start(lambda: fired_after.append(len(calls)))
                timers.append(timer)
            calls.append(name)
            return Room._say(environ, start_response, name)
        return respond_later(environ, fire, respond)

    interval = sys.getswitchinterval()
    # The hub's clock check after every 50 callbacks then always finds its time up.
    sys.setswitchinterval(1e-4)
    try:
        with serve(app, validate=False, keep_alive=60) as srv:
            socks = [srv.connect(WAIT) for _ in range(count)]
            try:
                for i, sock in enumerate(socks):
                    sock.sendall(_request(f"/wait?{i}"))
                wait_until(lambda: sum(c.later is not None
                                       for c in list(srv.server.connections)) == count,
                           WAIT, f"{count} waiting responses")
                hubs[0].loop.run_callback_threadsafe(fire.set)
                for i, sock in enumerate(socks):
                    assert read_response(sock, WAIT)[2] == str(i).encode()
            finally:
                for sock in socks:
                    sock.close()
    finally:
        sys.setswitchinterval(interval)
    assert len(calls) == count
    assert fired_after and fired_after[0] < count, fired_after
