"""WSGI middleware for frameworks that need a CONTENT_LENGTH to read a request body.

greenserve decodes a chunked request body itself: wsgi.input ends where the body ends
(wsgi.input_terminated is True) and there is no CONTENT_LENGTH. Django reads exactly
CONTENT_LENGTH bytes and treats a missing one as an empty body; Bottle 0.13 does the same and,
seeing "Transfer-Encoding: chunked", would decode the chunks a second time. ``with_length``
spools such a body (in memory up to 1 MiB, then in a temporary file) and hands the framework an
ordinary body with a length. Flask (Werkzeug) honours wsgi.input_terminated and needs none of it.
"""

import shutil
import tempfile

SPOOL_IN_MEMORY = 1 << 20


def with_length(app):
    """Wrap ``app`` so a body without CONTENT_LENGTH arrives spooled, with its length."""
    def wrapped(environ, start_response):
        if (environ.get("wsgi.input_terminated") and "CONTENT_LENGTH" not in environ
                and environ["REQUEST_METHOD"] not in ("GET", "HEAD")):
            body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
            shutil.copyfileobj(environ["wsgi.input"], body)
            environ["CONTENT_LENGTH"] = str(body.tell())
            body.seek(0)
            environ["wsgi.input"] = body
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        return app(environ, start_response)
    return wrapped
