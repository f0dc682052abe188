"""One WSGI app that serves every load-test scenario, locust's and wrk's alike.

Every server under test runs this same ``app`` so that differences in the figures come from the
server, not the app. Routes:

  GET  /                 13-byte "Hello, World!" with Content-Length   (wrk hello, locust hello)
  GET  /64k              64 KiB body with Content-Length                     (wrk 64k)
  GET  /stream           16 chunks of 4 KiB yielded one by one, no length    (wrk + locust stream)
                         ?chunks=N&size=BYTES&delay_ms=MS change the shape
  POST /echo             reads the body and returns it                       (wrk echo-4k)
  GET  /sleep            time.sleep(0.05), cooperative under monkey-patching (wrk sleep-c1000)
                         ?ms=N changes the pause
  GET  /api/items        JSON list (?limit=N)                               (locust api)
  GET  /api/items/ID     one JSON item, 404 if unknown
  POST /api/items        JSON object in, 201 with the stored item out
  POST /upload           any body (Content-Length or chunked), answers its size and CRC-32
  GET  /poll?since=N     long poll: waits (?timeout=S, default 10) for messages after id N;
                         answers {"messages": [...], "last_id": M} like examples/chat.py
  POST /send             body is a message; wakes every waiting poll        (locust longpoll)
  GET  /big              ?bytes=N (default 100 MB) with Content-Length, yielded in pieces of
                         ?piece=BYTES (default 10 MiB)          (slowloris: slow readers, download)
  GET  /debug/counts     JSON: live greenlets and gc-tracked objects                (soak)
  GET  /nan-timer        starts a libev timer due in NaN seconds, the worst an app can do to
                         the hub's timer heap; answers 200                     (slowloris nan)

The module patches nothing and starts nothing at import: the server under test owns the hub.
"""

import functools
import gc
import json
import time
import zlib
from urllib.parse import parse_qs

import gevent
import gevent.event
import greenlet

HELLO = b"Hello, World!"
BODY_64K = b"x" * 65536
CHUNK_4K = b"y" * 4096
MAX_STREAM_BYTES = 64 * 1024 * 1024  # keeps a typo in ?size= from eating the box
MAX_MESSAGES = 1000  # the chat board keeps only the newest messages
MAX_ITEMS = 10000
MAX_BIG_BYTES = 1 << 30  # /big answers at most 1 GiB
MAX_PIECE = 16 << 20
MAX_NAN_TIMERS = 16  # a client cannot make the app keep more than this many


def _qs(environ):
    return parse_qs(environ.get("QUERY_STRING", ""))


def _int_arg(query, name, default, lo, hi):
    try:
        value = int(query[name][0])
    except (KeyError, ValueError):
        return default
    return max(lo, min(hi, value))


def _respond(start_response, status, body, ctype="text/plain"):
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response, obj, status="200 OK"):
    return _respond(start_response, status, json.dumps(obj).encode(), "application/json")


