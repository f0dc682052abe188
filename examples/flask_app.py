"""A small but real Flask app, served by greenserve.

Run it from the repository root:  greenserve examples.flask_app:app

Endpoints (the same set exists in bottle_app.py and django_site/):
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
for /upload (413 beyond); /stream takes n from 0 to 100 and delay from 0 to 1 s (400 with the
reason otherwise). Per-view body limits need Flask 3.1 or later.
"""

import hashlib
import time

from flask import Flask, Response, abort, jsonify, redirect, request, stream_with_context

from examples import limits

app = Flask(__name__)
# The largest body of any view (werkzeug answers 413 beyond it); views that take less read
# their body with read_body().
app.config["MAX_CONTENT_LENGTH"] = limits.MAX_UPLOAD_BODY
# Form fields other than files are held in memory: cap their size and number too. (The
# size also bounds werkzeug's multipart buffer, so it must stay well above its 64 KiB reads.)
app.config["MAX_FORM_MEMORY_SIZE"] = 512 << 10
app.config["MAX_FORM_PARTS"] = 100

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>greenserve + Flask</title></head>
<body><h1>Hello from Flask on greenserve</h1>
<form method="post" action="/form"><input name="name"><button>Send</button></form>
</body></html>
"""


@app.get("/")
def index():
    return PAGE


@app.get("/text")
def text():
    return Response("hello from flask\n", mimetype="text/plain")


@app.post("/form")
def form():
    read_body(limits.MAX_FORM_BODY)  # request.form then parses these bytes
    return jsonify(framework="flask", form=request.form.to_dict())


@app.post("/json")
def json_echo():
    try:
        data, total = limits.json_numbers(read_body(limits.MAX_JSON_BODY))
    except limits.BadInput as exc:
        return bad_request(exc)
    return jsonify(framework="flask", echo=data, sum=total)


@app.post("/upload")
def upload():
    # MAX_CONTENT_LENGTH (limits.MAX_UPLOAD_BODY) bounds the whole multipart body.
    uploaded = request.files["file"]
    digest, size = hashlib.sha256(), 0
    # Read in pieces: werkzeug spools big uploads to disk, so don't pull them into memory.
    for block in iter(lambda: uploaded.stream.read(65536), b""):
        digest.update(block)
        size += len(block)
    return jsonify(framework="flask", filename=uploaded.filename, size=size,
                   sha256=digest.hexdigest(), fields=request.form.to_dict())


@app.get("/stream")
def stream():
    try:
        count, delay, _ = limits.stream_params(request.args.get)  # the tag: checked, read below
    except limits.BadInput as exc:
        return bad_request(exc)

    def lines():
        for i in range(count):
            if i:
                # Under greenserve time.sleep is gevent's (monkey-patched): other requests
                # keep being served while this one waits.
                time.sleep(delay)
            # `request` inside the generator: the view has returned by now, and other
            # requests run in other greenlets meanwhile; stream_with_context keeps this
            # request's context alive for the generator.
            yield f"chunk {i} {time.time():.6f} {request.args.get('tag', '-')}\n"

    return Response(stream_with_context(lines()), mimetype="text/plain")


@app.get("/redirect")
def to_text():
    return redirect("/text", code=302)


def read_body(limit):
    """The whole request body (kept for request.form), or 413 when it is over ``limit`` bytes."""
    # One byte more: with a chunked body werkzeug stops reading at max_content_length and
    # returns what it has, without a 413, so only the byte past the limit shows it was larger.
    request.max_content_length = limit + 1
    data = request.get_data()
    if len(data) > limit:
        abort(413)
    return data


def bad_request(reason):
    return Response(f"{reason}\n", status=400, mimetype="text/plain")
