"""A long-polling chat room: thousands of browsers can wait at once, each costing one request.

Run it:  greenserve examples.chat:app   (then open http://127.0.0.1:8000 in two windows)

Routes:
  GET  /                the chat page (inline JavaScript, no external assets)
  GET  /poll?since=N    JSON ``{"messages": [...], "last_id": M}`` with the messages whose id is
                        greater than N; waits up to ~25 s for one if there is none yet
  POST /send            a message, as a form (``name``, ``text``) or JSON ``{"name", "text"}``
  GET  /stats           JSON ``{"waiters": W, "last_id": M}`` (W: polls waiting right now)

How waiting stays cheap: a poll with nothing new returns ``greenserve.respond_later(...)`` on
the room's one ``gevent.event.Event``, so a waiting poll holds no greenlet at all (about 3 KiB
each instead of 10); a new message sets that event and installs a fresh one, so one post wakes
everybody with no per-waiter queue or timer thread. A poller whose client resets is answered
(and dropped from the waiters) at once instead of holding its slot until the poll timeout.
Under another gevent server the same code waits in the request's greenlet instead.
"""

import json
from collections import deque
from urllib.parse import parse_qs

from gevent.event import Event

from greenserve import respond_later

POLL_TIMEOUT = 25.0     # seconds; below common proxy idle timeouts (often 30-60 s)
HISTORY = 100           # messages kept for late pollers; older ones are forgotten
MAX_BODY = 4096         # bytes in one POST /send
MAX_NAME = 40           # characters
MAX_TEXT = 500          # characters


class BadRequest(Exception):
    """The client sent something we will not accept; carries the HTTP status."""

    def __init__(self, message, status="400 Bad Request"):
        super().__init__(message)
        self.status = status


class Room:
    """Messages with increasing ids, a bounded history, and one event that wakes all waiters."""

    def __init__(self, history=HISTORY):
        self.messages = deque(maxlen=history)
        self.last_id = 0
        self.waiters = 0
        self._arrived = Event()

    def post(self, name, text):
        self.last_id += 1
        message = {"id": self.last_id, "name": name, "text": text}
        self.messages.append(message)
        # Swap before setting: a poller that wakes and polls again must park on the new event,
        # not spin on the one that is already set.
        arrived, self._arrived = self._arrived, Event()
        arrived.set()
        return message

    def since(self, since):
        """Messages with id > since (ids are consecutive, so this is a slice of the deque)."""
        newer = self.last_id - since
        if newer <= 0:
            return []
        return list(self.messages)[-newer:]

    def poll(self, environ, since, timeout, answer):
        """``answer(messages)`` with the messages after ``since``: now if there are any,
        else once one arrives or ``timeout`` seconds pass (an empty list), without holding
        a greenlet meanwhile. Returns what the WSGI app returns."""
        if since > self.last_id:
            # The client saw ids from an earlier run of the server: give it all we have, and
            # the last_id in the reply lets it start over.
            return answer(list(self.messages))
        messages = self.since(since)
        if messages:
            return answer(messages)
        self.waiters += 1

        def respond(_arrived):
            # Runs exactly once: on a message, at the timeout, or when the client left.
            self.waiters -= 1
            return answer(self.since(since))

        return respond_later(environ, self._arrived, respond, timeout)


def _json_response(start_response, status, payload):
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def _read_body(environ, limit):
    """The request body, refusing anything over ``limit`` bytes (also for chunked bodies)."""
    length = environ.get("CONTENT_LENGTH") or ""
    if length:
        if not length.isdigit():
            raise BadRequest("bad Content-Length")
        if int(length) > limit:
            raise BadRequest(f"body over {limit} bytes", "413 Content Too Large")
        return environ["wsgi.input"].read(int(length))
    if environ.get("wsgi.input_terminated"):
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise BadRequest(f"body over {limit} bytes", "413 Content Too Large")
        return body
    return b""


