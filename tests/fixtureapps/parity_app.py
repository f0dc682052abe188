"""The app of the gunicorn-parity tests: it tells where it was loaded and what it sees.

Importing it appends this process's pid to the file named by $LOAD_LOG (when set), so a
test can count how many times, and in which process, the app was loaded (--preload).

GET /pid       "PID LOADED_IN": the serving process and the one that imported the app
GET /env?NAME  the value of environment variable NAME, or "-"
GET /boom      raises (the client gets 500)
anything else  "ok"

``parity_app:send_file`` serves this file through ``wsgi.file_wrapper``.
"""

import os
from wsgiref.validate import validator

LOADED_IN = os.getpid()
if os.environ.get("LOAD_LOG"):
    with open(os.environ["LOAD_LOG"], "a") as log:
        log.write(f"{LOADED_IN}\n")


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("boom on purpose")
    if path == "/pid":
        body = f"{os.getpid()} {LOADED_IN}"
    elif path == "/env":
        body = os.environ.get(environ["QUERY_STRING"], "-")
    else:
        body = "ok"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(data)))])
    return [data]


app = validator(_app)


def send_file(environ, start_response):
    """This module's source through wsgi.file_wrapper, unvalidated: wsgiref.validate wraps
    the iterable, and the server would no longer see a file to send with sendfile."""
    stream = open(__file__, "rb")
    size = os.fstat(stream.fileno()).st_size
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](stream)


def create_app():
    return app
