"""The WebSocket chat example (examples/ws_chat.py), served by the real command line.

Two headless Chromium windows chat through it (driven over chromedriver's WebDriver API with
test_browser.py's client), and websocket-client sockets probe each of its limits: message
size, message rate, room size, slow readers, handshake checks, and text that looks like HTML.
"""

import http.client
import json
import socket
import struct

import pytest
import websocket  # websocket-client
from websocket import ABNF

import procs
from procs import WAIT, wait_until
from test_browser import CHROMEDRIVER, CHROMIUM, Browser, WebDriverError, _driver_ready

HOST = "127.0.0.1"
APP = "examples.ws_chat:app"
HOSTILE = "<img src=x onerror=alert(1)>"
# RFC 6455 §7.4.1 close codes the example sends.
UNSUPPORTED_DATA, INVALID_PAYLOAD, POLICY_VIOLATION, MESSAGE_TOO_BIG = 1003, 1007, 1008, 1009

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver: apt-get install -y chromium chromium-driver")


class Chat:
    """A running ws_chat server and clients for it."""

    def __init__(self, process):
        self.process = process
        self.host, self.port = process.address()
        self.url = f"http://{self.host}:{self.port}/"

    def connect(self, **options):
        """A websocket-client socket on /ws (it sends the Origin a page of this site would)."""
        return websocket.create_connection(f"ws://{self.host}:{self.port}/ws", timeout=WAIT,
                                           **options)

    def sockets(self):
        status, body, _ = procs.get((self.host, self.port), "/stats")
        assert status == 200, body
        return json.loads(body)["sockets"]

    def request(self, method, path, headers=None):
        """(status, headers, body) of one plain HTTP request."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=WAIT)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@pytest.fixture
def processes():
    with procs.Processes() as started:
        yield started


def assert_no_traceback(chat):
    assert "Traceback" not in chat.process.text(), chat.process.text()


@pytest.fixture
def serve(processes):
    """Start ``greenserve SPEC -b 127.0.0.1:0``; a Chat for it. Afterwards its log must
    show no error."""
    chats = []

    def serve(spec=APP):
        chats.append(Chat(processes.greenserve(spec, "-b", f"{HOST}:0")))
        return chats[-1]
    yield serve
    for chat in chats:
        assert_no_traceback(chat)


@pytest.fixture
def chat(serve):
    return serve()


@pytest.fixture
def browser(processes, tmp_path):
    # chromedriver in its own process group (procs does that): killing the group ends the
    # driver and every browser it started.
    driver = processes.start([CHROMEDRIVER, "--port=0", "--allowed-ips=127.0.0.1"])
    port = int(driver.wait_for(r"started successfully on port (\d+)", stream="stdout")[1])
    wait_until(lambda: _driver_ready(port), what="chromedriver to be ready")
    browser = Browser(port)
    browser.start(tmp_path / "profile")
    yield browser
    try:
        browser.quit()
    except (OSError, WebDriverError):
        pass  # the driver is killed with its group anyway


def chat_message(name, text):
    return json.dumps({"name": name, "text": text})


def shown(browser):
    """[name, text] of each message on the page in the current window."""
    return browser.run("return Array.from(document.querySelectorAll('#log li'), li =>"
                       " [li.querySelector('.name').textContent,"
                       "  li.querySelector('.text').textContent]);")


def open_page(browser, chat, sockets):
    """Load the chat page in the current window and wait until it is connected."""
    browser.open(chat.url)
    wait_until(lambda: chat.sockets() == sockets, what=f"{sockets} open socket(s)")
    wait_until(lambda: browser.run("return document.getElementById('status').textContent;")
               == "connected", what="the page to say it is connected")
    # A reload would lose this marker: messages must arrive in the live page.
    browser.run("window.unreloaded = true;")


def close_code(ws):
    """Read until the server's Close frame; its status code."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


# -- in the browser ---------------------------------------------------------------------------

@needs_browser
def test_message_sent_in_one_window_appears_in_both(chat, browser):
    first = browser.window()
    open_page(browser, chat, sockets=1)
    second = browser.new_window()
    browser.switch_to(second)
    open_page(browser, chat, sockets=2)

    browser.switch_to(first)
    browser.type("#name", "alice")
    browser.type("#text", "hello from window one")
    browser.click("#send")
    for window in (first, second):
        browser.switch_to(window)
        wait_until(lambda: shown(browser) == [["alice", "hello from window one"]],
                   what="the message in both windows")
        assert browser.run("return window.unreloaded === true;")
    browser.switch_to(first)
    assert browser.run("return document.getElementById('text').value;") == ""

    # And back: the second window answers, both see it.
    browser.switch_to(second)
    browser.type("#name", "bob")
    browser.type("#text", "hi alice")
    browser.click("#send")
    for window in (second, first):
        browser.switch_to(window)
        wait_until(lambda: len(shown(browser)) == 2, what="the reply in both windows")
        assert shown(browser) == [["alice", "hello from window one"], ["bob", "hi alice"]]


