"""greenserve behind the real Apache httpd (mod_proxy_http), configured by
examples/deploy/apache.conf itself: the pass-through checks of the nginx tests.

Apache terminates TLS with a certificate from trustme and serves /static/ from disk.
See tests/proxies.py for how ports and files are chosen.
"""

import contextlib
import hashlib
import http.client
import json
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import trustme

import procs
import proxies
from conftest import read_response
from proxies import SITE, fetch, random_loopback, raw_tls, read_until

pytestmark = pytest.mark.skipif(
    not (proxies.have(proxies.APACHE) and (proxies.APACHE_MODULES / "mod_proxy_http.so").exists()),
    reason="Apache httpd with mod_proxy_http is not installed")

STATIC = b"body { color: #654321 }\n"
SECRET = b"a file next to the static folder, never to be served\n"
MAX_BODY = 5 << 20  # greenserve's --max-body-size here


@pytest.fixture(scope="module")
def stack():
    folder = proxies.shared_directory()
    (folder / "static").mkdir(mode=0o755)
    (folder / "static" / "app.css").write_bytes(STATIC)
    (folder / "static_private").mkdir(mode=0o755)
    (folder / "static_private" / "secret.txt").write_bytes(SECRET)
    for path in folder.rglob("*.*"):
        path.chmod(0o644)
    with apache_in_front(folder, "proxied:app", "--max-body-size", MAX_BODY) as site:
        yield site


@contextlib.contextmanager
def apache_in_front(folder, app, *options):
    """greenserve serving ``app`` behind Apache as examples/deploy/apache.conf sets it up
    (TLS with a trustme certificate, ``folder``/static served by Apache); yields the Site,
    and removes ``folder`` at the end."""
    ca = trustme.CA()
    try:
        with procs.Processes() as processes:
            server = processes.greenserve(app, "-b", "127.0.0.1:0", "--keep-alive", "75",
                                          *options)
            backend = f"http://127.0.0.1:{server.address()[1]}/"
            prefix = Path(tempfile.mkdtemp(prefix="apache-", dir=folder))
            prefix.chmod(0o755)
            cert = proxies.issue_certificate(ca, prefix)
            apache, host, ports = proxies.start_apache(
                processes, prefix,
                lambda host, ports: proxies.apache_site(backend, folder / "static", cert, host,
                                                        ports))
            yield proxies.Site(apache, host, ports, server, proxies.client_context(ca))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_static_files_come_from_apache(stack):
    status, headers, body = stack.get("GET", "/static/app.css")
    assert (status, body) == (200, STATIC)
    assert headers["server"].startswith("Apache") and headers["content-type"] == "text/css"


@pytest.mark.parametrize("path", ["/static/", "/static/missing.css"])
def test_static_folder_is_not_listed_and_never_reaches_the_app(stack, path):
    status, _, body = stack.get("GET", path)
    assert status in (403, 404) and b"app.css" not in body
    assert b"the app answered" not in body


@pytest.mark.parametrize("path", ["/static_private/secret.txt",
                                  "/static../static_private/secret.txt",
                                  "/static/../static_private/secret.txt",
                                  "/static/%2e%2e/static_private/secret.txt"])
def test_files_next_to_the_static_folder_stay_private(stack, path):
    status, _, body = stack.get("GET", path)
    assert SECRET not in body, (status, body)


