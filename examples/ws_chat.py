"""A WebSocket chat room: a page with a small chat client, and the socket it talks to.

Run it:  greenserve examples.ws_chat:app   (then open http://127.0.0.1:8000 in two windows)

It needs wsproto (``pip install wsproto``; simple-websocket and flask-sock install it too).

Routes:
  GET /       the chat page (inline JavaScript, no external assets)
  GET /ws     the WebSocket. Send JSON ``{"name", "text"}``; every open socket receives each
              message as JSON ``{"name", "text"}``. A message that is not valid earns its
              sender alone ``{"error": "..."}``.
  GET /stats  JSON ``{"sockets": N}``: sockets open right now

How it works: for a request that asks to upgrade, greenserve hands the connection's socket to
the app as ``environ["greenserve.socket"]``. The app checks the handshake, answers
``start_response("101 Switching Protocols", ...)`` and from then on speaks WebSocket on that
socket with wsproto, which only turns bytes into events and events into bytes. Each socket
costs the request's own greenlet, which reads, and one writer greenlet, which empties a small
outbox. A broadcast only puts into outboxes, so a slow client never holds up the room.

Limits, so the example can face the internet as it is (``make_app`` takes each as a keyword):
  * at most 1000 sockets; more are refused with 503 Service Unavailable;
  * a message is at most 4 KiB (the socket is closed with code 1009 beyond), a name 40 and a
    text 500 characters, without control or text-direction characters;
  * 5 messages a second per socket, in bursts of up to 10 (closed with code 1008 beyond);
  * 32 messages waiting per socket: a client that cannot keep up is disconnected;
  * a socket silent for 60 s is closed (the server pings every 25 s, and browsers answer);
  * pages of other sites cannot connect: the Origin a browser sends must match the Host;
  * the page shows names and texts as text, never as HTML, and its Content-Security-Policy
    lets no script run but its own.

One process is one room: with several workers (``-w``) each worker has its own. A stopping
server waits for open sockets up to ``--graceful-timeout`` (30 s unless set), then closes
them; pages reconnect by themselves once it is back.
"""

import base64
import binascii
import hashlib
import json
import socket
import time
import unicodedata
from urllib.parse import urlsplit

import gevent
from gevent.queue import Empty, Full, Queue

try:
    from wsproto import ConnectionType
    from wsproto.connection import Connection, ConnectionState
    from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
    from wsproto.utilities import LocalProtocolError
except ModuleNotFoundError as exc:
    if exc.name != "wsproto":
        raise
    raise ModuleNotFoundError("examples.ws_chat needs wsproto: pip install wsproto",
                              name="wsproto") from None

MAX_SOCKETS = 1000
MAX_MESSAGE = 4096      # bytes in one incoming message, however many frames carry it
MAX_NAME = 40           # characters
MAX_TEXT = 500          # characters
RATE = 5.0              # messages a second per socket, on average...
BURST = 10              # ...with this many at once
OUTBOX = 32             # frames waiting for one slow client before it is dropped
PING_INTERVAL = 25.0    # seconds without sending before the server pings
IDLE_TIMEOUT = 60.0     # seconds without receiving (or sending) before a socket is dropped
CLOSE_TIMEOUT = 5.0     # seconds to wait for the client's half of a closing handshake
RECV_SIZE = 16384

# RFC 6455 §7.4.1: the close codes this app uses.
UNSUPPORTED_DATA = 1003
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009

# RFC 6455 §1.3: the accept key is the SHA-1 of the client's key followed by this GUID.
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Unicode UAX #9 §2.1-2.4: explicit direction marks, embeddings, overrides and isolates. In a
# name they could make the text shown after it read backwards ("Trojan Source" spoofing).
DIRECTION_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                               "\u2066\u2067\u2068\u2069")


class BadMessage(ValueError):
    """A chat message the room will not take; the text is told to its sender."""


