"""greenserve: a strict, fast HTTP/1.1 WSGI server on gevent.

Importing this package patches nothing and starts nothing. Use ``greenserve.patch()`` first in
a program that wants ordinary blocking code to cooperate, then ``serve()`` or ``Server``.
"""

__version__ = "0.1.0"
__all__ = ["Config", "Server", "serve", "patch", "respond_later", "__version__"]


def patch():
    """Monkey-patch the standard library for gevent.

    Call it first, before importing anything else (``ssl``, ``threading``, database drivers):
    modules imported earlier keep references to the blocking originals. It also makes
    ``gevent.sleep`` and ``gevent.Timeout`` refuse NaN (ValueError), which would otherwise
    stop every timer of the process.
    """
    from gevent import monkey
    monkey.patch_all()
    from .timers import guard_gevent_timers
    guard_gevent_timers()


def __getattr__(name):
    # Lazy, so that `import greenserve` (e.g. by the CLI before patching) imports no gevent.
    if name == "Config":
        from .config import Config
        return Config
    if name in ("Server", "serve"):
        from . import server
        return getattr(server, name)
    if name == "respond_later":
        from .later import respond_later
        return respond_later
    raise AttributeError(f"module 'greenserve' has no attribute {name!r}")
