"""One worker process under the master: load the app, serve the inherited listeners.

It runs in a child the master forked (``supervisor.Supervisor``), after the entry point
has monkey-patched. It obeys SIGTERM (graceful: stop accepting, finish in-flight requests
with ``Connection: close``, close idle keep-alive connections, within --graceful-timeout)
and SIGQUIT (exit at once); SIGINT, SIGHUP, SIGTTIN and SIGTTOU are the master's business
and are ignored here. A heartbeat greenlet tells the master that the hub still runs.
"""

import dataclasses
import os
import random
import signal
import sys
import traceback

import gevent
import greenlet
from gevent.event import Event

from . import ipc
from .appload import format_app_error, load_app
from .collector import all_objects, freeze_startup_objects
from .errors import AppLoadError
from .hooks import WORKER_HOOKS, Hooks, HookFailed, WorkerView
from .log import error_log, setup_logging
from .server import Server
from .supervisor import BOOT_ERROR

# The most often the heartbeat greenlet wakes (it also checks --max-requests then).
BEAT_INTERVAL = 0.25


def run(spec, config, sockets, info, notes=(), app=None, server_view=None, tls_context=None):
    """Serve ``spec`` on ``sockets`` until the master says stop; returns the exit status.

    ``info`` is the ``supervisor.WorkerInfo``; ``notes`` are warnings to log once logging
    is set up (e.g. from monkey-patching). ``app`` is the application when the master
    loaded it (--preload); ``server_view`` is what the hooks get as ``server``;
    ``tls_context`` the SSL context read before privileges were dropped.
    """
    # The master counts workers now; with more than one, wsgi.multiprocess is true.
    config = dataclasses.replace(config, workers=info.workers)
    setup_logging(config)  # again: the handlers' locks must be created after patching
    for line in notes:
        error_log.warning("%s", line)
    channel = info.channel
    signal.signal(signal.SIGABRT, _stack_dumper(channel))

    worker = WorkerView(os.getpid(), info.slot, config)
    worker.app = app  # None unless the master preloaded it
    try:
        # The workers' hooks are imported here, after monkey-patching, not in the master.
        hooks = Hooks(config, WORKER_HOOKS)
        hooks.call("post_fork", server_view, worker)
        if worker.app is None:
            worker.app = load_app(spec)
        hooks.call("post_worker_init", worker)
    except (AppLoadError, HookFailed) as exc:
        if exc.__cause__ is not None:
            sys.stderr.write(format_app_error(exc))  # the app's own traceback
        try:
            channel.send(ipc.ERROR, str(exc))
        except BrokenPipeError:
            _log_master_gone(info.master_pid)
        return BOOT_ERROR
    try:
        return _serve(hooks.wrap_app(worker.app, worker), config, sockets, info, channel,
                      tls_context)
    finally:
        hooks.call_logged("worker_exit", server_view, worker)


def _serve(app, config, sockets, info, channel, tls_context=None):
    """Accept until SIGTERM (drain, then return) or SIGQUIT (return at once): the status."""
    server = Server(app, config, listeners=sockets, tls_context=tls_context,
                    stats=info.stats, load=info.load)
    stop, fast = Event(), Event()
    handlers = [gevent.signal_handler(signal.SIGTERM, stop.set),
                gevent.signal_handler(signal.SIGQUIT, fast.set),
                gevent.signal_handler(signal.SIGUSR1, _reopen_logs)]
    watch = None
    try:
        server.start()
        if config.block_warning:
            from .blockwatch import BlockWatch
            watch = BlockWatch(config.block_warning / 1000,
                               on_block=info.stats.hub_blocked if info.stats else None)
            watch.start()
        freeze_startup_objects()
        try:
            channel.send(ipc.BOOTED)
        except BrokenPipeError:
            # The master died while this worker loaded the app (which can take long): stop
            # as the heartbeat would, rather than end on a traceback.
            _log_master_gone(info.master_pid)
            stop.set()
        limit = 0
        if config.max_requests:
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
        interval = min(BEAT_INTERVAL, config.timeout / 4) if config.timeout else BEAT_INTERVAL
        beat = gevent.spawn(_heartbeat, server, channel, interval, limit, info.master_pid,
                            stop)
        gevent.wait([stop, fast], count=1)
        beat.kill(block=False)
        if fast.is_set():
            return 0  # the caller's os._exit closes every connection at once
        # Stop accepting at once: with the master's copies closed too, the kernel refuses
        # new connections instead of queueing them for no one. Logged after, so that the
        # line means the listeners are closed.
        server.stop_accepting()
        error_log.info("worker (pid %d) stopping gracefully (up to %gs)", os.getpid(),
                       config.graceful_timeout)
        stopping = gevent.spawn(server.drain, config.graceful_timeout)
        gevent.wait([stopping, fast], count=1)
        if stopping.ready():
            stopping.get()
        return 0
    finally:
        if watch is not None:
            watch.stop()
        if info.stats is not None:
            info.stats.retire()
        for handler in handlers:
            handler.cancel()


def _reopen_logs():
    """SIGUSR1 (the master passes it on): reopen the log files, e.g. after logrotate."""
    from .log import reopen_log_files
    for problem in reopen_log_files():
        error_log.warning("%s", problem)


def _heartbeat(server, channel, interval, limit, master_pid, stop):
    """Tell the master the hub runs; ask to be replaced after ``limit`` requests."""
    retiring = False
    while True:
        gevent.sleep(interval)
        message = ipc.BEAT
        if limit and not retiring and server.requests_served >= limit:
            message = ipc.RETIRE
        try:
            if os.getppid() != master_pid:
                raise BrokenPipeError
            # A message dropped on a full pipe: RETIRE is asked again at the next beat.
            if channel.send(message) and message == ipc.RETIRE:
                retiring = True
        except BrokenPipeError:
            _log_master_gone(master_pid)
            stop.set()
            return


def _log_master_gone(master_pid):
    error_log.warning("worker (pid %d): the master (pid %d) is gone; stopping", os.getpid(),
                      master_pid)


def _stack_dumper(channel):
    """A SIGABRT handler that logs every greenlet's stack, then tells the master.

    A plain ``signal.signal`` handler, not gevent's, and one that does real work: it runs
    between two bytecodes of whatever Python code is hogging the hub, which is exactly when
    gevent's own signal handling cannot run.
    """
    def dump(signum, frame):
        current = greenlet.getcurrent()
        parts = [f"worker (pid {os.getpid()}): the hub was blocked (--timeout); the stack "
                 f"of every greenlet follows",
                 f"--- {current!r} (running) ---\n" + "".join(traceback.format_stack(frame))]
        for obj in all_objects():
            if (isinstance(obj, greenlet.greenlet) and obj is not current
                    and obj.gr_frame is not None):
                parts.append(f"--- {obj!r} ---\n" +
                             "".join(traceback.format_stack(obj.gr_frame)))
        error_log.critical("%s", "\n".join(part.rstrip("\n") for part in parts))
        try:
            channel.send(ipc.DUMPED)
        except BrokenPipeError:
            pass  # the master is gone; nobody is waiting for the dump
    return dump