def _iter_body(environ, blocksize=65536):
    """Yield the request body whether it came with Content-Length or chunked."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        remaining = int(length)
        while remaining > 0:
            block = stream.read(min(blocksize, remaining))
            if not block:
                return
            remaining -= len(block)
            yield block
        return
    # PEP 3333 only promises a body with CONTENT_LENGTH; servers that decode chunked input
    # (all of ours) let the app read it to EOF, which is what chunked uploads need.
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked or environ.get("wsgi.input_terminated"):
        while True:
            block = stream.read(blocksize)
            if not block:
                return
            yield block


@functools.lru_cache(maxsize=4)
def _piece(size):
    """One shared bytes object per piece size, so a thousand slow readers cost no copies."""
    return b"z" * size


def big(environ, start_response):
    """``bytes`` bytes with Content-Length, yielded ``piece`` bytes at a time."""
    q = _qs(environ)
    total = _int_arg(q, "bytes", 100_000_000, 0, MAX_BIG_BYTES)
    size = _int_arg(q, "piece", 10 << 20, 1, MAX_PIECE)
    start_response(
        "200 OK",
        [("Content-Type", "application/octet-stream"), ("Content-Length", str(total))],
    )

    def pieces():
        left = total
        while left > 0:
            n = min(size, left)
            yield _piece(n) if n == size else _piece(size)[:n]
            left -= n

    return pieces()


def counts():
    """What a leak would grow: live greenlets (gevent's and plain) and gc-tracked objects.

    Walks every gc-tracked object, so it costs milliseconds: for a few samples, not for load.
    """
    objects = gc.get_objects()
    greenlets = sum(1 for o in objects if isinstance(o, greenlet.greenlet))
    return {"greenlets": greenlets, "gc_objects": len(objects)}


_nan_timers = []  # started timers stay referenced, so nothing stops them behind our back


def start_nan_timer():
    """A hub timer due in NaN seconds: NaN compares false with everything, so in libev's
    timer heap it blocks every timer queued before it (gevent.sleep would refuse NaN under
    greenserve; the loop's own timer does not)."""
    if len(_nan_timers) < MAX_NAN_TIMERS:
        timer = gevent.get_hub().loop.timer(float("nan"))
        timer.start(lambda: None)
        _nan_timers.append(timer)
    return len(_nan_timers)


class Board:
    """Chat-style board for long polls: waiters park on one Event that each send replaces."""

    def __init__(self):
        self.messages = []  # (id, text), newest last
        self.last_id = 0
        self._event = gevent.event.Event()

    def since(self, last_seen):
        return [{"id": i, "text": t} for i, t in self.messages if i > last_seen]

    def wait(self, last_seen, timeout):
        deadline = time.monotonic() + timeout
        while True:
            found = self.since(last_seen)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            # No greenlet switch between the check above and this wait, so a send cannot slip in
            # between them; each send swaps the event, so every waiter wakes exactly once per send.
            self._event.wait(remaining)

    def send(self, text):
        self.last_id += 1
        self.messages.append((self.last_id, text))
        del self.messages[:-MAX_MESSAGES]
        event, self._event = self._event, gevent.event.Event()
        event.set()
        return self.last_id


class Items:
    """A tiny in-memory JSON store for the api scenario."""

    def __init__(self, seed=100):
        self.items = {}
        self.next_id = 1
        for n in range(seed):
            self.add({"name": f"item-{n}", "price": n * 1.5, "tags": ["seed", str(n % 7)]})

    def add(self, obj):
        item = dict(obj, id=self.next_id)
        self.items[self.next_id] = item
        self.next_id += 1
        if len(self.items) > MAX_ITEMS:
            self.items.pop(next(iter(self.items)))
        return item


def make_app():
    """Build a fresh app with its own board and store (tests use one each)."""
    board = Board()
    items = Items()

    def stream(environ, start_response):
        q = _qs(environ)
        chunks = _int_arg(q, "chunks", 16, 1, 100000)
        size = _int_arg(q, "size", 4096, 1, 1 << 20)
        delay = _int_arg(q, "delay_ms", 0, 0, 10000) / 1000.0
        chunks = min(chunks, MAX_STREAM_BYTES // size)
        chunk = CHUNK_4K if size == 4096 else b"y" * size
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            for _ in range(chunks):
                if delay:
                    time.sleep(delay)
                yield chunk

        return gen()

    def api(environ, start_response, method, path):
        if path == "/api/items":
            if method == "GET":
                limit = _int_arg(_qs(environ), "limit", 20, 1, 1000)
                newest = list(items.items.values())[-limit:]
                return _json(start_response, {"items": newest, "count": len(items.items)})
            if method == "POST":
                try:
                    obj = json.loads(b"".join(_iter_body(environ)) or b"null")
                except ValueError:
                    obj = None
                if not isinstance(obj, dict):
                    return _json(
                        start_response, {"error": "expected a JSON object"}, "400 Bad Request"
                    )
                return _json(start_response, items.add(obj), "201 Created")
            return _respond(start_response, "405 Method Not Allowed", b"method not allowed\n")
        try:
            item = items.items[int(path.rsplit("/", 1)[1])]
        except (KeyError, ValueError):
            return _json(start_response, {"error": "no such item"}, "404 Not Found")
        return _json(start_response, item)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "/")
        method = environ["REQUEST_METHOD"]
        if path == "/":
            return _respond(start_response, "200 OK", HELLO)
        if path == "/64k":
            return _respond(start_response, "200 OK", BODY_64K, "application/octet-stream")
        if path == "/stream":
            return stream(environ, start_response)
        if path == "/echo":
            body = b"".join(_iter_body(environ))
            return _respond(start_response, "200 OK", body, "application/octet-stream")
        if path == "/sleep":
            time.sleep(_int_arg(_qs(environ), "ms", 50, 0, 60000) / 1000.0)
            return _respond(start_response, "200 OK", b"slept\n")
        if path.startswith("/api/items"):
            return api(environ, start_response, method, path)
        if path == "/upload":
            size, crc = 0, 0
            for block in _iter_body(environ):
                size += len(block)
                crc = zlib.crc32(block, crc)
            return _json(start_response, {"bytes": size, "crc32": crc})
        if path == "/poll":
            q = _qs(environ)
            since = _int_arg(q, "since", 0, 0, 1 << 62)
            timeout = _int_arg(q, "timeout", 10, 0, 300)
            found = board.wait(since, timeout)
            return _json(start_response, {"messages": found, "last_id": board.last_id})
        if path == "/big":
            return big(environ, start_response)
        if path == "/debug/counts":
            return _json(start_response, counts())
        if path == "/nan-timer":
            return _json(start_response, {"nan_timers": start_nan_timer()})
        if path == "/send" and method == "POST":
            text = b"".join(_iter_body(environ))[:1000].decode("utf-8", "replace")
            return _json(start_response, {"id": board.send(text)})
        return _respond(start_response, "404 Not Found", b"not found\n")

    return app


app = make_app()
