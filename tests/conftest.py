"""Shared fixtures: a real greenserve Server on 127.0.0.1:0, and raw-socket helpers.

The server runs in its own thread with its own gevent hub (nothing is monkey-patched in the
test process), so tests talk to it with ordinary blocking clients: raw sockets,
http.client, urllib3, curl. Apps are wrapped in ``wsgiref.validate`` unless a test says not.
"""

import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from wsgiref.validate import validator

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class RunningServer:
    """Handle on a server running in a background thread."""

    def __init__(self, server, thread, stop_flag):
        self.server = server
        self.thread = thread
        self._stop_flag = stop_flag
        host, port = server.address[:2]
        self.host = host
        self.port = port

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def connect(self, timeout=5.0):
        """A raw client socket connected to the server."""
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def stop(self, timeout=5.0):
        self._stop_flag.set()
        self.thread.join(timeout + 5)
        assert not self.thread.is_alive(), "server thread did not stop"


@contextmanager
def running_server(app, validate=True, stop_timeout=5.0, **options):
    """Run ``app`` on 127.0.0.1:0 for the duration of the block."""
    import gevent

    from greenserve.server import Server

    options.setdefault("bind", "127.0.0.1:0")
    ready = threading.Event()
    stop_flag = threading.Event()
    box = {}

    def run():
        try:
            server = Server(validator(app) if validate else app, **options)
            server.start()
        except BaseException as exc:  # surface start-up errors in the test thread
            box["error"] = exc
            ready.set()
            return
        box["server"] = server
        ready.set()
        while not stop_flag.is_set():
            gevent.sleep(0.02)
        server.stop(timeout=stop_timeout)

    thread = threading.Thread(target=run, daemon=True, name="greenserve-test-server")
    thread.start()
    assert ready.wait(10), "server did not start"
    if "error" in box:
        raise box["error"]
    handle = RunningServer(box["server"], thread, stop_flag)
    try:
        yield handle
    finally:
        handle.stop(stop_timeout)


@pytest.fixture
def serve():
    """``with serve(app, **options) as srv:`` inside a test; stopped at the end."""
    return running_server


def recv_until_closed(sock, timeout=5.0):
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _reader(sock_or_reader, timeout):
    if hasattr(sock_or_reader, "makefile"):
        sock_or_reader.settimeout(timeout)
        return sock_or_reader.makefile("rb")
    return sock_or_reader


def read_response(sock_or_reader, timeout=5.0):
    """Read one HTTP/1.1 response: (status, headers dict, body, raw head).

    Pass a socket for one response, or a reader from ``sock.makefile("rb")`` to read several
    pipelined responses without losing buffered bytes. Handles Content-Length, chunked and
    close-delimited bodies; bodiless HEAD responses must be read with ``read_head``.
    """
    reader = _reader(sock_or_reader, timeout)
    status_line, headers, raw = _read_head(reader)
    code = int(status_line.split()[1])
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = _read_chunked(reader)
    elif code in (204, 304) or code < 200:
        body = b""
    else:
        body = reader.read()
    return code, headers, body, raw


def read_head(sock_or_reader, timeout=5.0):
    """Read only a response head (for HEAD requests and 1xx): (status, headers, raw)."""
    reader = _reader(sock_or_reader, timeout)
    status_line, headers, raw = _read_head(reader)
    return int(status_line.split()[1]), headers, raw


def _read_head(reader):
    raw = b""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    raw += status_line
    headers = {}
    while True:
        line = reader.readline()
        raw += line
        if line in (b"\r\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        key = name.strip().lower()
        headers[key] = (headers[key] + ", " if key in headers else "") + value.strip()
    return status_line.decode("latin-1"), headers, raw


def _read_chunked(reader):
    body = b""
    while True:
        size_line = reader.readline()
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while reader.readline() not in (b"\r\n", b""):
                pass
            return body
        body += reader.read(size)
        assert reader.read(2) == b"\r\n"
