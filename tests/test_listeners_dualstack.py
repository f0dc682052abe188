"""``[::]:PORT`` serves IPv4 clients too (dual-stack), with real sockets and a real server."""

import http.client
import ipaddress
import json
import socket

import pytest

from greenserve.listeners import create_listeners, reuse_port_copies


def ipv6_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on this machine")


@pytest.fixture
def opened():
    sockets = []
    yield sockets
    for sock in sockets:
        sock.close()


def accepted_peer(listener, family, address):
    """Connect to ``address`` with a client of ``family``; the peer the listener accepts."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(address)
        listener.settimeout(10)
        conn, peer = listener.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
        return peer[0]


def test_ipv6_wildcard_takes_ipv4_clients(opened):
    (sock,) = create_listeners(["[::]:0"], 16)
    opened.append(sock)
    assert sock.family == socket.AF_INET6
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    port = sock.getsockname()[1]
    # An IPv4 client reaches it, seen as an IPv4-mapped address (RFC 4291 §2.5.5.2).
    peer = accepted_peer(sock, socket.AF_INET, ("127.0.0.1", port))
    assert ipaddress.ip_address(peer).ipv4_mapped == ipaddress.ip_address("127.0.0.1")
    # And IPv6 clients as before.
    assert accepted_peer(sock, socket.AF_INET6, ("::1", port)) == "::1"


def test_ipv4_wildcard_on_the_same_port_leaves_ipv6_wildcard_ipv6_only(opened):
    # Both wildcards on one port, as in nginx's "listen 80; listen [::]:80;". The port is
    # taken from a first SO_REUSEPORT socket (never guessed); the list then joins it.
    (first,) = create_listeners(["0.0.0.0:0"], 16, reuse_port=True)
    port = first.getsockname()[1]
    try:
        six, four = create_listeners([f"[::]:{port}", f":{port}"], 16, reuse_port=True)
    finally:
        first.close()  # leaves the reuse-port group: IPv4 clients now reach "four" only
    opened.extend([six, four])
    assert six.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert accepted_peer(four, socket.AF_INET, ("127.0.0.1", port)) == "127.0.0.1"
    assert accepted_peer(six, socket.AF_INET6, ("::1", port)) == "::1"


def test_specific_ipv6_address_stays_ipv6_only(opened):
    (sock,) = create_listeners(["[::1]:0"], 16)
    opened.append(sock)
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client, \
            pytest.raises(ConnectionRefusedError):
        client.settimeout(10)
        client.connect(("127.0.0.1", sock.getsockname()[1]))


def test_reuse_port_copies_keep_dual_stack(opened):
    (sock,) = create_listeners(["[::]:0"], 16, reuse_port=True)
    opened.append(sock)
    (copy,) = reuse_port_copies([sock], 16)
    opened.append(copy)
    assert copy is not sock
    assert copy.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert copy.getsockname()[:2] == sock.getsockname()[:2]


def environ_echo(environ, start_response):
    body = json.dumps({key: environ[key] for key in ("REMOTE_ADDR", "SERVER_NAME",
                                                     "SERVER_PORT")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def test_server_on_ipv6_wildcard_answers_an_ipv4_client(serve):
    with serve(environ_echo, bind="[::]:0") as server:
        port = server.port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            seen = json.loads(response.read())
        finally:
            conn.close()
    assert response.status == 200
    assert ipaddress.ip_address(seen["REMOTE_ADDR"]).ipv4_mapped == \
        ipaddress.ip_address("127.0.0.1")
    assert seen["SERVER_PORT"] == str(port)