def _parse_message(environ):
    body = _read_body(environ, MAX_BODY)
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    try:
        if content_type == "application/json":
            data = json.loads(body.decode("utf-8"))
            if not isinstance(data, dict):
                raise BadRequest("JSON body must be an object")
        elif content_type in ("application/x-www-form-urlencoded", ""):
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True)
            data = {key: values[0] for key, values in fields.items()}
        else:
            raise BadRequest("send a form or JSON", "415 Unsupported Media Type")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"unreadable body: {exc}") from None
    name = data.get("name", "anonymous")
    text = data.get("text")
    if not isinstance(name, str) or not isinstance(text, str):
        raise BadRequest("name and text must be strings")
    name = name.strip() or "anonymous"
    text = text.strip()
    if not text:
        raise BadRequest("text is empty")
    if len(name) > MAX_NAME or len(text) > MAX_TEXT:
        raise BadRequest(f"name is at most {MAX_NAME} and text {MAX_TEXT} characters")
    return name, text


def _parse_since(environ):
    values = parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])
    since = values[0]
    # isdigit() also accepts non-ASCII digits; int() would take "+1" and " 1".
    if not (since.isascii() and since.isdigit()) or len(since) > 18:
        raise BadRequest("since must be a whole number")
    return int(since)


def make_app(room=None, poll_timeout=POLL_TIMEOUT):
    """A chat WSGI app around ``room`` (a fresh Room by default)."""
    room = room if room is not None else Room()

    def chat_app(environ, start_response):
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        try:
            if path == "/poll":
                if method != "GET":
                    raise BadRequest("use GET", "405 Method Not Allowed")
                since = _parse_since(environ)
                return room.poll(environ, since, poll_timeout, lambda messages: _json_response(
                    start_response, "200 OK", {"messages": messages, "last_id": room.last_id}))
            if path == "/send":
                if method != "POST":
                    raise BadRequest("use POST", "405 Method Not Allowed")
                name, text = _parse_message(environ)
                message = room.post(name, text)
                return _json_response(start_response, "201 Created", message)
            if path == "/stats" and method in ("GET", "HEAD"):
                return _json_response(start_response, "200 OK",
                                      {"waiters": room.waiters, "last_id": room.last_id})
            if path == "/" and method in ("GET", "HEAD"):
                start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                          ("Content-Length", str(len(PAGE)))])
                return [PAGE]
            raise BadRequest("not found", "404 Not Found")
        except BadRequest as exc:
            return _json_response(start_response, exc.status, {"error": str(exc)})

    chat_app.room = room
    return chat_app


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>greenserve chat</title>
<style>
  body { font: 16px/1.4 system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; }
  #log { list-style: none; padding: 0; min-height: 10em; border: 1px solid #ccc; }
  #log li { padding: .2em .5em; border-bottom: 1px solid #eee; }
  #log b { margin-right: .5em; }
  #status { color: #777; font-size: 80%; }
  form { display: flex; gap: .5em; margin-top: 1em; }
  #text { flex: 1; }
</style>
</head>
<body>
<h1>greenserve chat</h1>
<ul id="log"></ul>
<form id="form">
  <input id="name" name="name" placeholder="name" maxlength="40" size="10">
  <input id="text" name="text" placeholder="say something" maxlength="500" autocomplete="off">
  <button id="send" type="submit">Send</button>
</form>
<p id="status">connecting...</p>
<script>
"use strict";
let since = 0;
const log = document.getElementById("log");
const status = document.getElementById("status");

function show(message) {
  const item = document.createElement("li");
  item.dataset.id = message.id;
  const who = document.createElement("b");
  who.textContent = message.name;          // textContent: chat text is never HTML
  item.append(who, document.createTextNode(message.text));
  log.append(item);
}

async function poll() {
  for (;;) {
    try {
      const response = await fetch("/poll?since=" + since, {cache: "no-store"});
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      if (data.last_id < since) { log.replaceChildren(); }   // the server restarted
      for (const message of data.messages) show(message);
      since = data.last_id;
      status.textContent = "connected";
    } catch (error) {
      status.textContent = "reconnecting (" + error.message + ")";
      await new Promise(resolve => setTimeout(resolve, 2000));
    }
  }
}

document.getElementById("form").addEventListener("submit", async event => {
  event.preventDefault();
  const text = document.getElementById("text");
  const name = document.getElementById("name").value;
  if (!text.value.trim()) return;
  const response = await fetch("/send", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({name: name, text: text.value}),
  });
  if (response.ok) text.value = "";
  else status.textContent = "not sent: " + (await response.json()).error;
});

poll();
</script>
</body>
</html>
""".encode()

app = make_app()