@needs_browser
def test_html_in_a_message_is_shown_as_text(chat, browser):
    open_page(browser, chat, sockets=1)
    ws = chat.connect()
    try:
        ws.send(chat_message("<b>mallory</b>", HOSTILE))
        assert json.loads(ws.recv()) == {"name": "<b>mallory</b>", "text": HOSTILE}
    finally:
        ws.close()
    wait_until(lambda: shown(browser), what="the message on the page")
    assert shown(browser) == [["<b>mallory</b>", HOSTILE]]
    # Had the page parsed it as HTML, these elements would exist (CSP would only stop the
    # onerror script, not the element).
    assert browser.run("return document.querySelectorAll('img, #log b').length;") == 0
    with pytest.raises(WebDriverError, match="no such alert"):
        browser.call("GET", "/alert/text")


def test_the_page_allows_only_its_own_script(chat):
    status, headers, body = chat.request("GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
    assert b"new WebSocket(" in body and b"textContent" in body and b"innerHTML" not in body


# -- limits, with raw sockets -----------------------------------------------------------------

def _one_frame(ws, size):
    ws.send("x" * size)


def _fragments(ws, size):
    # Each frame is under the limit; the message they make is not.
    part = size // 3 + 1
    ws.send_frame(ABNF.create_frame("x" * part, ABNF.OPCODE_TEXT, fin=0))
    ws.send_frame(ABNF.create_frame("x" * part, ABNF.OPCODE_CONT, fin=0))
    ws.send_frame(ABNF.create_frame("x" * part, ABNF.OPCODE_CONT, fin=1))


def _a_megabyte(ws, size):
    ws.send("x" * (1 << 20))


@pytest.mark.parametrize("send_oversized", [_one_frame, _fragments, _a_megabyte])
def test_an_oversized_message_closes_that_socket_alone(chat, send_oversized):
    other, big = chat.connect(), chat.connect()
    try:
        # Exactly 4 KiB is still a message (JSON padded with spaces)...
        largest = chat_message("carol", "fits")
        big.send(largest + " " * (4096 - len(largest)))
        assert json.loads(other.recv()) == {"name": "carol", "text": "fits"}
        assert json.loads(big.recv()) == {"name": "carol", "text": "fits"}
        # ...one byte more is not.
        send_oversized(big, 4097)
        assert close_code(big) == MESSAGE_TOO_BIG
        wait_until(lambda: chat.sockets() == 1, what="the closed socket to leave the room")
        other.send(chat_message("bob", "still here"))
        assert json.loads(other.recv()) == {"name": "bob", "text": "still here"}
    finally:
        other.close()
        big.close()


def _binary(ws):
    ws.send_binary(b"\x00\x01")


def _bad_utf8(ws):
    ws.send_frame(ABNF.create_frame(b"\xff\xfe", ABNF.OPCODE_TEXT))


def _flood(ws):
    for i in range(30):  # 10 at once and 5 a second are allowed
        ws.send(chat_message("flood", str(i)))


@pytest.mark.parametrize("misbehave, code", [(_binary, UNSUPPORTED_DATA),
                                             (_bad_utf8, INVALID_PAYLOAD),
                                             (_flood, POLICY_VIOLATION)])
def test_a_misbehaving_socket_is_closed_with_the_reason(chat, misbehave, code):
    ws = chat.connect()
    try:
        misbehave(ws)
        assert close_code(ws) == code
    finally:
        ws.close()
    wait_until(lambda: chat.sockets() == 0, what="the socket to leave the room")


@pytest.fixture(scope="module")
def lenient_chat():
    """One server shared by the tests that leave no state behind; its rate limit is raised
    so that they may send many messages."""
    with procs.Processes() as started:
        chat = Chat(started.greenserve("examples.ws_chat:make_app(rate=1000.0, burst=1000)",
                                       "-b", f"{HOST}:0"))
        yield chat
        assert_no_traceback(chat)


INVALID = {
    "not JSON": "not json",
    "not an object": "[]",
    "nested too deep": "[" * 3000,
    "text not a string": '{"name": "x", "text": 5}',
    "blank text": chat_message("x", "   "),
    "name too long": chat_message("x" * 41, "hi"),
    "text too long": chat_message("x", "y" * 501),
    "direction override": chat_message("\u202eevil", "hi"),
    "control character": chat_message("x", "a\x00b"),
    "lone surrogate": '{"text": "\\ud800"}',
}


@pytest.mark.parametrize("message", INVALID.values(), ids=INVALID.keys())
def test_an_invalid_message_earns_its_sender_an_error(lenient_chat, message):
    chat = lenient_chat
    ws, other = chat.connect(), chat.connect()
    try:
        ws.send(message)
        assert set(json.loads(ws.recv())) == {"error"}
        # The socket stays open, and nobody else heard the bad message.
        ws.send(chat_message("x", "fine"))
        assert json.loads(ws.recv()) == {"name": "x", "text": "fine"}
        assert json.loads(other.recv()) == {"name": "x", "text": "fine"}
    finally:
        ws.close()
        other.close()


def test_a_full_room_refuses_with_503(serve):
    chat = serve("examples.ws_chat:make_app(max_sockets=2)")
    first, second = chat.connect(), chat.connect()
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            chat.connect()
        assert refused.value.status_code == 503
        first.close()
        wait_until(lambda: chat.sockets() == 1, what="a place in the room")
        first = chat.connect()
        first.send(chat_message("dan", "in"))
        assert json.loads(second.recv()) == {"name": "dan", "text": "in"}
    finally:
        first.close()
        second.close()


def _handshake_only(chat):
    """A socket that completes the WebSocket handshake and then reads nothing at all."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills quickly
    sock.settimeout(WAIT)
    sock.connect((chat.host, chat.port))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: leave every frame after the head unread
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def read_to_the_end(sock):
    """Read until the stream ends (a timeout fails the test)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass  # the server cut it with data still unsent: just as ended


def test_a_client_that_does_not_keep_up_is_dropped(serve):
    chat = serve("examples.ws_chat:make_app(outbox=4, rate=1e9, burst=1000000)")
    slow = _handshake_only(chat)
    fast = chat.connect()
    try:
        wait_until(lambda: chat.sockets() == 2, what="both sockets in the room")
        message = chat_message("fast", "é" * 500)  # about 3 KB once the server escapes it
        # The kernel buffers a few MB for the slow reader; then its outbox fills. The fast
        # client reads each echo, so it keeps up whatever the pace.
        for sent in range(1, 20001):
            fast.send(message)
            fast.recv()
            if sent % 100 == 0 and chat.sockets() == 1:
                break
        assert chat.sockets() == 1, f"the slow client is still in the room after {sent}"
        # The slow client finds its stream cut once it reads what was buffered.
        read_to_the_end(slow)
        fast.send(chat_message("fast", "still here"))
        assert json.loads(fast.recv()) == {"name": "fast", "text": "still here"}
    finally:
        fast.close()
        slow.close()


# -- the handshake ----------------------------------------------------------------------------

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


BAD_HANDSHAKES = {
    "no upgrade": ("GET", None, 400),
    "version 8": ("GET", {"Sec-WebSocket-Version": "8"}, 426),
    "5-byte key": ("GET", {"Sec-WebSocket-Key": "c2hvcnQ="}, 400),
    "key not base64": ("GET", {"Sec-WebSocket-Key": "!" * 24}, 400),
    "other site": ("GET", {"Origin": "http://evil.example"}, 403),
    "null origin": ("GET", {"Origin": "null"}, 403),
    "broken origin": ("GET", {"Origin": "http://[::1"}, 403),
    "POST": ("POST", {}, 405),
}


@pytest.mark.parametrize("method, changes, status", BAD_HANDSHAKES.values(),
                         ids=BAD_HANDSHAKES.keys())
def test_a_bad_handshake_is_refused(lenient_chat, method, changes, status):
    headers = None if changes is None else {**UPGRADE, **changes}
    got, response_headers, body = lenient_chat.request(method, "/ws", headers)
    assert got == status, body
    if status == 426:
        assert response_headers["Sec-WebSocket-Version"] == "13"
        # RFC 9110 §15.5.22, §7.8: the protocol to switch to, as a connection option too.
        assert response_headers["Upgrade"] == "websocket"
        assert "upgrade" in response_headers["Connection"].lower()


def test_an_http_1_0_request_is_not_an_upgrade(lenient_chat):
    request = (b"GET /ws HTTP/1.0\r\nHost: x\r\n"
               + b"".join(f"{name}: {value}\r\n".encode() for name, value in UPGRADE.items())
               + b"\r\n")
    with socket.create_connection((lenient_chat.host, lenient_chat.port), timeout=WAIT) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 400, response.read()


def test_a_page_of_this_site_may_connect(lenient_chat):
    chat = lenient_chat
    ws = chat.connect(origin=f"http://{chat.host}:{chat.port}")
    try:
        ws.send(chat_message("eve", "same site"))
        assert json.loads(ws.recv()) == {"name": "eve", "text": "same site"}
    finally:
        ws.close()


def test_without_wsproto_the_error_names_the_package(processes, tmp_path):
    # A sitecustomize that hides wsproto, as if it were not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['wsproto'] = None\n")
    server = processes.greenserve(APP, "-b", f"{HOST}:0",
                                  env=procs.environment(pythonpath=[tmp_path]))
    assert server.exit_code() == 2
    assert "pip install wsproto" in server.output().splitlines()[-1]


def test_behind_a_proxy_the_allowed_origins_are_named(serve):
    chat = serve("examples.ws_chat:make_app(allowed_origins=['https://chat.example'])")
    ws = chat.connect(origin="https://chat.example")  # the Host is 127.0.0.1:PORT
    try:
        ws.send(chat_message("eve", "through the proxy"))
        assert json.loads(ws.recv()) == {"name": "eve", "text": "through the proxy"}
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        chat.connect()  # its own host is no longer enough
    assert refused.value.status_code == 403