def parse_message(raw):
    """``(name, text)`` from a client's JSON message, or BadMessage saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise BadMessage('send JSON {"name": ..., "text": ...}') from None
    if not isinstance(data, dict):
        raise BadMessage('send JSON {"name": ..., "text": ...}')
    name, text = data.get("name", ""), data.get("text", "")
    if not isinstance(name, str) or not isinstance(text, str):
        raise BadMessage("name and text must be strings")
    name = name.strip() or "anonymous"
    text = text.strip()
    if not text:
        raise BadMessage("text is empty")
    if len(name) > MAX_NAME or len(text) > MAX_TEXT:
        raise BadMessage(f"a name is at most {MAX_NAME} and a text {MAX_TEXT} characters")
    if not (_printable(name) and _printable(text)):
        raise BadMessage("control characters are not allowed")
    return name, text


def _printable(text):
    # Unicode general categories Cc (controls) and Cs (lone surrogates, which a JSON "\\ud800"
    # escape can produce).
    return not any(unicodedata.category(char) in ("Cc", "Cs") or char in DIRECTION_CONTROLS
                   for char in text)


# -- the handshake ----------------------------------------------------------------------------

def _tokens(header):
    return {token.strip().lower() for token in header.split(",")}


def _valid_key(key):
    try:
        # RFC 6455 §4.2.1 item 5: the key is a base64-encoded value of 16 bytes.
        return len(key) == 24 and len(base64.b64decode(key.encode("ascii"), validate=True)) == 16
    except (UnicodeEncodeError, binascii.Error):
        return False


def _same_site(origin, host, allowed_origins):
    if allowed_origins is not None:
        return origin in allowed_origins
    try:
        parts = urlsplit(origin)
    except ValueError:  # e.g. "http://[::1": not an origin a browser would send
        return False
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def handshake_refusal(environ, allowed_origins=None):
    """Why this request cannot become a WebSocket, as ``(status, headers, text)``; None if
    it can."""
    # RFC 6455 §4.2.1 item 1: the opening handshake is a GET request.
    if environ["REQUEST_METHOD"] != "GET":
        return "405 Method Not Allowed", [("Allow", "GET")], "use GET"
    # RFC 6455 §4.2.1 items 1, 3 and 4: HTTP/1.1 (RFC 9110 §7.8: Upgrade in an HTTP/1.0
    # request is ignored), Upgrade names websocket, Connection names Upgrade.
    if environ.get("SERVER_PROTOCOL") != "HTTP/1.1" or \
            "websocket" not in _tokens(environ.get("HTTP_UPGRADE", "")) or \
            "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        return "400 Bad Request", [], "this is a WebSocket endpoint: connect with a WebSocket"
    # RFC 6455 §4.2.2 and §4.4: only version 13 is spoken, and the refusal says so; RFC 9110
    # §15.5.22: a 426 names the protocol in Upgrade, with the "upgrade" connection option.
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "").strip() != "13":
        return ("426 Upgrade Required", [("Sec-WebSocket-Version", "13"),
                                         ("Upgrade", "websocket"), ("Connection", "Upgrade")],
                "only WebSocket version 13 is supported")
    if not _valid_key(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")):
        return "400 Bad Request", [], "Sec-WebSocket-Key must be 16 bytes in base64"
    origin = environ.get("HTTP_ORIGIN")
    # RFC 6455 §10.2: a server that only serves its own pages refuses other origins, so a
    # page elsewhere cannot open a socket in its visitors' name.
    if origin is not None and not _same_site(origin, environ.get("HTTP_HOST", ""),
                                             allowed_origins):
        return "403 Forbidden", [], "connections from other sites are not allowed"
    return None


def accept_key(key):
    """Sec-WebSocket-Accept for the client's Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WEBSOCKET_GUID).digest()).decode()


# -- the room and its sockets -----------------------------------------------------------------

class Limits:
    """How much one room and each of its sockets may take."""

    def __init__(self, max_sockets=MAX_SOCKETS, max_message=MAX_MESSAGE, outbox=OUTBOX,
                 rate=RATE, burst=BURST):
        self.max_sockets, self.max_message, self.outbox = max_sockets, max_message, outbox
        self.rate, self.burst = rate, burst


class Room:
    """The open sockets; a message to the room goes into each one's outbox."""

    def __init__(self, limits):
        self.limits = limits
        self.clients = set()

    def full(self):
        return len(self.clients) >= self.limits.max_sockets

    def broadcast(self, text):
        for client in list(self.clients):
            client.send(TextMessage(data=text))


