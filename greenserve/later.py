"""``respond_later``: a long poll that waits without a greenlet.

A long poll written as ``event.wait()`` keeps its greenlet, and with it a saved C stack and a
Python data stack page, for as long as it waits: about 10 KiB each. An app that returns
``respond_later(environ, event, respond, timeout)`` instead lets greenserve end the greenlet
and keep only the connection; when ``event`` is set (or ``timeout`` passes, or the client
leaves) a greenlet is taken again and ``respond(ready)`` makes the answer.

Under another server, or behind middleware that iterates the app's result itself, the same
object waits in the calling greenlet when iterated, so the app stays portable.
"""

__all__ = ["respond_later", "ResponseLater"]


def respond_later(environ, waitable, respond, timeout=None):
    """Answer this request once ``waitable`` is ready, without holding a greenlet meanwhile.

    ``waitable`` is a gevent waitable with ``ready()``, ``rawlink()`` and ``unlink()``: an
    ``Event``, ``AsyncResult`` or ``Greenlet``. ``respond(ready)`` is called once, in a
    greenlet, with True if ``waitable`` became ready, False if ``timeout`` seconds passed or
    the client left first (``environ["greenserve.disconnected"]`` tells those apart); it calls
    ``start_response`` and returns the body, as a WSGI app does; it runs exactly once, also when
    the answer cannot be sent (the client left; --request-timeout passed: the client gets 503).
    Return this function's value from the app.
    """
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds or None, not {timeout!r}")
        try:
            timeout = float(timeout)
        except OverflowError:
            raise ValueError(f"timeout is too large: {timeout!r}") from None
        if not timeout >= 0:  # also refuses NaN
            raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    missing = [name for name in ("ready", "rawlink", "unlink") if not hasattr(waitable, name)]
    if missing:
        raise TypeError(f"{type(waitable).__name__} is not a gevent waitable (it has no "
                        f"{', '.join(missing)}); use an Event, AsyncResult or Greenlet")
    if not callable(respond):
        raise TypeError("respond must be callable")
    return ResponseLater(environ, waitable, respond, timeout)


class ResponseLater:
    """The app's answer to come. greenserve recognises it and waits without a greenlet;
    iterating it (any other server, or a middleware in between) waits in place."""

    __slots__ = ("environ", "waitable", "respond", "timeout", "_result")

    def __init__(self, environ, waitable, respond, timeout):
        self.environ = environ
        self.waitable = waitable
        self.respond = respond
        self.timeout = timeout
        self._result = None

    def __iter__(self):
        from gevent import wait  # only this fallback needs gevent at call time

        waitables = [self.waitable]
        gone = self.environ.get("greenserve.disconnected")
        if gone is not None:
            waitables.append(gone)
        wait(waitables, timeout=self.timeout, count=1)
        self._result = result = self.respond(bool(self.waitable.ready()))
        return iter(result)

    def close(self):
        """PEP 3333: close the body ``respond`` returned, if it has a close()."""
        result, self._result = self._result, None
        if result is not None and hasattr(result, "close"):
            result.close()
