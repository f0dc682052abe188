"""PEP 3333 through a real server: environ, wsgi.input, start_response rules, app errors,
close() of the iterable, write(), file_wrapper; plus timers and graceful stop."""

import bz2
import gzip
import http.client
import io
import lzma
import json
import socket
import sys
import threading
import time

import gevent
import gevent.event
import pytest
from conftest import read_response, recv_until_closed

from greenserve.protocol.lines import forget_lines
from greenserve.wsgi import FileWrapper, forget_memos


@pytest.fixture(autouse=True, params=["cold", "warm"])
def memo(request):
    """Every test twice: first with the memos of checked request lines, header lines,
    statuses and response headers emptied, then warm: pytest runs the [warm] ones right
    after the [cold] ones of the same test, so the memos hold what its requests and app
    just used."""
    if request.param == "cold":
        forget_lines()
        forget_memos()
    return request.param


def get(srv, path="/", headers=None, method="GET", body=None):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def environ_dump(environ, start_response):
    """Return the str-valued environ keys as JSON."""
    data = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int, tuple))}
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


# -- environ ---------------------------------------------------------------------------------

def test_environ_keys(serve):
    with serve(environ_dump) as srv, srv.connect() as sock:
        sock.sendall(b"POST /a%20b/%E2%82%AC?x=1&y=%20 HTTP/1.1\r\nHost: example.com:8080\r\n"
                     b"Content-Type: text/plain\r\nContent-Length: 0\r\nX-Multi: 1\r\n"
                     b"X-Multi: 2\r\nCookie: a=1\r\nCookie: b=2\r\nX_Under: dropped\r\n"
                     b"User-Agent: test\r\n\r\n")
        _, _, body, _ = read_response(sock)
        local_port = sock.getsockname()[1]
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/a b/\u00e2\u0082\u00ac"  # UTF-8 bytes as latin-1 (PEP 3333)
    assert env["QUERY_STRING"] == "x=1&y=%20"
    assert env["RAW_URI"] == "/a%20b/%E2%82%AC?x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] == "127.0.0.1" and env["SERVER_PORT"] == str(srv.port)
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == str(local_port)
    assert env["HTTP_HOST"] == "example.com:8080"
    assert env["CONTENT_TYPE"] == "text/plain" and env["CONTENT_LENGTH"] == "0"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["HTTP_X_MULTI"] == "1, 2"
    assert env["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_UNDER" not in env  # names with "_" would spoof "-" headers
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.input_terminated"] is True
    assert env["wsgi.run_once"] is False
    assert env["wsgi.version"] == [1, 0]


def test_a_server_wide_options_request_has_an_empty_path_info(serve):
    # RFC 9112 §3.2.4: "OPTIONS *" asks about the server, not a resource. CGI (RFC 3875
    # §4.1.5) allows PATH_INFO only empty or starting with "/", which wsgiref.validate (wrapped
    # around every app here) checks; the target itself stays in RAW_URI.
    with serve(environ_dump, root_path="/app") as srv, srv.connect() as sock:
        sock.sendall(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body, _ = read_response(sock)
    assert status == 200
    env = json.loads(body)
    assert env["REQUEST_METHOD"] == "OPTIONS"
    assert env["PATH_INFO"] == "" and env["RAW_URI"] == "*"
    assert env["SCRIPT_NAME"] == "/app"


def test_multithread_is_true_since_requests_run_the_app_concurrently(serve):
    # PEP 3333: wsgi.multithread "should evaluate true if the application object may be
    # simultaneously invoked by another thread in the same process". Each connection runs
    # the app in its own greenlet (a thread to the app once gevent has patched threading),
    # so two requests are inside the app at once: the second arrives while the first waits.
    arrived = []
    both_in = gevent.event.Event()

    def app(environ, start_response):
        arrived.append(environ["wsgi.multithread"])
        if len(arrived) == 2:
            both_in.set()
        assert both_in.wait(5), "the other request never reached the app"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    with serve(app) as srv, srv.connect() as first, srv.connect() as second:
        first.sendall(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        second.sendall(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(first)[0] == read_response(second)[0] == 200
    assert arrived == [True, True]


def test_root_path_sets_script_name(serve):
    with serve(environ_dump, root_path="/app") as srv:
        env = json.loads(get(srv, "/app/page?q")[2])
        other = json.loads(get(srv, "/elsewhere")[2])
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/app", "/page", "q")
    assert other["PATH_INFO"] == "/elsewhere"


@pytest.mark.parametrize("root_path, request_path", [
    ("/a%20b", "/a%20b/page"), ("/a b", "/a%20b/page"),
    ("/caf\u00e9", "/caf%C3%A9/page"), ("/caf%C3%A9", "/caf%C3%A9/page")])
def test_root_path_takes_the_form_of_path_info(serve, root_path, request_path):
    # PEP 3333: SCRIPT_NAME, like PATH_INFO, is the decoded path's octets read as latin-1.
    with serve(environ_dump, root_path=root_path) as srv:
        env = json.loads(get(srv, request_path)[2])
    decoded = "/caf\u00e9".encode().decode("latin-1") if "caf" in root_path else "/a b"
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (decoded, "/page")


def test_absolute_form_target_replaces_host(serve):
    with serve(environ_dump) as srv, srv.connect() as sock:
        sock.sendall(b"GET http://other.example:81/p?q=1 HTTP/1.1\r\nHost: ignored\r\n\r\n")
        env = json.loads(read_response(sock)[2])
    assert env["HTTP_HOST"] == "other.example:81"
    assert (env["PATH_INFO"], env["QUERY_STRING"]) == ("/p", "q=1")


def test_chunked_request_has_no_content_length(serve):
    with serve(environ_dump) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        env = json.loads(read_response(sock)[2])
    assert "CONTENT_LENGTH" not in env and "HTTP_TRANSFER_ENCODING" in env


# -- wsgi.input ------------------------------------------------------------------------------

def test_input_read_readline_readlines_iteration(serve):
    def app(environ, start_response):
        stream = environ["wsgi.input"]
        first = stream.readline()
        limited = stream.readline(3)
        rest_of_line = stream.readline()
        some = stream.read(4)
        lines = stream.readlines()
        tail = list(iter(stream))
        body = json.dumps([first.decode(), limited.decode(), rest_of_line.decode(),
                           some.decode(), [x.decode() for x in lines], tail]).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    payload = b"line one\nline two\nabcdefg\nh\nlast"
    with serve(app) as srv:
        for chunked in (False, True):
            with srv.connect() as sock:
                if chunked:
                    framed = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 3]), payload[i:i + 3])
                                      for i in range(0, len(payload), 3)) + b"0\r\n\r\n"
                    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n" + framed)
                else:
                    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                                 % len(payload) + payload)
                result = json.loads(read_response(sock)[2])
            assert result == ["line one\n", "lin", "e two\n", "abcd",
                              ["efg\n", "h\n", "last"], []]


