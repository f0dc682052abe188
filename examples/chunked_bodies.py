"""WSGI middleware for frameworks that need a CONTENT_LENGTH to read a request body.

greenserve decodes a chunked request body itself: wsgi.input ends where the body ends
(wsgi.input_terminated is True) and there is no CONTENT_LENGTH. Django reads exactly
CONTENT_LENGTH bytes and treats a missing one as an empty body; Bottle 0.13 does the same and,
seeing "Transfer-Encoding: chunked", would decode the chunks a second time. ``with_length``
reads such a body first and hands the framework an ordinary body with a length. Flask
(Werkzeug) honours wsgi.input_terminated and needs none of it.

Reading a body before the framework routes the request is the one place where an app would
take unbounded work from anyone, so the middleware reads only for the paths it is given, and
each of those has a ceiling. See ``with_length``.
"""

import tempfile

# Bodies up to this size stay in memory; larger ones (up to the path's ceiling) go to an
# anonymous temporary file.
SPOOL_IN_MEMORY = 64 << 10
PIECE = 64 << 10


def with_length(app, limits):
    """Wrap ``app`` so every body it reads has a ceiling, and arrives with its length.

    ``limits`` maps each PATH_INFO that takes a request body to the most bytes it accepts,
    for example ``{"/json": 1 << 20}``. For those paths a body over the limit is answered with
    413 before the app runs: at once when its Content-Length says so, otherwise as soon as
    the limit is passed, never reading more than the limit plus one piece. A chunked body
    within the limit is read in memory up to 64 KiB, beyond that into a temporary file, and
    handed on with its CONTENT_LENGTH.

    Any other path is passed through untouched and its body is never read here: a body sent to
    a page that does not exist (or does not take one) costs nothing, and the server discards
    it after the response.
    """
    def wrapped(environ, start_response):
        limit = limits.get(environ.get("PATH_INFO", ""))
        if limit is None:
            return app(environ, start_response)
        declared = environ.get("CONTENT_LENGTH") or ""
        if declared:
            # RFC 9110 §15.5.14: 413 when the content is larger than the server will process.
            if declared.isascii() and declared.isdigit() and int(declared) > limit:
                return _too_large(start_response, limit)
            return app(environ, start_response)
        if not environ.get("wsgi.input_terminated"):
            return app(environ, start_response)  # no length and no end: there is no body
        body = _read_at_most(environ["wsgi.input"], limit)
        if body is None:
            return _too_large(start_response, limit)
        environ["CONTENT_LENGTH"] = str(body.tell())
        body.seek(0)
        environ["wsgi.input"] = body
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return app(environ, start_response)
    return wrapped


def _read_at_most(stream, limit):
    """The whole of ``stream`` in a spooled file, or None when it holds more than ``limit``."""
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    size = 0
    while True:
        piece = stream.read(min(PIECE, limit + 1 - size))
        if not piece:
            return body
        size += len(piece)
        if size > limit:
            body.close()
            return None
        body.write(piece)


def _too_large(start_response, limit):
    body = f"request body over {limit} bytes\n".encode()
    start_response("413 Content Too Large", [("Content-Type", "text/plain; charset=utf-8"),
                                              ("Content-Length", str(len(body)))])
    return [body]
