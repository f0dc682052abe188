"""WebSocket through greenserve's Upgrade hand-over, with real clients and real processes:
flask-sock (simple-websocket) as it runs on gunicorn, a plain WSGI app with wsproto that
sends its own 101, and a thousand sockets held open by one worker."""

import http.client
import signal
import socket
import time

import pytest
import websocket  # websocket-client

import procs
from procs import WAIT


@pytest.fixture
def serve():
    with procs.Processes() as started:
        def serve(app, *args):
            process = started.greenserve(f"ws_apps:{app}", "-b", "127.0.0.1:0", *args)
            return process, process.address()
        yield serve


def test_flask_sock_echo_with_a_real_client(serve):
    _, (host, port) = serve("flask_app", "--request-timeout", "1")
    ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=WAIT)
    try:
        for text in ["hello", "é" * 1000, "x" * 100000]:
            ws.send(text)
            assert ws.recv() == text
        ws.send_binary(b"\x00\xff" * 10)
        assert ws.recv() == b"\x00\xff" * 10
        # Longer than --request-timeout: a handed-over socket has no request deadline.
        time.sleep(1.5)  # the passing time itself is what is tested
        ws.send("still here")
        assert ws.recv() == "still here"
    finally:
        ws.close()
    # The worker serves plain requests before and after.
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"plain page"


def test_plain_wsgi_app_sending_its_own_101(serve):
    _, (host, port) = serve("wsproto_app")
    ws = websocket.create_connection(f"ws://{host}:{port}/", timeout=WAIT)
    try:
        ws.send("ping")
        assert ws.recv() == "ping"
    finally:
        ws.close()
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    conn.request("GET", "/")  # no Upgrade: an ordinary answer
    response = conn.getresponse()
    assert response.status == 400 and response.read() == b"a WebSocket endpoint\n"


def test_an_ordinary_app_ignoring_upgrade_answers_normally(serve):
    # curl --http2 asks for h2c this way: an app that knows nothing of it must still answer.
    _, address = serve("flask_app")
    with socket.create_connection(address, timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert (response.status, response.read()) == (200, b"plain page")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


def test_a_thousand_open_sockets_in_one_worker(serve, capsys):
    process, (host, port) = serve("flask_app", "--max-connections", "1200")
    warm = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=WAIT)
    warm.send("x")
    assert warm.recv() == "x"
    before = rss_kib(process.pid)
    sockets = []
    try:
        for i in range(1000):
            ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=WAIT)
            sockets.append(ws)
        for i, ws in enumerate(sockets):
            ws.send(str(i))
        assert [ws.recv() for ws in sockets] == [str(i) for i in range(1000)]
        conn = http.client.HTTPConnection(host, port, timeout=WAIT)
        conn.request("GET", "/count")
        assert conn.getresponse().read() == b"1001"
        per_socket = (rss_kib(process.pid) - before) / 1000
        with capsys.disabled():
            print(f"\n  RSS per open flask-sock WebSocket: {per_socket:.1f} KiB")
    finally:
        for ws in sockets:
            ws.close()
        warm.close()


def test_a_graceful_stop_tells_a_handed_over_socket_to_say_goodbye(serve):
    process, (host, port) = serve("wsproto_stopping_app", "--graceful-timeout", "60")
    ws = websocket.create_connection(f"ws://{host}:{port}/", timeout=WAIT)
    try:
        ws.send("before")
        assert ws.recv() == "before"
        started = time.monotonic()
        process.signal(signal.SIGTERM)
        opcode, frame = ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 1001
    finally:
        ws.close()
    # The stop ends with the app's goodbye, not at the end of --graceful-timeout (60 s).
    assert process.exit_code() == 0
    assert time.monotonic() - started < 20


def test_metrics_without_an_access_log_count_a_websocket_that_ends(serve):
    # --metrics-bind without --access-log: the end of a handed-over socket was logged to a
    # nonexistent access log, a TypeError and a traceback per WebSocket (any client could
    # fill the error log with them), and the request was never counted.
    process, (host, port) = serve("flask_app", "--metrics-bind", "127.0.0.1:0")
    admin = int(process.wait_for(r"Admin listener at http://127\.0\.0\.1:(\d+)")[1])
    ws = websocket.create_connection(f"ws://{host}:{port}/echo", timeout=WAIT)
    ws.send("hello")
    assert ws.recv() == "hello"
    ws.close()

    def upgraded_requests():
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=WAIT)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return [line for line in text.splitlines()
                if line.startswith('greenserve_requests_total{method="GET",status="1xx"}')]

    assert procs.wait_until(upgraded_requests, what="the WebSocket request counted") == \
        ['greenserve_requests_total{method="GET",status="1xx"} 1']
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"plain page"
    assert "Traceback" not in process.text()
