"""HTTPS served by greenserve itself, with clients that verify the certificate (trustme CA):
keep-alive and pipelining, wsgi.url_scheme, file_wrapper without sendfile, the disconnect
event, client certificates, and handshakes that never come or are not TLS at all."""

import http.client
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
import trustme

from conftest import read_response, recv_until_closed

WAIT = 20


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def certs(ca, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    server_cert = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, ca_file = folder / "server.pem", folder / "server.key", folder / "ca.pem"
    server_cert.cert_chain_pems[0].write_to_path(cert)
    for extra in server_cert.cert_chain_pems[1:]:
        extra.write_to_path(cert, append=True)
    server_cert.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    return {"certfile": str(cert), "keyfile": str(key), "ca": str(ca_file)}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/file":
        import tempfile
        spool = tempfile.TemporaryFile()
        spool.write(b"F" * 300000)
        spool.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](spool)
    body = ("%s %s %s" % (environ["wsgi.url_scheme"], path,
                          environ.get("SSL_CLIENT_S_DN", "-"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def client_context(certs):
    return ssl.create_default_context(cafile=certs["ca"])


def tls_connect(srv, certs, context=None):
    context = context or client_context(certs)
    raw = socket.create_connection((srv.host, srv.port), timeout=WAIT)
    return context.wrap_socket(raw, server_hostname="localhost")


def test_https_keep_alive_pipelining_and_scheme(serve, certs):
    with serve(app, certfile=certs["certfile"], keyfile=certs["keyfile"]) as srv:
        with tls_connect(srv, certs) as sock:
            assert sock.selected_alpn_protocol() in (None, "http/1.1")
            reader = sock.makefile("rb")
            sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(reader, WAIT)[2] == b"https /a -"
            assert read_response(reader, WAIT)[2] == b"https /b -"
            sock.sendall(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\n")
            code, _, body, _ = read_response(reader, WAIT)
            assert (code, body) == (200, b"F" * 300000)  # read and encrypted, not sendfile
        # http.client with hostname verification, as an ordinary client would.
        conn = http.client.HTTPSConnection("localhost", srv.port, timeout=WAIT,
                                           context=client_context(certs))
        conn.request("GET", "/c")
        assert conn.getresponse().read() == b"https /c -"
        conn.close()


def test_admin_listener_stays_plain_http_beside_a_tls_server(certs, tmp_path):
    # Probes (a Kubernetes httpGet, a load balancer's check) speak plain HTTP to it, as they
    # do when a master runs it.
    import procs
    shutil.copy(procs.FIXTURE_APPS / "webapp.py", tmp_path / "webapp.py")
    with procs.Processes(cwd=tmp_path) as started:
        server = started.greenserve("webapp:app", "-b", "127.0.0.1:0", "--certfile",
                                    certs["certfile"], "--keyfile", certs["keyfile"],
                                    "--metrics-bind", "127.0.0.1:0")
        port = int(server.wait_for(r"Admin listener at http://127\.0\.0\.1:(\d+)")[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()


def test_alpn_settles_on_http11(serve, certs):
    context = client_context(certs)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with serve(app, certfile=certs["certfile"], keyfile=certs["keyfile"]) as srv:
        with tls_connect(srv, certs, context) as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_verifies_the_certificate(serve, certs):
    with serve(app, certfile=certs["certfile"], keyfile=certs["keyfile"]) as srv:
        result = subprocess.run(["curl", "-sS", "--cacert", certs["ca"],
                                 f"https://localhost:{srv.port}/curl"],
                                capture_output=True, text=True, timeout=WAIT)
    assert result.stdout == "https /curl -", result.stderr


def test_a_client_that_never_speaks_tls_is_closed_by_the_header_timeout(serve, certs):
    with serve(app, certfile=certs["certfile"], keyfile=certs["keyfile"],
               header_timeout=1) as srv:
        silent = srv.connect(timeout=WAIT)
        started = time.monotonic()
        assert recv_until_closed(silent, WAIT) == b""
        assert time.monotonic() - started < 10
        silent.close()
        # Plain HTTP on the TLS port: no answer, closed, and the server goes on.
        with srv.connect(timeout=WAIT) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert not recv_until_closed(plain, WAIT).startswith(b"HTTP/1.1 200")
        with tls_connect(srv, certs) as sock:
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_response(sock, WAIT)[2] == b"https /after -"


def test_required_client_certificate_reaches_the_environ(serve, certs, ca):
    client_cert = ca.issue_cert("alice@example.com", common_name="alice")
    with serve(app, certfile=certs["certfile"], keyfile=certs["keyfile"],
               ca_certs=certs["ca"], cert_reqs="required") as srv:
        with_cert = client_context(certs)
        client_cert.configure_cert(with_cert)
        with tls_connect(srv, certs, with_cert) as sock:
            sock.sendall(b"GET /me HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = read_response(sock, WAIT)[2]
        assert body.startswith(b"https /me CN=alice,")
        # Without a certificate the handshake fails (at once, or at the first read in TLS
        # 1.3), and nothing is served.
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with tls_connect(srv, certs) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                if not sock.recv(100):
                    raise ConnectionResetError("closed without a response")


def test_disconnect_event_over_tls(serve, certs):
    waiting, fired = threading.Event(), []

    def long_poll(environ, start_response):
        waiting.set()
        fired.append(environ["greenserve.disconnected"].wait(WAIT))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    with serve(long_poll, certfile=certs["certfile"], keyfile=certs["keyfile"]) as srv:
        sock = tls_connect(srv, certs)
        sock.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        assert waiting.wait(WAIT)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        deadline = time.monotonic() + WAIT
        while not fired and time.monotonic() < deadline:
            time.sleep(0.05)  # the app's own report is the event; polled, bounded
    assert fired == [True]


def test_the_server_ends_tls_with_close_notify(serve, certs):
    # RFC 9112 §9.8: "Servers MUST attempt to initiate an exchange of closure alerts with the
    # client before closing the connection", and a response framed by the close alone "is
    # complete only if a valid closure alert has been received". A client that does not
    # forgive a bare TCP close (suppress_ragged_eofs=False) must read each answer whole.
    def streamed(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (piece for piece in (b"part 1,", b" part 2"))

    requests = [
        # HTTP/1.0 without Content-Length: the body ends where the connection does.
        (b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n", b"part 1, part 2"),
        (b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", None),
        # The server's own 400, which closes with a linger.
        (b"GET /bad HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", None),
    ]
    with serve(streamed, certfile=certs["certfile"], keyfile=certs["keyfile"]) as srv:
        for request, body in requests:
            raw = socket.create_connection((srv.host, srv.port), timeout=WAIT)
            with client_context(certs).wrap_socket(raw, server_hostname="localhost",
                                                   suppress_ragged_eofs=False) as sock:
                sock.sendall(request)
                received = b""
                while True:
                    # SSLEOFError here: the server closed without close_notify.
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += data
            assert received.startswith(b"HTTP/1.1 "), received
            if body is not None:
                assert received.endswith(b"\r\n\r\n" + body)


def test_a_steady_reader_of_a_large_body_is_not_cut_off_over_tls(serve, certs):
    # The body in one piece: the SSL object's write of it returns only when all is written,
    # refilling the kernel's queue as the client drains it. The send timer must still see
    # the client's progress: this one reads steadily (tens of KB/s), far above
    # --send-min-rate, yet took longer than --send-timeout, and was cut at it.
    size = 256 << 10

    def big(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return [b"z" * size]

    with serve(big, certfile=certs["certfile"], keyfile=certs["keyfile"],
               send_timeout=1) as srv:
        # Small buffers both ways, so the send waits on the client (see test_hardening).
        srv.server._listeners[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        raw = socket.create_connection((srv.host, srv.port), timeout=WAIT)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        pause = threading.Event()
        with client_context(certs).wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            received = b""
            started = time.monotonic()
            while True:
                pause.wait(0.01)  # the client's own pace, not a wait for the server
                try:
                    data = sock.recv(8192)
                except ConnectionResetError:
                    break
                if not data:
                    break
                received += data
            elapsed = time.monotonic() - started
    assert received.endswith(b"z" * size), len(received)
    assert elapsed > 1  # the send outlived --send-timeout
