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
"""

import hashlib
import time

from flask import Flask, Response, jsonify, redirect, request, stream_with_context

app = Flask(__name__)

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
    return jsonify(framework="flask", form=request.form.to_dict())


@app.post("/json")
def json_echo():
    data = request.get_json()
    return jsonify(framework="flask", echo=data, sum=sum(data.get("numbers", [])))


@app.post("/upload")
def upload():
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
    count = request.args.get("n", 5, type=int)
    delay = request.args.get("delay", 0.2, type=float)

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
