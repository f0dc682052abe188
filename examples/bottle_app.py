"""A small Bottle app, served by greenserve.

Run it from the repository root:  greenserve examples.bottle_app:app

Endpoints (the same set as flask_app.py and django_site/):
  GET  /                  an HTML page
  GET  /text              plain text
  POST /form              form fields (urlencoded or multipart) echoed back as JSON
  POST /json              a JSON document echoed back with the sum of its "numbers"
  POST /upload            a multipart file upload ("file" field): its name, size and sha256
  GET  /stream?n=5&delay=0.2&tag=x
                          a streamed response: n lines "chunk I TIME TAG", one every `delay`
                          seconds, stamped with the time each was produced
  GET  /redirect          302 to /text
  anything else           404

Limits (examples/limits.py): bodies of at most 64 KiB for /form, 1 MiB for /json and 10 MiB
for /upload (413 beyond, enforced by with_length before Bottle reads); /stream takes n from
0 to 100 and delay from 0 to 1 s (400 with the reason otherwise).
"""

import hashlib
import json
import time

import bottle
from bottle import request, response

from examples import limits
from examples.chunked_bodies import with_length

bottle_app = bottle.Bottle()

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>greenserve + Bottle</title></head>
<body><h1>Hello from Bottle on greenserve</h1>
<form method="post" action="/form"><input name="name"><button>Send</button></form>
</body></html>
"""


def as_json(**data):
    # Bottle turns a returned dict into JSON too, but would escape non-ASCII the same way;
    # being explicit keeps the content type and encoding obvious.
    response.content_type = "application/json"
    return json.dumps(data)


@bottle_app.get("/")
def index():
    return PAGE


@bottle_app.get("/text")
def text():
    response.content_type = "text/plain; charset=utf-8"
    return "hello from bottle\n"


@bottle_app.post("/form")
def form():
    # request.forms holds bytes-as-latin-1 str in Bottle; .decode() gives real unicode.
    return as_json(framework="bottle", form=dict(request.forms.decode()))


@bottle_app.post("/json")
def json_echo():
    # with_length has capped the body at limits.MAX_JSON_BODY.
    try:
        data, total = limits.json_numbers(request.body.read())
    except limits.BadInput as exc:
        raise bad_request(exc) from None
    return as_json(framework="bottle", echo=data, sum=total)


@bottle_app.post("/upload")
def upload():
    uploaded = request.files.get("file")
    if uploaded is None:
        raise bad_request('send the file in a multipart field named "file"')
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: uploaded.file.read(65536), b""):
        digest.update(block)
        size += len(block)
    # raw_filename: Bottle's .filename "sanitises" the name (drops characters, lower-cases).
    return as_json(framework="bottle", filename=uploaded.raw_filename, size=size,
                   sha256=digest.hexdigest(), fields=dict(request.forms.decode()))


@bottle_app.get("/stream")
def stream():
    try:
        count, delay, tag = limits.stream_params(request.query.get)
    except limits.BadInput as exc:
        raise bad_request(exc) from None
    response.content_type = "text/plain; charset=utf-8"

    def lines():
        for i in range(count):
            if i:
                time.sleep(delay)  # gevent's sleep under greenserve: others keep being served
            yield f"chunk {i} {time.time():.6f} {tag}\n"

    return lines()  # Bottle passes a generator through unbuffered


@bottle_app.get("/redirect")
def to_text():
    bottle.redirect("/text", code=302)


def bad_request(reason):
    return bottle.HTTPResponse(f"{reason}\n", status=400,
                               headers={"Content-Type": "text/plain; charset=utf-8"})


# Bottle 0.13 cannot read a chunked body on its own, and has no overall body limit:
# see examples/chunked_bodies.py.
app = with_length(bottle_app, limits.BODY_LIMITS)
