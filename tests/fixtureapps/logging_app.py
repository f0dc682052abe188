"""Served by test_ops_logs.py.

GET /boom     raises (the traceback belongs in the error log)
GET /errors   writes a line to wsgi.errors
anything else "ok" with an X-Request-Id response header echoing the request's
"""

from wsgiref.validate import validator


class Boom(Exception):
    pass


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise Boom("the app failed on purpose")
    if path == "/errors":
        environ["wsgi.errors"].write("a line the app wrote to wsgi.errors\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2"),
                              ("X-Request-Id", environ.get("HTTP_X_REQUEST_ID", "none"))])
    return [b"ok"]


app = validator(_app)