# -- start_response rules and app errors ---------------------------------------------------

@pytest.mark.parametrize("status, headers", [
    ("200", [("Content-Type", "text/plain")]),                      # no reason phrase
    ("2000 OK", [("Content-Type", "text/plain")]),
    ("103 Early Hints", [("Content-Type", "text/plain")]),          # interim: never final
    ("999 Beyond", [("Content-Type", "text/plain")]),               # RFC 9110 §15: 100-599
    ("200 OK", [("Content-Type", "text/plain\r\nSet-Cookie: evil=1")]),  # response splitting
    ("200 OK", [("Content-Type", "text/plain"), ("X-Bad Name", "v")]),
    ("200 OK", [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")]),  # hop-by-hop
    ("200 OK", [("Content-Type", "text/plain"), ("Upgrade", "h2c")]),
    ("200 OK", [("Content-Type", "text/plain"), ("X-Euro", "\u20ac")]),  # not latin-1
    ("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "-1")]),
])
def test_invalid_status_or_headers_give_500(serve, status, headers):
    def app(environ, start_response):
        start_response(status, headers)
        return [b"body"]

    with serve(app, validate=False) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        code, response_headers, body, raw = read_response(reader)
        assert code == 500
        assert b"evil" not in raw
        # The connection is still usable after a 500 that was sent whole.
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[0] == 500


def test_a_426_carries_the_apps_upgrade_field_and_the_connection_stays_usable(serve):
    # RFC 9110 §15.5.22: a server that sends 426 MUST send an Upgrade field naming the
    # protocol(s) required, and §7.8: a sender of Upgrade also sends the "upgrade" connection
    # option. The one answer besides a 101 where an app may send these hop-by-hop fields.
    def app(environ, start_response):
        start_response("426 Upgrade Required", [
            ("Content-Type", "text/plain"), ("Upgrade", "example/2"), ("Connection", "Upgrade"),
            ("Content-Length", "8")])
        return [b"upgrade!"]

    with serve(app) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            code, headers, body, raw = read_response(reader)
            assert (code, body) == (426, b"upgrade!")
            assert headers["upgrade"] == "example/2" and headers["connection"] == "Upgrade"
            assert raw.count(b"Upgrade: example/2\r\n") == 1


def test_app_connection_close_header_is_honoured(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Connection", "close")])
        return [b"bye"]

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = recv_until_closed(sock)
    assert raw.count(b"Connection: close") == 1 and raw.count(b"200 OK") == 1


def test_exception_before_headers_gives_500_and_keeps_connection(serve, caplog):
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("kaboom")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"fine"]

    with serve(app) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
        code, headers, body, _ = read_response(reader)
        assert code == 500 and b"kaboom" not in body  # no traceback leaks to the client
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[2] == b"fine"
    assert any("kaboom" in str(r.exc_info) for r in caplog.records if r.exc_info)


def fails_mid_stream(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"partial"
    raise RuntimeError("mid-stream")


def assert_reset(sock, seconds=10):
    """Read until the connection ends: it must end with a reset, not a clean close (the
    client would take the part for the whole), within ``seconds``. Bounded: after a clean
    close the kernel may trickle queued bytes out slowly."""
    deadline = time.monotonic() + seconds
    sock.settimeout(seconds)
    received = 0
    with pytest.raises(ConnectionResetError):
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            assert data, f"a clean end after {received} bytes of a cut body"
            received += len(data)
        pytest.fail(f"no reset within {seconds} s ({received} bytes read)")


def test_exception_after_headers_closes_connection(serve):
    with serve(fails_mid_stream) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = recv_until_closed(sock)
    # Chunked, but no last-chunk: the client can tell the response is incomplete.
    assert b"7\r\npartial\r\n" in raw and not raw.endswith(b"0\r\n\r\n")


def test_exception_in_a_close_delimited_body_resets_the_connection(serve):
    """HTTP/1.0 without a length: the body ends where the connection does (RFC 9112 §6.3),
    so a clean close would pass the part sent for the whole. The client must see a reset."""
    with serve(fails_mid_stream) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert_reset(sock)


def test_a_close_delimited_body_cut_by_a_graceful_stop_resets_the_connection(serve):
    """The same when the stop's deadline cuts the stream rather than an app error."""
    first_sent = threading.Event()

    def endless(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        while True:
            yield b"tick\n"
            first_sent.set()
            gevent.sleep(0.05)

    with serve(endless, stop_timeout=0.5) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert first_sent.wait(10)
        srv.stop(0.5)
        assert_reset(sock)



def test_a_close_delimited_body_cut_by_the_send_timeout_resets_the_connection(serve):
    """The same when --send-timeout drops a client that stopped reading: if it reads again
    later, what it was sent must not end cleanly as if it were the whole body."""
    body = TrackedBody([b"y" * 65536] * 2000)

    def stream(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body

    with serve(stream, send_timeout=0.5) as srv, srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert body.closed.wait(10)  # the server gave up on the stalled reader
        assert_reset(sock)


@pytest.mark.parametrize("framing", ["content-length", "chunked", "sendfile"])
def test_a_body_cut_by_the_send_timeout_ends_with_a_reset_whatever_its_framing(
        serve, tmp_path, framing):
    """A client dropped by --send-timeout stopped reading: the rest of its response will
    never be sent. A clean close would leave what the kernel still queues for it in an
    orphaned connection (up to a send buffer of kernel memory, for as long as the client
    keeps its window shut); a reset frees it at once, and tells the client the body is cut."""
    closed = threading.Event()
    size = 65536 * 256

    class TrackedWrapper(FileWrapper):
        def close(self):
            super().close()
            closed.set()

    if framing == "sendfile":
        path = tmp_path / "big.bin"
        path.write_bytes(b"z" * size)

    def app(environ, start_response):
        if framing == "sendfile":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return TrackedWrapper(open(path, "rb"))
        headers = [("Content-Type", "application/octet-stream")]
        if framing == "content-length":
            headers.append(("Content-Length", str(size)))
        start_response("200 OK", headers)
        body = TrackedBody([b"y" * 65536] * 256)
        body.closed = closed
        return body

    # Not validated for sendfile: wsgiref's wrapper would hide the file_wrapper.
    with serve(app, validate=framing != "sendfile", send_timeout=0.5) as srv, \
            srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed.wait(10)  # the server gave up on the stalled reader
        assert_reset(sock)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_the_request_deadline_cuts_while_the_client_stalls_ends_with_a_reset(
        serve, framing):
    """The same when --request-timeout cuts the response of a client that stopped reading
    (before --send-timeout would): what the kernel still queues must not outlive the close."""
    size = 65536 * 256
    body = TrackedBody([b"y" * 65536] * 256)

    def app(environ, start_response):
        headers = [("Content-Type", "application/octet-stream")]
        if framing == "content-length":
            headers.append(("Content-Length", str(size)))
        start_response("200 OK", headers)
        return body

    with serve(app, request_timeout=0.5, send_timeout=30) as srv, srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert body.closed.wait(10)  # the deadline interrupted the stalled send
        assert_reset(sock)


def test_a_whole_body_the_app_wrote_before_failing_still_ends_cleanly(serve):
    """The reset is for bodies that are cut: an app that wrote all of its Content-Length
    and then raised has sent a whole response, which the client must get to its end even
    while most of it still waits in the kernel for a slow reader."""
    size = 128 * 1024
    raised = threading.Event()

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(size))])
        for _ in range(size // 65536):
            write(b"w" * 65536)
        raised.set()
        raise RuntimeError("fails after its whole body")

    with serve(app) as srv, srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raised.wait(10)
        status, headers, body, _ = read_response(sock, timeout=10)
        assert sock.recv(1) == b""  # then a clean close, not a reset
    assert (status, len(body)) == (200, size)


@pytest.mark.parametrize("where", ["call", "iteration", "close"])
def test_an_app_calling_sys_exit_fails_only_its_request(serve, where):
    """sys.exit() in a view (argparse's error() calls it) is the app failing: a 500 (or a cut
    response, once started), not the end of the hub and of every request in flight."""
    class Body:
        def __iter__(self):
            if where == "iteration":
                raise SystemExit("from the body")
            yield b"ok"

        def close(self):
            if where == "close":
                sys.exit(3)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/exit":
            if where == "call":
                sys.exit("from the app")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Body()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    with serve(app) as srv:
        assert get(srv, "/exit")[0] == (200 if where == "close" else 500)
        assert get(srv, "/")[::2] == (200, b"ok")  # the server lives on


def test_exc_info_replaces_headers_before_they_are_sent(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("oops")
        except ValueError:
            import sys
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")],
                           sys.exc_info())
        return [b"sorry"]

    with serve(app) as srv:
        code, _, body = get(srv)
    assert (code, body) == (503, b"sorry")


def test_exc_info_after_headers_sent_reraises(serve):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"sent")
        try:
            raise ValueError("late")
        except ValueError:
            import sys
            start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"never"]

    with serve(app, validate=False) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = recv_until_closed(sock)
    assert raw.startswith(b"HTTP/1.1 200 OK") and b"never" not in raw


def test_write_callable(serve):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one,")
        write(b"two,")
        return [b"three"]

    with serve(app) as srv:
        assert get(srv)[2] == b"one,two,three"


def test_a_greenlet_the_app_spawned_cannot_touch_the_next_request(serve):
    """PEP 3333: start_response, write() and wsgi.input belong to the request they were
    given for. A greenlet the app spawned that uses them once its request has ended gets an
    error: it must not answer (or read the body of) the next request on the connection,
    which behind a proxy's pooled connection may be another user's."""
    outcomes = []
    box = {}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/first":
            write = start_response("200 OK", [("Content-Type", "text/plain")])
            stream = environ["wsgi.input"]
            box["second_running"] = gevent.event.Event()
            box["stale_done"] = gevent.event.Event()

            def stale():
                box["second_running"].wait()
                for name, call in (("start_response", lambda: start_response("200 OK", [])),
                                   ("write", lambda: write(b"stale")),
                                   ("read", lambda: stream.read(6))):
                    try:
                        call()
                        outcomes.append((name, "allowed"))
                    except (AssertionError, ValueError):
                        outcomes.append((name, "refused"))
                box["stale_done"].set()

            gevent.spawn(stale)
            return [b"first"]
        box["second_running"].set()
        box["stale_done"].wait()
        body = environ["wsgi.input"].read(6)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"second:" + body]

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
                     b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret")
        reader = sock.makefile("rb")
        first = read_response(reader)
        second = read_response(reader)
    assert (first[0], first[2]) == (200, b"first")
    assert (second[0], second[2]) == (200, b"second:secret")
    assert outcomes == [("start_response", "refused"), ("write", "refused"),
                        ("read", "refused")]


def test_a_write_from_the_iterables_close_cannot_follow_the_ended_body(serve):
    """RFC 9112 §6.3: once a chunked body's last chunk is sent, the next bytes on the
    connection are the next response. A write() from the iterable's close() (the response
    is over by then) is refused, not framed as a chunk after the end."""
    refused = []

    class Body:
        def __init__(self, write):
            self.write = write

        def __iter__(self):
            yield b"body"

        def close(self):
            try:
                self.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
            except AssertionError:
                refused.append(True)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/second":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"second"]
        return Body(start_response("200 OK", [("Content-Type", "text/plain")]))

    with serve(app, validate=False) as srv, srv.connect() as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reader = sock.makefile("rb")
        first = read_response(reader)
        rest = reader.read()
    assert (first[0], first[1]["transfer-encoding"], first[2]) == (200, "chunked", b"body")
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(b"\r\n\r\nsecond"), rest
    assert refused == [True]


def test_an_iterables_close_cannot_answer_after_the_servers_500(serve):
    """RFC 9112 §9.3: one response per request. Once the app failed and the server sent its
    500, a start_response() from the iterable's close() is refused: its answer would be
    read as the response to the next request on the connection."""
    refused = []

    class Body:
        def __init__(self, start_response):
            self.start_response = start_response

        def __iter__(self):
            raise RuntimeError("the body fails")

        def close(self):
            try:
                write = self.start_response("200 OK", [("Content-Length", "4")])
                write(b"evil")
            except AssertionError:
                refused.append(True)

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/second":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"second"]
        return Body(start_response)

    with serve(app, validate=False) as srv, srv.connect() as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reader = sock.makefile("rb")
        first = read_response(reader)
        second = read_response(reader)
    assert first[0] == 500
    assert (second[0], second[2]) == (200, b"second")
    assert refused == [True]


class TrackedBody:
    """An app iterable that records whether close() was called."""

    def __init__(self, parts, fail_at=None, delay=0.0):
        self.parts = parts
        self.fail_at = fail_at
        self.delay = delay
        self.closed = threading.Event()

    def __iter__(self):
        for index, part in enumerate(self.parts):
            if index == self.fail_at:
                raise RuntimeError("iteration failed")
            if self.delay:
                gevent.sleep(self.delay)
            yield part

    def close(self):
        self.closed.set()


@pytest.mark.parametrize("case", ["normal", "app raises", "client disconnects"])
def test_iterable_close_is_always_called(serve, case):
    body = TrackedBody([b"x" * 65536] * 200, fail_at=3 if case == "app raises" else None,
                       delay=0.01 if case == "client disconnects" else 0.0)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        if case == "client disconnects":
            sock.recv(1000)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
        else:
            recv_until_closed(sock, 10) if case == "app raises" else read_response(sock, 10)
        assert body.closed.wait(5), "close() was not called"


# -- file_wrapper ----------------------------------------------------------------------------

def test_file_wrapper_sends_a_real_file(serve, tmp_path):
    payload = bytes(range(256)) * 4000 + b"tail"
    path = tmp_path / "data.bin"
    path.write_bytes(payload)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        handle = open(path, "rb")
        handle.seek(10)  # from the current position, as PEP 3333 allows
        return environ["wsgi.file_wrapper"](handle, 8192)

    # Not validated: wsgiref.validate wraps the returned iterable, which hides the
    # FileWrapper from the server. The Content-Length only the sendfile path adds shows the
    # file went out through os.sendfile.
    with serve(app, validate=False) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        for method in (b"GET", b"HEAD", b"GET"):
            sock.sendall(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
            if method == b"HEAD":
                from conftest import read_head
                code, headers, _ = read_head(reader)
                assert headers["content-length"] == str(len(payload) - 10)
                continue
            code, headers, body, _ = read_response(reader)
            assert body == payload[10:] and headers["content-length"] == str(len(payload) - 10)


def test_file_wrapper_honours_content_length(serve, tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(b"0123456789" * 100)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "25")])
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    with serve(app, validate=False) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(reader)[2] == (b"0123456789" * 3)[:25]


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open])
def test_file_wrapper_sends_what_a_compressed_file_reads(serve, tmp_path, opener):
    # Such a file's fileno() is its compressed source's: sendfile would send that instead.
    payload = b"".join(b"line %d\n" % n for n in range(20000))
    path = tmp_path / "data.z"
    with opener(path, "wb") as out:
        out.write(payload)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](opener(path, "rb"))

    with serve(app, validate=False) as srv:
        assert get(srv)[2] == payload