class Client:
    """One open WebSocket. The request's greenlet reads; a writer greenlet is the only one
    that writes, so frames never interleave on the wire."""

    def __init__(self, room, sock):
        self.room = room
        self.sock = sock
        # No extensions offered or accepted: with permessage-deflate, 4 KiB on the wire could
        # inflate to megabytes before any size check saw them.
        self.ws = Connection(ConnectionType.SERVER)
        self.outbox = Queue(room.limits.outbox)
        self.tokens = float(room.limits.burst)
        self.refilled = time.monotonic()
        self.parts, self.size = [], 0  # the message being received, frame by frame
        self.closing = False           # we sent Close and wait for the client's
        self.dropped = False
        self.writer = None

    def run(self):
        """Serve the socket until it closes."""
        self.sock.settimeout(IDLE_TIMEOUT)
        self.writer = gevent.spawn(self._write_loop)
        try:
            self._read_loop()
        finally:
            self._finish()

    def send(self, event):
        """Frame ``event`` and leave it for the writer; a full outbox drops the client."""
        if self.dropped:
            return
        try:
            data = self.ws.send(event)
        except LocalProtocolError:
            return  # the socket is closing: no more messages for it
        try:
            self.outbox.put_nowait(data)
        except Full:
            self.drop()

    def close(self, code, reason):
        """Start the closing handshake (RFC 6455 §7.1.2); the reader waits for the reply."""
        self.closing = True
        self.parts, self.size = [], 0
        self.send(CloseConnection(code=code, reason=reason))
        self.sock.settimeout(CLOSE_TIMEOUT)

    def drop(self):
        """Disconnect at once: the reader sees the end of the stream, the writer an error."""
        self.dropped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def _read_loop(self):
        ws = self.ws
        while not self.dropped:
            try:
                data = self.sock.recv(RECV_SIZE)
            except OSError:  # also the timeout: silent too long, or no reply to our Close
                return
            ws.receive_data(data or None)
            for event in ws.events():
                if not self._handle(event):
                    return

    def _handle(self, event):
        """Act on one event from the client; False once nothing more should be read."""
        if isinstance(event, TextMessage):
            if not self.closing:
                self._receive_text(event)
            return True
        if isinstance(event, BytesMessage):
            if not self.closing:
                self.close(UNSUPPORTED_DATA, "text messages only")
            return True
        if isinstance(event, Ping):
            self.send(event.response())  # RFC 6455 §5.5.2: a Ping is answered with a Pong
            return True
        if isinstance(event, CloseConnection):
            if self.ws.state is ConnectionState.REMOTE_CLOSING:
                # RFC 6455 §5.5.1: the client closed first; answer its Close with one.
                self.send(event.response())
            elif self.ws.state is ConnectionState.OPEN:
                # wsproto found broken framing or bad UTF-8 (RFC 6455 §7.1.7, §8.1); its
                # event carries the close code to send.
                self.send(CloseConnection(code=event.code, reason=event.reason))
            return False  # CLOSED: the handshake is complete, or the connection is lost
        return True  # a Pong: receiving it already reset the idle timeout

    def _receive_text(self, event):
        self.size += len(event.data.encode("utf-8"))
        if self.size > self.room.limits.max_message:
            self.close(MESSAGE_TOO_BIG, f"messages are at most {self.room.limits.max_message}"
                                        " bytes")
            return
        self.parts.append(event.data)
        if not event.message_finished:
            return
        raw, self.parts, self.size = "".join(self.parts), [], 0
        if not self._take_token():
            self.close(POLICY_VIOLATION, "too many messages")
            return
        try:
            name, text = parse_message(raw)
        except BadMessage as exc:
            self.send(TextMessage(data=json.dumps({"error": str(exc)})))
            return
        self.room.broadcast(json.dumps({"name": name, "text": text}))

    def _take_token(self):
        """A token bucket: ``rate`` messages a second, ``burst`` at once."""
        limits = self.room.limits
        now = time.monotonic()
        self.tokens = min(limits.burst, self.tokens + (now - self.refilled) * limits.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def _write_loop(self):
        while True:
            try:
                data = self.outbox.get(timeout=PING_INTERVAL)
            except Empty:
                try:
                    data = self.ws.send(Ping())  # keeps proxies from closing an idle socket
                except LocalProtocolError:
                    continue  # closing: the reader's timeout ends it
            if data is None:
                return  # the reader is done and everything before this was sent
            try:
                self.sock.sendall(data)
            except OSError:  # the client left, or read nothing for IDLE_TIMEOUT
                self.drop()
                return

    def _finish(self):
        """Let the writer send what is queued (the Close reply last), within CLOSE_TIMEOUT."""
        if not self.dropped:
            try:
                self.outbox.put_nowait(None)
            except Full:
                self.drop()
        if not self.dropped:
            self.writer.join(CLOSE_TIMEOUT)
        self.writer.kill()


# -- the app ----------------------------------------------------------------------------------

def _respond(start_response, status, headers, body, content_type):
    body = body.encode("utf-8") if isinstance(body, str) else body
    start_response(status, [("Content-Type", content_type),
                            ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store"), *headers])
    return [body]


def _text(start_response, status, text, headers=()):
    return _respond(start_response, status, list(headers), text + "\n",
                    "text/plain; charset=utf-8")


def _websocket(environ, start_response, room, allowed_origins):
    refusal = handshake_refusal(environ, allowed_origins)
    if refusal is not None:
        status, headers, text = refusal
        return _text(start_response, status, text, headers)
    # gunicorn's key, which other servers that hand over the socket use as well.
    sock = environ.get("greenserve.socket") or environ.get("gunicorn.socket")
    if sock is None:
        return _text(start_response, "501 Not Implemented",
                     "this server does not hand connections to the app: run greenserve")
    if room.full():
        return _text(start_response, "503 Service Unavailable",
                     "the chat is full; try again later", [("Retry-After", "30")])
    client = Client(room, sock)
    room.clients.add(client)
    try:
        start_response("101 Switching Protocols", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(environ["HTTP_SEC_WEBSOCKET_KEY"]))])
        client.run()
    finally:
        room.clients.discard(client)
    return []


def make_app(allowed_origins=None, **limits):
    """A chat WSGI app with its own room.

    ``allowed_origins``: page origins (``"https://chat.example.com"``) allowed to connect,
    for when a proxy in front changes the Host header; by default the Origin must match the
    Host. ``limits``: ``max_sockets``, ``max_message``, ``outbox``, ``rate``, ``burst``.
    """
    room = Room(Limits(**limits))
    allowed = None if allowed_origins is None else frozenset(allowed_origins)

    def ws_chat_app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        method = environ["REQUEST_METHOD"]
        if path == "/ws":
            return _websocket(environ, start_response, room, allowed)
        if path not in ("/", "/stats"):
            return _text(start_response, "404 Not Found", "not found")
        if method not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET",
                         [("Allow", "GET, HEAD")])
        if path == "/stats":
            return _respond(start_response, "200 OK", [],
                            json.dumps({"sockets": len(room.clients)}), "application/json")
        return _respond(start_response, "200 OK", PAGE_HEADERS, PAGE, "text/html; charset=utf-8")

    ws_chat_app.room = room
    return ws_chat_app


