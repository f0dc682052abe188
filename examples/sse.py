"""A server-sent events clock: one ``text/event-stream`` event per tick, live in the browser.

Run it:  greenserve examples.sse:app   (then open http://127.0.0.1:8000)

Routes:
  GET /                          a page whose EventSource shows the ticks
  GET /events?interval=SECONDS   the stream (interval 0.05-60, default 1); each event has an
                                 ``id`` (the tick number, so a reconnecting EventSource resumes
                                 from Last-Event-ID) and JSON data ``{"tick", "time", "iso"}``
  GET /stats                     JSON ``{"streams": N}``: streams open right now

Each stream is the request's own greenlet sleeping between ticks. It sleeps on
``environ["greenserve.disconnected"].wait(interval)`` so a client that leaves ends its stream
at once rather than at the next failed send; with servers that lack the key, the failed send
ends it (the server closes the generator).
"""

import json
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs

import gevent

DEFAULT_INTERVAL = 1.0
MIN_INTERVAL, MAX_INTERVAL = 0.05, 60.0


class Streams:
    """How many event streams are open (for /stats and the tests)."""

    open = 0


def _interval(environ):
    raw = parse_qs(environ.get("QUERY_STRING", "")).get("interval", [None])[0]
    if raw is None:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if MIN_INTERVAL <= value <= MAX_INTERVAL else None


def _last_event_id(environ):
    raw = environ.get("HTTP_LAST_EVENT_ID", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 18 else 0


def ticks(interval, first_tick, disconnected):
    """The event stream: one event now, then one per interval until the client leaves."""
    Streams.open += 1
    try:
        # Tell EventSource how soon to reconnect if the connection drops.
        yield b"retry: 2000\n\n"
        tick = first_tick
        while True:
            tick += 1
            now = time.time()
            data = json.dumps({
                "tick": tick,
                "time": now,
                "iso": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds"),
            })
            yield f"id: {tick}\nevent: tick\ndata: {data}\n\n".encode()
            if disconnected is not None:
                if disconnected.wait(interval):
                    return  # the client left while we slept
            else:
                gevent.sleep(interval)
    finally:
        # Runs on return, and on GeneratorExit when the server closes us after a failed send.
        Streams.open -= 1


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    if method not in ("GET", "HEAD"):
        return _plain(start_response, "405 Method Not Allowed", b"use GET\n")
    if path == "/events":
        interval = _interval(environ)
        if interval is None:
            return _plain(start_response, "400 Bad Request",
                          b"interval must be a number of seconds from 0.05 to 60\n")
        start_response("200 OK", [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            # nginx would otherwise buffer the stream and deliver ticks in bursts.
            ("X-Accel-Buffering", "no"),
        ])
        if method == "HEAD":
            return []
        return ticks(interval, _last_event_id(environ),
                     environ.get("greenserve.disconnected"))
    if path == "/stats":
        body = json.dumps({"streams": Streams.open}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(PAGE)))])
        return [PAGE]
    return _plain(start_response, "404 Not Found", b"not found\n")


def _plain(start_response, status, body):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>greenserve SSE clock</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; }
  #clock { font: 2.5em monospace; }
  #status { color: #777; }
</style>
</head>
<body>
<h1>Server-sent events</h1>
<div id="clock">--:--:--</div>
<p>tick <span id="tick">0</span> &middot; <span id="status">connecting...</span></p>
<script>
"use strict";
const source = new EventSource("/events");
source.addEventListener("tick", event => {
  const data = JSON.parse(event.data);
  document.getElementById("clock").textContent = data.iso.slice(11, 23);
  document.getElementById("tick").textContent = data.tick;
});
source.onopen = () => { document.getElementById("status").textContent = "live"; };
source.onerror = () => { document.getElementById("status").textContent = "reconnecting..."; };
</script>
</body>
</html>
"""