def test_file_wrapper_falls_back_for_file_likes(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"in memory " * 1000), 100)

    with serve(app) as srv:
        assert get(srv)[2] == b"in memory " * 1000


# -- timers and graceful stop --------------------------------------------------------------

def test_slow_header_gets_408_while_others_are_served(serve):
    with serve(lambda e, s: (s("200 OK", [("Content-Type", "text/plain")]), [b"ok"])[1],
               header_timeout=0.6) as srv:
        with srv.connect() as slow:
            slow.sendall(b"GET / HTTP/1.1\r\n")
            start = time.monotonic()
            for _ in range(3):
                slow.sendall(b"X-Drip: 1\r\n")
                assert get(srv)[0] == 200  # a normal client is served meanwhile
                time.sleep(0.1)
            raw = recv_until_closed(slow, 5)
        assert raw.startswith(b"HTTP/1.1 408 ")
        assert 0.5 < time.monotonic() - start < 6.0


def test_idle_keep_alive_connection_is_closed(serve):
    with serve(environ_dump, keep_alive=0.5) as srv, srv.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(sock)
        start = time.monotonic()
        assert sock.recv(10) == b""  # closed by the server, without a response
        assert 0.3 < time.monotonic() - start < 5.0


def test_stalled_upload_gets_408(serve):
    caught = []

    def app(environ, start_response):
        try:
            environ["wsgi.input"].read(100)
        except OSError as exc:  # the app can catch it ...
            caught.append(type(exc).__name__)
            raise               # ... and here lets the server answer 408
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"unexpected"]

    with serve(app, body_timeout=0.5) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        raw = recv_until_closed(sock, 5)
    assert raw.startswith(b"HTTP/1.1 408 "), raw
    assert caught == ["BodyReadTimeout"]


