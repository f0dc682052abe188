"""greenserve: a strict, fast HTTP/1.1 WSGI server on gevent.

Importing this package patches nothing and starts nothing. Use ``greenserve.patch()`` first in
a program that wants ordinary blocking code to cooperate, then ``serve()`` or ``Server``.
``compiled()`` names the modules that run compiled (see ``greenserve.speedups``).
"""

from . import speedups as _speedups

__version__ = "0.1.0"
__all__ = ["Config", "Server", "serve", "patch", "respond_later", "compiled", "__version__"]

# GREENSERVE_PURE=1: every greenserve module loads from its .py source, even where an install
# compiled it. Decided here, before any other greenserve module is imported.
if _speedups.pure_requested():
    _speedups.force_pure()


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


def compiled():
    """The hot modules running compiled in this process (an empty list: all pure Python)."""
    return _speedups.compiled()


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