PATHS = ["/plain", "/a%20b/caf%C3%A9/%E2%82%AC", "/semi;colon=1", "/%7Euser/%25percent"]
QUERIES = ["", "q=1", "x=%26&u=%C3%A9&empty=&plus=a+b&flag"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", PATHS)
def test_method_path_and_query_pass_through(stack, method, path):
    for query in QUERIES:
        target = path + ("?" + query if query else "")
        seen = stack.echo(method, target)
        assert seen["REQUEST_METHOD"] == method
        # mod_proxy re-encodes the path it decoded (so "%7E" may come as "~"); what it
        # means, the decoded PATH_INFO, and the query are unchanged.
        assert seen["PATH_INFO"] == urllib.parse.unquote_to_bytes(path).decode("latin-1")
        assert seen["QUERY_STRING"] == query
        assert seen["SCRIPT_NAME"] == ""


def test_encoded_slash_is_refused_by_apache(stack):
    # AllowEncodedSlashes is Off by default: Apache answers 404 itself. (nginx passes it.)
    status, headers, _ = stack.get("GET", "/slash%2Finside")
    assert status == 404 and headers["server"].startswith("Apache")


def test_head_passes_through(stack):
    status, headers, body = stack.get("HEAD", "/echo")
    assert status == 200 and body == b"" and headers["content-type"] == "application/json"


def test_headers_pass_through(stack):
    cookie = "a=1; b=" + "x" * 3000
    seen = stack.echo(headers={"X-Custom": "value with  spaces, commas",
                               "Accept-Language": "de-CH, en;q=0.5", "Cookie": cookie})
    headers = seen["headers"]
    assert headers["X_CUSTOM"] == "value with  spaces, commas"
    assert headers["ACCEPT_LANGUAGE"] == "de-CH, en;q=0.5"
    assert headers["COOKIE"] == cookie


def test_repeated_headers_arrive_in_order(stack):
    sock = raw_tls(stack.address, stack.context,
                   f"GET /echo HTTP/1.1\r\nHost: {SITE}\r\nX-Multi: one\r\nX-Multi: two\r\n"
                   f"Connection: close\r\n\r\n".encode())
    with sock:
        status, _, body, _ = read_response(sock, timeout=procs.WAIT)
    assert status == 200 and json.loads(body)["headers"]["X_MULTI"] == "one, two"


def pattern(size):
    block = hashlib.sha256(b"deploy").digest() * 2048
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("size", [0, 1, 65537, 3 << 20])
def test_request_bodies_pass_through(stack, size):
    body = pattern(size)
    seen = stack.echo("POST", "/upload", body=body,
                      headers={"Content-Type": "application/octet-stream"})
    assert seen["body"] == {"size": size, "sha256": hashlib.sha256(body).hexdigest()}
    assert seen["CONTENT_TYPE"] == "application/octet-stream"


def test_chunked_upload_passes_through(stack):
    pieces = [pattern(n) for n in (1, 100, 70000, 5, 1 << 20)]
    seen = stack.echo("PUT", "/upload", body=iter(pieces),
                      headers={"Transfer-Encoding": "chunked"})
    whole = b"".join(pieces)
    assert seen["body"] == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


def test_body_over_greenserves_limit_gets_its_413_through_apache(stack):
    # Apache's LimitRequestBody does not apply to proxied requests; --max-body-size does.
    status, headers, body = stack.get("POST", "/upload", body=b"x" * (MAX_BODY + 1))
    assert (status, headers["server"]) == (413, "greenserve")
    assert body.endswith(b"body of %d bytes is over the %d limit\n" % (MAX_BODY + 1, MAX_BODY))
    assert stack.get("POST", "/upload", body=b"x" * MAX_BODY)[0] == 200


def test_remote_addr_is_the_clients(stack):
    client = random_loopback()
    seen = stack.echo(source=client)
    assert seen["REMOTE_ADDR"] == client and seen["REMOTE_PORT"] == ""
    assert seen["greenserve.peer_addr"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["headers"]["HOST"] == f"{SITE}:{stack.https_port}"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == (SITE, str(stack.https_port))


def test_a_client_cannot_spoof_what_apache_vouches_for(stack):
    client = random_loopback()
    seen = stack.echo(source=client, headers={
        "X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "1",
        "X-Forwarded-Prefix": "/evil", "X-Forwarded-Ssl": "off",
        "Forwarded": "for=198.51.100.1;proto=http;host=evil.example"})
    assert seen["REMOTE_ADDR"] == client
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["headers"]["HOST"] == f"{SITE}:{stack.https_port}"
    assert seen["headers"]["X_FORWARDED_HOST"] == f"{SITE}:{stack.https_port}"  # Apache's own
    assert seen["SERVER_PORT"] == str(stack.https_port)
    assert seen["SCRIPT_NAME"] == ""
    for cleared in ("X_FORWARDED_PORT", "X_FORWARDED_PREFIX", "X_FORWARDED_SSL", "FORWARDED"):
        assert cleared not in seen["headers"]


def test_streaming_response_arrives_unbuffered(stack, tmp_path):
    # mod_proxy_http passes each piece on as it comes (it flushes when the backend pauses).
    release = tmp_path / "release"
    request = (f"GET /stream?{urllib.parse.quote(str(release))} HTTP/1.1\r\nHost: {SITE}\r\n"
               f"Connection: close\r\n\r\n").encode()
    with raw_tls(stack.address, stack.context, request) as sock:
        stream = sock.makefile("rb")
        assert read_until(stream, b"first\n").startswith(b"HTTP/1.1 200 ")
        release.touch()
        read_until(stream, b"second\n")


def test_backend_connections_are_reused(stack):
    ports = [stack.echo(headers={"Connection": "close"})["greenserve.peer_port"]
             for _ in range(30)]
    # One Apache process, requests one after the other: its pooled connection is reused.
    assert len(set(ports)) <= 2, ports


def test_plain_http_redirects_to_https(stack):
    connection = http.client.HTTPConnection(stack.host, stack.http_port, timeout=procs.WAIT)
    try:
        status, headers, _ = fetch(connection, "GET", "/x?y=1", headers={"Host": SITE})
    finally:
        connection.close()
    assert status == 301
    assert headers["location"] == f"https://{SITE}:{stack.https_port}/x?y=1"


# -- WebSocket ------------------------------------------------------------------------------------

def test_flask_sock_websocket_through_apache():
    import websocket  # websocket-client

    folder = proxies.shared_directory()
    (folder / "static").mkdir(mode=0o755)
    with apache_in_front(folder, "ws_apps:flask_app") as site:
        tls = site.context.wrap_socket(
            socket.create_connection(site.address, timeout=procs.WAIT),
            server_hostname=SITE)
        ws = websocket.create_connection(f"wss://{SITE}:{site.https_port}/echo",
                                         socket=tls, timeout=procs.WAIT)
        try:
            for message in ("through apache", "é" * 5000):
                ws.send(message)
                assert ws.recv() == message
            # The close handshake goes both ways: the app's close frame comes back.
            ws.send_close(websocket.STATUS_NORMAL, b"done")
            opcode, frame = ws.recv_data_frame(True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
        finally:
            ws.shutdown()
        # Ordinary requests still go through.
        status, _, body = site.get("GET", "/")
        assert (status, body) == (200, b"plain page")