def test_client_that_stops_reading_is_dropped(serve):
    body = TrackedBody([b"y" * 65536] * 2000)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return body

    with serve(app, send_timeout=0.5) as srv, srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # Read nothing: the server must give up and close the iterable.
        assert body.closed.wait(5)


def test_graceful_stop_lets_in_flight_requests_finish(serve):
    started = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            started.set()
            gevent.sleep(0.5)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    with serve(app) as srv:
        idle = srv.connect()
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        read_response(idle)
        busy = srv.connect()
        busy.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert started.wait(5)
        stopper = threading.Thread(target=srv.stop)
        stopper.start()
        code, headers, body, _ = read_response(busy)
        assert (code, body) == (200, b"done")
        assert headers.get("connection") == "close"
        assert idle.recv(10) == b""  # the idle keep-alive connection was closed at once
        stopper.join(10)
        with pytest.raises(OSError):
            srv.connect(timeout=1).sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") or \
                read_response(srv.connect(timeout=1))
        idle.close()
        busy.close()


def test_request_deadline_gives_503_and_the_server_lives_on(serve):
    closed = threading.Event()

    class Slow:
        def __iter__(self):
            try:
                gevent.sleep(10)
            except Exception:  # an app's broad except must not swallow the deadline
                pass
            yield b"too late"

        def close(self):
            closed.set()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/slow":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return Slow()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"quick"]

    with serve(app, request_timeout=0.5) as srv:
        start = time.monotonic()
        code, headers, body = get(srv, "/slow")
        assert code == 503 and 0.4 < time.monotonic() - start < 5
        assert closed.wait(2)
        assert get(srv, "/")[2] == b"quick"  # a new connection is served as usual


