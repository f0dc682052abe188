"""WebSocket apps served by test_websocket.py through the real command line.

flask_app   flask-sock: /echo echoes every message; /count answers the number of open sockets
wsproto_app plain WSGI with wsproto: start_response("101 Switching Protocols", ...), then the
            app speaks WebSocket on environ["greenserve.socket"] and echoes messages
"""

import base64
import hashlib

open_sockets = 0


def _make_flask_app():
    from flask import Flask
    from flask_sock import Sock

    app = Flask(__name__)
    sock = Sock(app)

    @sock.route("/echo")
    def echo(ws):
        global open_sockets
        open_sockets += 1
        try:
            while True:
                message = ws.receive()
                if message is None:
                    return
                ws.send(message)
        finally:
            open_sockets -= 1

    @app.route("/count")
    def count():
        return str(open_sockets)

    @app.route("/")
    def index():
        return "plain page"

    return app


def flask_app(environ, start_response):
    global _flask
    if _flask is None:
        _flask = _make_flask_app()
    return _flask(environ, start_response)


_flask = None

# RFC 6455 §1.3: the accept key is derived from the client's key and this GUID.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def wsproto_app(environ, start_response):
    from wsproto import ConnectionType
    from wsproto.connection import Connection
    from wsproto.events import BytesMessage, CloseConnection, TextMessage

    key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket" or not key:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"a WebSocket endpoint\n"]
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    start_response("101 Switching Protocols", [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)])
    sock = environ["greenserve.socket"]
    ws = Connection(ConnectionType.SERVER)
    parts = []
    while True:
        data = sock.recv(65536)
        ws.receive_data(data or None)
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                # A message read in several pieces arrives as several events: echo it whole.
                parts.append(event.data)
                if event.message_finished:
                    whole = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                    parts = []
                    sock.sendall(ws.send(event.__class__(data=whole)))
            elif isinstance(event, CloseConnection):
                sock.sendall(ws.send(event.response()))
                return []
        if not data:
            return []


def wsproto_stopping_app(environ, start_response):
    """As wsproto_app, and says goodbye (close 1001) as soon as greenserve begins to stop."""
    import gevent
    from wsproto import ConnectionType
    from wsproto.connection import Connection, ConnectionState
    from wsproto.events import BytesMessage, CloseConnection, TextMessage

    key = environ.get("HTTP_SEC_WEBSOCKET_KEY")
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
    start_response("101 Switching Protocols", [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)])
    sock, stopping = environ["greenserve.socket"], environ["greenserve.stopping"]
    ws = Connection(ConnectionType.SERVER)

    def goodbye():
        stopping.wait()
        sock.sendall(ws.send(CloseConnection(code=1001, reason="server stopping")))

    waiter = gevent.spawn(goodbye)
    parts = []
    try:
        while True:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    parts.append(event.data)  # echo whole messages, as wsproto_app
                    if event.message_finished:
                        whole = "".join(parts) if isinstance(event, TextMessage) \
                            else b"".join(parts)
                        parts = []
                        sock.sendall(ws.send(event.__class__(data=whole)))
                elif isinstance(event, CloseConnection):
                    if ws.state == ConnectionState.REMOTE_CLOSING:
                        sock.sendall(ws.send(event.response()))
                    return []
            if not data:
                return []
    finally:
        waiter.kill()
