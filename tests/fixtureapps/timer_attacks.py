"""What a careless or hostile app can do to the hub's timers (served by test_timers.py).

GET /sleep-nan   gevent.sleep(float("nan")): refused with ValueError by greenserve's guard
GET /timer-nan   a NaN libev timer started directly, past every guard: the hub's timer heap
                 is broken for good after this
GET /hang        waits for ever (only --request-timeout ends it)
anything else    "ok"
"""

from wsgiref.validate import validator


def _app(environ, start_response):
    import gevent  # only here: importing the app must not import gevent
    from gevent.event import Event

    path = environ["PATH_INFO"]
    if path == "/sleep-nan":
        gevent.sleep(float("nan"))
    elif path == "/timer-nan":
        gevent.get_hub().loop.timer(float("nan")).start(lambda: None)
    elif path == "/hang":
        Event().wait()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


app = validator(_app)
