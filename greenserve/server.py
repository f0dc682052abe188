"""The I/O shell: listeners -> acceptors -> one greenlet and Connection per client.

``Server`` runs inside any gevent program; ``serve()`` is the blocking convenience entry.
"""

import logging
import os
import socket
from time import monotonic

import gevent
from gevent.event import Event

from .acceptor import Acceptor
from .config import Config, load_config
from .connection import Connection
from .log import make_access_log
from .protocol.parser import Limits
from .spawner import Spawner
from .wsgi import base_environ

error_log = logging.getLogger("greenserve.error")

# How often the sweeper checks the connections' deadlines; timers are this coarse.
SWEEP_INTERVAL = 0.25


class Server:
    """A WSGI server on one gevent hub.

    ``Server(app, bind="127.0.0.1:0", keep_alive=2)`` takes the same settings as the command
    line (see ``greenserve --help``), or a ready ``config=Config(...)``. ``listeners`` may
    pass already-bound sockets (the CLI binds before loading the app).
    """

    def __init__(self, app, config=None, *, listeners=None, **options):
        if config is None:
            config = load_config(cli=options)
        elif options:
            config = load_config(cli=options, base=config)
        elif not isinstance(config, Config):
            raise TypeError("config must be a greenserve.Config")
        self.app = app
        self.config = config
        self.limits = Limits.from_config(config)
        self.script_name = config.root_path
        self.access_log = make_access_log(config)
        self.connections = set()
        self.requests_served = 0  # read by a supervised worker for --max-requests
        self.stopping = False
        self.spawner = Spawner(config.max_connections, self._resume_accepting)
        self._listeners = list(listeners) if listeners is not None else None
        self._acceptors = []
        self._sweeper = None
        self._stopped = Event()
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        """Bind (unless sockets were given) and start accepting; returns at once."""
        if self._started:
            return
        if self._listeners is None:
            from .listeners import create_listeners
            self._listeners = create_listeners(self.config.bind, self.config.backlog)
        multiprocess = self.config.workers > 1
        for sock in self._listeners:
            # Non-blocking: a worker that loses the race for a shared listener's connection
            # must not block its hub in accept().
            sock.setblocking(False)
            name, port = _server_name_port(sock)
            base = base_environ(self.config, name, port, multiprocess)
            handler = self._connection_handler(base)
            spawn = self.spawner.spawn
            acceptor = Acceptor(sock, lambda client, address, handler=handler:
                                spawn(handler, client, address), self._full)
            acceptor.start()
            self._acceptors.append(acceptor)
        self._sweeper = gevent.spawn(self._sweep)
        self._started = True
        self._stopped.clear()

    def serve_forever(self):
        """Start if needed, then block until ``stop()`` has finished."""
        self.start()
        self._stopped.wait()

    def stop(self, timeout=None):
        """Stop gracefully: stop accepting, close idle connections, let requests finish.

        Requests still running after ``timeout`` seconds (default: graceful_timeout) are
        killed. Returns once every connection is closed.
        """
        if timeout is None:
            timeout = self.config.graceful_timeout
        self.stop_accepting()
        run_callback = gevent.get_hub().loop.run_callback
        for connection in list(self.connections):
            run_callback(connection.close_if_idle)
        if not self.spawner.join(timeout=timeout):
            error_log.warning("graceful timeout: %d connection(s) still busy are cut off",
                              len(self.spawner))
            self.spawner.kill(timeout=1)
        if self._sweeper is not None:
            self._sweeper.kill(block=False)
            self._sweeper = None
        self._acceptors = []
        self._started = False
        self._stopped.set()

    def stop_accepting(self):
        """Close the listeners and mark the server stopping: every response from now on
        says ``Connection: close``. Connections already open are left to finish."""
        self.stopping = True
        for acceptor in self._acceptors:
            acceptor.close()

    # -- introspection ------------------------------------------------------------------------

    @property
    def addresses(self):
        """The bound addresses: (host, port) for TCP, the path for unix sockets."""
        if self._listeners is None:
            return []
        return [sock.getsockname() for sock in self._listeners if sock.fileno() != -1]

    @property
    def address(self):
        """The first bound address (handy with ``bind="127.0.0.1:0"``)."""
        addresses = self.addresses
        return addresses[0] if addresses else None

    # -- internals ----------------------------------------------------------------------------

    def _connection_handler(self, listener_environ):
        """The greenlet body for one listener's connections.

        A plain closure rather than functools.partial: each C-level call between the
        greenlet's start and the app deepens the C stack saved with every parked greenlet.
        """
        def handle(sock, address):
            Connection(self, sock, address, listener_environ).run()
        return handle

    def _full(self):
        """At the connection cap, make room by closing the longest-idle keep-alive connection.

        Called by an acceptor with a client waiting. Idle keep-alive clients must not lock
        new ones out; only when every connection is busy do new clients wait in the backlog.
        """
        if not self.spawner.full():
            return False
        oldest = None
        for connection in self.connections:
            if connection.idle and (oldest is None or
                                    connection.phase_started < oldest.phase_started):
                oldest = connection
        if oldest is not None:
            gevent.get_hub().loop.run_callback(oldest.close_if_idle)
        return True

    def _resume_accepting(self):
        """A slot freed after the cap was hit: the acceptors paused, so restart them."""
        if not self.stopping:
            for acceptor in self._acceptors:
                acceptor.start()

    def _sweep(self):
        """Fire the connections' phase timers (header, keep-alive, body, send)."""
        run_callback = gevent.get_hub().loop.run_callback
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            now = monotonic()
            for connection in self.connections:
                deadline = connection.deadline
                if deadline and deadline <= now:
                    connection.deadline = 0.0
                    run_callback(connection.expire, connection.phase_seq)


def _server_name_port(sock):
    """SERVER_NAME and SERVER_PORT for requests arriving on ``sock``."""
    if sock.family == socket.AF_UNIX:
        return sock.getsockname() or "localhost", ""
    host, port = sock.getsockname()[:2]
    return host, str(port)


def serve(app, bind="127.0.0.1:8000", **options):
    """Serve ``app`` until interrupted (Ctrl-C / SIGTERM stop gracefully). Blocks.

    Call ``greenserve.patch()`` first, before other imports, for blocking code to cooperate.
    """
    import signal

    from .log import setup_logging

    from .listeners import describe

    server = Server(app, bind=bind, **options)
    setup_logging(server.config)
    server.start()
    for sock in server._listeners:
        error_log.info("Listening at %s (pid %d)", describe(sock), os.getpid())
    stop_requested = Event()

    def on_signal(signum):
        # Only record it; the waiting greenlet below does the stopping.
        error_log.info("%s received; stopping gracefully (up to %gs)",
                       signal.Signals(signum).name, server.config.graceful_timeout)
        stop_requested.set()

    handlers = [gevent.signal_handler(sig, on_signal, sig)
                for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        stop_requested.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        server.stop()
        error_log.info("stopped")