def test_connection_cap_evicts_idle_keep_alive_connections_first(serve):
    release = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/busy":
            while not release.is_set():
                gevent.sleep(0.01)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    with serve(app, max_connections=3, keep_alive=30) as srv:
        busy = srv.connect()
        busy.sendall(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
        idle = []
        for _ in range(2):
            sock = srv.connect()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            read_response(sock)
            idle.append(sock)
        # The cap is reached (1 busy + 2 idle): a newcomer is served by evicting the
        # longest-idle connection, not left waiting behind idle keep-alive clients.
        start = time.monotonic()
        assert get(srv, "/")[2] == b"ok"
        assert time.monotonic() - start < 15  # long before the 30 s keep-alive
        assert idle[0].recv(10) == b""
        release.set()
        assert read_response(busy)[2] == b"ok"
        for sock in idle + [busy]:
            sock.close()


def test_serves_on_a_unix_socket(tmp_path):
    from conftest import running_server
    path = tmp_path / "gs.sock"
    with running_server(environ_dump, bind=f"unix:{path}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /u HTTP/1.1\r\nHost: x\r\n\r\n")
            env = json.loads(read_response(sock)[2])
    assert env["PATH_INFO"] == "/u" and env["REMOTE_ADDR"] == ""
    # PEP 3333: SERVER_NAME and SERVER_PORT are never empty; a path is no host name.
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("localhost", "80")


def test_serves_on_ipv6_loopback(serve):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"::1 cannot be bound here: {exc}")
    with serve(environ_dump, bind="[::1]:0") as srv:
        with socket.create_connection(("::1", srv.port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n")
            env = json.loads(read_response(sock)[2])
    assert env["REMOTE_ADDR"] == "::1" and env["HTTP_HOST"] == "[::1]"
    # RFC 3875 §4.1.14: in brackets, so SERVER_NAME:SERVER_PORT is a valid authority.
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("[::1]", str(srv.port))


def test_500_for_head_has_no_body_and_keeps_the_connection_in_sync(serve):
    def app(environ, start_response):
        if environ["REQUEST_METHOD"] == "HEAD":
            raise RuntimeError("HEAD broke")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"after"]

    from conftest import read_head
    with serve(app) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        code, headers, _ = read_head(reader)
        assert code == 500 and int(headers["content-length"]) > 0
        # The next bytes must be the GET's response, not the 500's body.
        assert read_response(reader)[2] == b"after"


# -- found by review: each of these failed before its fix ---------------------------------

def test_reading_a_large_body_in_one_read_n_is_linear(serve):
    size = 48 * 1024 * 1024

    def app(environ, start_response):
        started = time.monotonic()
        data = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        body = b"%d %.3f" % (len(data), time.monotonic() - started)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    with serve(app) as srv, srv.connect(timeout=60) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"x" * (1 << 20)
        for _ in range(48):
            sock.sendall(chunk)
        length, seconds = read_response(sock, 60)[2].split()
    # Copying the buffer per piece made this take ~12 s; linear reading takes well under 1.
    assert int(length) == size and float(seconds) < 4


def test_no_100_continue_after_the_response_started(serve):
    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"first;")
        return [environ["wsgi.input"].read(3)]

    with serve(app) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        # Send the body only once the response has begun (its first chunk arrived).
        received = b""
        while b"first;" not in received:
            data = sock.recv(65536)
            assert data, "closed before the first chunk"
            received += data
        sock.sendall(b"abc")
        while not received.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, "closed before the last chunk"
            received += data
        code, headers, body, raw = read_response(io.BytesIO(received))
    assert body == b"first;abc" and b"100 Continue" not in raw


def test_write_then_file_wrapper_keeps_one_framing(serve, tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"FILE" * 1000)

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"PREFIX")
        return environ["wsgi.file_wrapper"](open(path, "rb"))

    with serve(app, validate=False) as srv, srv.connect() as sock:
        reader = sock.makefile("rb")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[2] == b"PREFIX" + b"FILE" * 1000
        assert read_response(reader)[2] == b"PREFIX" + b"FILE" * 1000


def test_file_wrapper_on_a_file_without_a_size(serve):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open("/proc/self/status", "rb"))

    with serve(app, validate=False) as srv:
        assert b"VmRSS" in get(srv)[2]


def test_client_that_sends_a_whole_oversized_body_still_reads_the_413(serve):
    with serve(environ_dump, max_body_size=1000) as srv:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        conn.request("POST", "/", body=b"x" * (5 << 20))  # written whole before reading
        response = conn.getresponse()
        assert response.status == 413
        conn.close()


def test_content_length_list_reaches_the_app_as_digits(serve):
    with serve(environ_dump) as srv, srv.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc")
        env = json.loads(read_response(sock)[2])
    assert env["CONTENT_LENGTH"] == "3"
