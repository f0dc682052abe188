"""The app the command-line and supervisor tests serve with ``python -m greenserve webapp:app``.

GET /hold?FILE     says "REQUEST HELD" on stderr, then answers only once FILE exists: a
                   request in flight for as long as the test wants (it waits cooperatively
                   once gevent has patched time.sleep).
GET /spin          never yields: the worker's hub is blocked for good.
GET /patched       "True" or "False": whether gevent has patched the socket module.
GET /who           "VERSION PID MULTIPROCESS": which code and which worker answered.
anything else      "hello PATH from PID".

Tests that reload code copy this file and change ``VERSION``.
"""

import os
import sys
import time
import urllib.parse
from wsgiref.validate import validator

VERSION = "one"


def spin_forever():
    while True:
        pass


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hold":
        release = urllib.parse.unquote(environ["QUERY_STRING"])
        sys.stderr.write("REQUEST HELD\n")
        sys.stderr.flush()
        while not os.path.exists(release):
            time.sleep(0.01)
    elif path == "/spin":
        spin_forever()
    if path == "/patched":
        import gevent.monkey  # only here: importing the app must not import gevent
        body = str(gevent.monkey.is_module_patched("socket"))
    elif path == "/frozen":
        import gc
        body = str(gc.get_freeze_count())
    elif path == "/who":
        body = f"{VERSION} {os.getpid()} {environ['wsgi.multiprocess']}"
    else:
        body = f"hello {path} from {os.getpid()}"
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(data)))])
    return [data]


app = validator(_app)
not_an_app = 42


def create_app(greeting="hi"):
    return app


def broken_factory():
    raise RuntimeError("cannot reach the database")
