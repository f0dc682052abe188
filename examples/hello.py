"""The smallest greenserve app.

Run it:  greenserve examples.hello:app   (then open http://127.0.0.1:8000)
"""


def app(environ, start_response):
    """Answer every request with a short plain-text greeting."""
    body = b"Hello, world!"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
