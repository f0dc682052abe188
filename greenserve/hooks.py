"""Server hooks: the user's functions, named ``MODULE:FUNCTION``, called at fixed points.

=====================  ==============================  ==========================================
hook                   called as                       where and when
=====================  ==============================  ==========================================
``on_starting``        ``(server)``                    master (or the only process), before the
                                                       listeners are bound and the app loaded
``when_ready``         ``(server)``                    master, once every worker serves (the only
                                                       process: once it accepts)
``post_fork``          ``(server, worker)``            each new worker, before it loads the app
``post_worker_init``   ``(worker)``                    each worker, app loaded, not yet accepting
``worker_exit``        ``(server, worker)``            each worker as it exits, connections closed
``on_exit``            ``(server)``                    master (or the only process), last thing
``pre_request``        ``(worker, environ)``           worker, before the app is called
``post_request``       ``(worker, environ, status)``   worker, once the response is over
=====================  ==============================  ==========================================

``server`` is a ``ServerView`` and ``worker`` a ``WorkerView`` (see their docs). A hook that
raises while greenserve starts (``on_starting``, ``when_ready``, ``post_fork``,
``post_worker_init``) stops it: ``HookFailed``, exit status 2. Later (``pre_request``,
``post_request``, ``worker_exit``, ``on_exit``) the traceback is logged and serving goes on.
"""

import logging

from .appload import load_object, takes_arguments
from .errors import AppLoadError, RequestDeadlineExceeded
from .wsgi import FileWrapper

error_log = logging.getLogger("greenserve.error")

ARGUMENTS = {
    "on_starting": ("server",),
    "when_ready": ("server",),
    "post_fork": ("server", "worker"),
    "post_worker_init": ("worker",),
    "worker_exit": ("server", "worker"),
    "on_exit": ("server",),
    "pre_request": ("worker", "environ"),
    "post_request": ("worker", "environ", "status"),
}

# Which process imports and runs each hook. The master imports only its own: the workers'
# are imported after monkey-patching, in the worker.
MASTER_HOOKS = ("on_starting", "when_ready", "on_exit")
WORKER_HOOKS = ("post_fork", "post_worker_init", "worker_exit", "pre_request", "post_request")


class HookFailed(Exception):
    """A hook raised while greenserve started; the message is one line."""


class ServerView:
    """What hooks get as ``server``: the server as a whole.

    ``config`` the settings (a ``greenserve.Config``), ``spec`` the app spec as given,
    ``pid`` the master's pid (the only process's without a master), ``addresses`` the
    listening addresses as text (empty before they are bound), ``log`` the error logger.
    Hooks may add attributes of their own (in the process they run in).
    """

    def __init__(self, config, spec, pid, addresses=()):
        self.config = config
        self.spec = spec
        self.pid = pid
        self.addresses = list(addresses)
        self.log = error_log


class WorkerView:
    """What hooks get as ``worker``: one worker process.

    ``pid`` its pid, ``slot`` its place 0..workers-1 (a replacement takes the slot of the
    worker it replaces), ``config`` the settings, ``app`` the WSGI application (None until
    loaded), ``log`` the error logger. The same object is passed to every hook of one
    worker, so ``post_worker_init`` may leave attributes for ``pre_request`` to use.
    """

    def __init__(self, pid, slot, config):
        self.pid = pid
        self.slot = slot
        self.config = config
        self.app = None
        self.log = error_log


class Hooks:
    """The hooks set in ``config`` among ``names``, imported and checked at construction
    (``AppLoadError`` with one line if one cannot be found or cannot take its arguments)."""

    def __init__(self, config, names):
        self.functions = {}
        self.specs = {}
        for name in names:
            spec = getattr(config, name)
            if spec:
                self.functions[name] = _load(name, spec)
                self.specs[name] = spec

    def __contains__(self, name):
        return name in self.functions

    def call(self, name, *args):
        """Run a start-up hook: its exception is logged and raised as ``HookFailed``."""
        function = self.functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except Exception as exc:
            error_log.error("%s hook %s raised", name, self.specs[name], exc_info=True)
            raise HookFailed(f"{name} hook {self.specs[name]} raised {_one_line(exc)}"
                             ) from None

    def call_logged(self, name, *args):
        """Run a hook whose failure must not stop serving: its exception is only logged."""
        function = self.functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except Exception:
            error_log.error("%s hook %s raised", name, self.specs[name], exc_info=True)

    def wrap_app(self, app, worker):
        """``app`` with ``pre_request``/``post_request`` around it; ``app`` itself when
        neither is set (no cost per request then)."""
        pre = self.functions.get("pre_request")
        post = self.functions.get("post_request")
        if pre is None and post is None:
            return app
        call = self.call_logged

        def app_with_hooks(environ, start_response):
            if pre is not None:
                call("pre_request", worker, environ)
            if post is None:
                return app(environ, start_response)
            status = [None]

            def start(line, headers, exc_info=None):
                status[0] = line
                return start_response(line, headers, exc_info)

            try:
                result = app(environ, start)
            except StopIteration:
                # gunicorn's "done with the socket I took" (a WebSocket app), not a failure.
                call("post_request", worker, environ, status[0])
                raise
            except (Exception, RequestDeadlineExceeded):
                call("post_request", worker, environ, None)
                raise
            return _after(result, lambda: call("post_request", worker, environ, status[0]))

        return app_with_hooks


def _load(name, spec):
    function = load_object(spec, f"hook {name}")
    wanted = ARGUMENTS[name]
    if not callable(function):
        raise AppLoadError(f"hook {name}: {spec} is not a function")
    if not takes_arguments(function, len(wanted)):
        raise AppLoadError(f"hook {name}: {spec} cannot be called as {name}"
                           f"({', '.join(wanted)})")
    return function


def _after(result, callback):
    """``result`` with ``callback`` run once its ``close()`` has (PEP 3333: the server
    closes the iterable when the response is over, however it ended)."""
    if type(result) is FileWrapper:
        # Still a FileWrapper, so the server keeps sending it with sendfile.
        wrapped = _FileWrapperThen(result.filelike, result.blksize)
        wrapped.callback = callback
        return wrapped
    return _IterableThen(result, callback)


class _IterableThen:
    __slots__ = ("result", "callback")

    def __init__(self, result, callback):
        self.result = result
        self.callback = callback

    def __iter__(self):
        return iter(self.result)

    def close(self):
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.callback()


class _FileWrapperThen(FileWrapper):
    __slots__ = ("callback",)

    def close(self):
        try:
            super().close()
        finally:
            self.callback()


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
