"""Every shape an app spec can name, for the app-loading tests.

The tests copy this source into modules of their own names (a fresh name per test, so no
test sees a module another one imported).
"""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"application"]


def create_app(*args, **kwargs):
    def made(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr((args, kwargs)).encode()]
    return made


class Holder:
    app = staticmethod(app)


not_callable = 42


def broken_factory():
    raise RuntimeError("database is down")


def returns_none():
    return None


def _private():
    pass
