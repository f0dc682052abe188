"""The app the reverse-proxy tests put behind nginx and Apache (``proxied:app``).

GET /stream?FILE    "first" at once, then "second" once FILE exists; sends
                    "X-Accel-Buffering: no" unless the query has "&buffered" after FILE
GET /who            "INSTANCE PID" (INSTANCE from the environment variable of that name)
GET /static/...     "the app answered": a request nginx should have served from disk
anything else       JSON of what the app received: method, paths, query, the client as the
                    server sees it, the headers, and the body's length and sha256 (read
                    without CONTENT_LENGTH too, as wsgi.input_terminated allows)
"""

import hashlib
import json
import os
import time
import urllib.parse
from wsgiref.validate import validator

SEEN_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI",
             "REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME", "SERVER_PORT", "CONTENT_LENGTH",
             "CONTENT_TYPE", "wsgi.url_scheme", "greenserve.peer_addr",
             "greenserve.peer_port")


def _reply(start_response, body, content_type="text/plain", extra=()):
    data = body.encode("utf-8") if isinstance(body, str) else body
    start_response("200 OK", [("Content-Type", content_type),
                              ("Content-Length", str(len(data))), *extra])
    return [data]


def _echo(environ, start_response):
    digest, size = hashlib.sha256(), 0
    stream = environ["wsgi.input"]
    while True:
        block = stream.read(65536)
        if not block:
            break
        digest.update(block)
        size += len(block)
    seen = {key: environ[key] for key in SEEN_KEYS if key in environ}
    seen["headers"] = {key[5:]: value for key, value in environ.items()
                       if key.startswith("HTTP_")}
    seen["body"] = {"size": size, "sha256": digest.hexdigest()}
    return _reply(start_response, json.dumps(seen), "application/json")


def _stream(environ, start_response):
    release, _, option = environ["QUERY_STRING"].partition("&")
    release = urllib.parse.unquote(release)
    headers = [("Content-Type", "text/plain")]
    if option != "buffered":
        headers.append(("X-Accel-Buffering", "no"))
    start_response("200 OK", headers)
    yield b"first\n"
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)  # cooperative: the server monkey-patched time.sleep
    yield b"second\n"


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        return _stream(environ, start_response)
    if path == "/who":
        return _reply(start_response, f"{os.environ.get('INSTANCE', '-')} {os.getpid()}")
    if path.startswith("/static/"):
        return _reply(start_response, "the app answered")
    return _echo(environ, start_response)


app = validator(_app)