# -- the page ---------------------------------------------------------------------------------

STYLE = """
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; }
  #log { list-style: none; padding: 0; min-height: 10em; border: 1px solid #ccc; }
  #log li { padding: .2em .5em; border-bottom: 1px solid #eee; overflow-wrap: anywhere; }
  #log .name { font-weight: bold; margin-right: .5em; }
  #status { color: #777; font-size: 80%; }
  form { display: flex; gap: .5em; margin-top: 1em; }
  #text { flex: 1; }
"""

SCRIPT = """
"use strict";
const log = document.getElementById("log");
const status = document.getElementById("status");
const nameField = document.getElementById("name");
const textField = document.getElementById("text");
let socket = null;
let retryDelay = 1000;

function show(message) {
  const item = document.createElement("li");
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = message.name;      // textContent: whatever they send stays text
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = message.text;
  item.append(name, text);
  log.append(item);
  item.scrollIntoView({block: "nearest"});
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + "/ws");
  socket.onopen = () => {
    retryDelay = 1000;
    status.textContent = "connected";
  };
  socket.onmessage = event => {
    let message;
    try { message = JSON.parse(event.data); } catch (error) { return; }
    if (typeof message.error === "string") status.textContent = "not sent: " + message.error;
    else if (typeof message.name === "string" && typeof message.text === "string") show(message);
  };
  socket.onclose = event => {
    // Back off (1 s, 2 s, ... 30 s) so a full or restarting server is not hammered.
    const seconds = Math.round(retryDelay / 1000);
    status.textContent = "disconnected (" + event.code + "), reconnecting in " + seconds + " s";
    setTimeout(connect, retryDelay);
    retryDelay = Math.min(retryDelay * 2, 30000);
  };
}

document.getElementById("form").addEventListener("submit", event => {
  event.preventDefault();
  const text = textField.value.trim();
  if (!text) return;
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    status.textContent = "not connected yet";
    return;
  }
  socket.send(JSON.stringify({name: nameField.value, text: text}));
  textField.value = "";
});

connect();
"""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>greenserve WebSocket chat</title>
<style>{STYLE}</style>
</head>
<body>
<h1>greenserve WebSocket chat</h1>
<ul id="log"></ul>
<form id="form">
  <input id="name" placeholder="name" maxlength="{MAX_NAME}" size="10">
  <input id="text" placeholder="say something" maxlength="{MAX_TEXT}" autocomplete="off">
  <button id="send" type="submit">Send</button>
</form>
<p id="status">connecting...</p>
<script>{SCRIPT}</script>
</body>
</html>
""".encode()


def _csp_hash(source):
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# Only the page's own script and style may run, and it may connect only to this server
# (CSP Level 3, "Does url match expression in origin": 'self' covers ws:// and wss:// to the
# page's own host and port), so even a missed escape could not run an injected script.
PAGE_HEADERS = [
    ("Content-Security-Policy",
     f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
     "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
]

app = make_app()
