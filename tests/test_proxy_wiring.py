"""Forwarded headers and the PROXY protocol through a real server (the parsing itself is
tested with bytes in test_proxy.py)."""

import json
import socket
import ssl
import struct
import time

import pytest
import trustme

from conftest import read_response, recv_until_closed

WAIT = 20


def environ_echo(environ, start_response):
    keys = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME",
            "SERVER_PORT", "HTTP_X_FORWARDED_FOR", "greenserve.peer_addr")
    body = json.dumps({k: environ.get(k) for k in keys}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def ask(sock, head=b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n"):
    sock.sendall(head + b"\r\n")
    code, _, body, _ = read_response(sock, WAIT)
    assert code == 200
    return json.loads(body)


# -- forwarded headers --------------------------------------------------------------------------

def test_forwarded_headers_from_a_trusted_peer_are_applied(serve):
    with serve(environ_echo) as srv, srv.connect(WAIT) as sock:  # 127.0.0.1: trusted
        env = ask(sock, b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n"
                        b"X-Forwarded-For: 198.51.100.7, 10.1.1.1\r\n"
                        b"X-Forwarded-Proto: https\r\n")
    # 10.1.1.1 is not trusted by default: it is the client (the left entry is not read).
    assert env["REMOTE_ADDR"] == "10.1.1.1" and env["wsgi.url_scheme"] == "https"
    assert env["SERVER_PORT"] == "443" and env["greenserve.peer_addr"] == "127.0.0.1"


def test_an_ipv6_zone_never_carries_text_into_remote_addr(serve):
    # Python's ipaddress takes "fe80::1%<any text but %>" as an address; REMOTE_ADDR (and
    # every log and rate limit keyed on it) must only ever hold an address.
    for header in (b"X-Forwarded-For: fe80::1%<script> x\r\n",
                   b'Forwarded: for="[fe80::1%<script> x]"\r\n'):
        with serve(environ_echo) as srv, srv.connect(WAIT) as sock:  # 127.0.0.1: trusted
            env = ask(sock, b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n"
                            + header)
        assert env["REMOTE_ADDR"] == "127.0.0.1", header


def test_forwarded_headers_from_an_untrusted_peer_reach_the_app_untouched(serve):
    with serve(environ_echo, forwarded_allow_ips="") as srv, srv.connect(WAIT) as sock:
        env = ask(sock, b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n"
                        b"X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\n")
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert env["HTTP_X_FORWARDED_FOR"] == "198.51.100.7"
    assert env["greenserve.peer_addr"] is None


# -- PROXY protocol ------------------------------------------------------------------------------

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_tcp4(source, source_port, dest="127.0.0.1", dest_port=80):
    addresses = (socket.inet_aton(source) + socket.inet_aton(dest)
                 + struct.pack("!HH", source_port, dest_port))
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 80\r\n",
    v2_tcp4("203.0.113.9", 51000),
])
def test_proxy_header_sets_the_client_address(serve, header):
    with serve(environ_echo, proxy_protocol=True) as srv:
        with srv.connect(WAIT) as sock:
            sock.sendall(header)  # then the request, in the same or a later segment
            env = ask(sock)
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.9", "51000")
        with srv.connect(WAIT) as sock:
            for byte in header:  # split everywhere
                sock.sendall(bytes([byte]))
            env = ask(sock)
        assert env["REMOTE_ADDR"] == "203.0.113.9"


@pytest.mark.parametrize("header, trusted", [
    (b"PROXY UNKNOWN\r\n", False),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", False),
    (V2_SIGNATURE + b"\x21\x00\x00\x00", False),  # PROXY, source unspecified
    (V2_SIGNATURE + b"\x20\x00\x00\x00", True),  # LOCAL: the proxy's own connection
])
def test_forwarded_headers_relayed_for_an_unnamed_client_are_not_trusted(serve, header,
                                                                         trusted):
    # The proxy (127.0.0.1, trusted for forwarded headers) relays bytes from a client it
    # cannot name: that client's own X-Forwarded-For must not pass for the proxy's.
    with serve(environ_echo, proxy_protocol=True) as srv, srv.connect(WAIT) as sock:
        sock.sendall(header)
        env = ask(sock, b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n"
                        b"X-Forwarded-For: 198.51.100.7\r\n")
    assert env["REMOTE_ADDR"] == ("198.51.100.7" if trusted else "127.0.0.1")


@pytest.mark.parametrize("what, data", [
    ("no header", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("malformed", b"PROXY TCP4 203.0.113.9 127.0.0.1 99999 80\r\n"),
    ("oversized", b"PROXY TCP4 " + b"1" * 200 + b"\r\n"),
])
def test_a_bad_proxy_header_closes_without_an_answer(serve, what, data):
    with serve(environ_echo, proxy_protocol=True) as srv, srv.connect(WAIT) as sock:
        sock.sendall(data)
        assert recv_until_closed(sock, WAIT) == b""


def test_a_slow_proxy_header_is_bounded_by_the_header_timeout(serve):
    with serve(environ_echo, proxy_protocol=True, header_timeout=1) as srv:
        with srv.connect(WAIT) as sock:
            sock.sendall(b"PROXY TCP4 203.0.113.9")
            started = time.monotonic()
            assert recv_until_closed(sock, WAIT) == b""
            assert time.monotonic() - started < 10


def test_a_peer_not_allowed_is_closed(serve):
    with serve(environ_echo, proxy_protocol=True, proxy_allow_ips="192.0.2.1") as srv:
        with srv.connect(WAIT) as sock:
            sock.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 80\r\n")
            assert recv_until_closed(sock, WAIT) == b""


def test_proxy_header_and_tls_client_hello_in_one_segment(serve, tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    client = ssl.create_default_context()
    ca.configure_trust(client)
    with serve(environ_echo, proxy_protocol=True, certfile=str(tmp_path / "cert.pem"),
               keyfile=str(tmp_path / "key.pem")) as srv:
        raw = srv.connect(WAIT)
        # Hold the header back and send it glued to the ClientHello: one write.
        header = b"PROXY TCP4 203.0.113.9 127.0.0.1 51000 443\r\n"
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        raw.sendall(header + outgoing.read())
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                data = raw.recv(65536)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        if outgoing.pending:
            raw.sendall(outgoing.read())
        tls.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw.sendall(outgoing.read())
        received = b""
        while b"}" not in received:
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                data = raw.recv(65536)
                assert data
                incoming.write(data)
        raw.close()
    assert b'"REMOTE_ADDR": "203.0.113.9"' in received and b'"https"' in received
