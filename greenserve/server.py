"""The I/O shell: listeners -> acceptors -> one greenlet and Connection per client.

``Server`` runs inside any gevent program; ``serve()`` is the blocking convenience entry.
"""

import logging
import os
import socket
import sys
from time import monotonic

import gevent
from gevent.event import Event

from .acceptor import ACCEPT_BATCH, SHARED_ACCEPT_BATCH, Acceptor
from .config import Config, load_config
from .connection import Connection
from .log import ErrorStream, make_access_log
from .memory import MemoryReturner
from .protocol.parser import Limits
from .protocol.forwarded import TrustedProxies
from .protocol.writer import server_line
from .spawner import Spawner
from .timers import Sweeper
from .wsgi import base_environ

error_log = logging.getLogger("greenserve.error")

# After a burst of connections went idle, this many spare greenlets stay for the next one.
IDLE_GREENLETS_KEPT = 8
# On a graceful stop, how long busy keep-alive connections get to receive one more response
# (with Connection: close) before idle ones are closed; see Server.drain.
CLOSE_NOTICE = 1.0


class Server:
    """A WSGI server on one gevent hub.

    ``Server(app, bind="127.0.0.1:0", keep_alive=2)`` takes the same settings as the command
    line (see ``greenserve --help``), or a ready ``config=Config(...)``. ``listeners`` may
    pass already-bound sockets (the CLI binds before loading the app), ``tls_context`` a
    ready SSL context (else one is made from --certfile when set).
    """

    def __init__(self, app, config=None, *, listeners=None, tls_context=None, stats=None,
                 load=None, **options):
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
        self.server_line = server_line(config.server_header)
        # Given by the CLI, which reads the key before dropping privileges.
        self.tls_context = tls_context if tls_context is not None else _tls_context(config)
        self.forwarded_trust = TrustedProxies.parse(config.forwarded_allow_ips)
        self.proxy_allow = (TrustedProxies.parse(config.proxy_allow_ips)
                            if config.proxy_protocol else None)
        # wsgi.errors: what apps write there reaches the error log (and --error-log FILE).
        self._errors = ErrorStream()
        self.connections = set()
        self.requests_served = 0  # read by a supervised worker for --max-requests
        self.stats = stats  # a metrics.RequestStats, or None: nothing counted
        # A balance.WorkerLoad when workers share the listeners (see balance.py), or None.
        self.load = load
        self.stopping = False
        # Set when a graceful stop begins: apps holding a handed-over connection (a
        # WebSocket) get it as environ["greenserve.stopping"] to say goodbye early.
        self.stopping_event = Event()
        self.spawner = Spawner(config.max_connections, self._resume_accepting)
        self._listeners = list(listeners) if listeners is not None else None
        self._acceptors = []
        self._sweeper = Sweeper(self.connections, on_tick=self._on_tick)
        # Connections count themselves here when they park or close (see memory.py).
        self.memory = MemoryReturner()
        self._stopped = Event()
        self._started = False
        # Linux copies TCP_NODELAY from a listener to the connections it accepts: set once
        # there (start) instead of one setsockopt per connection. Elsewhere, per connection.
        self.nodelay_per_connection = not sys.platform.startswith("linux")

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self):
        """Bind (unless sockets were given) and start accepting; returns at once."""
        if self._started:
            return
        _ensure_fd_limit(self.config.max_connections)
        if self._listeners is None:
            from .listeners import create_listeners, unix_socket_mode
            self._listeners = create_listeners(self.config.bind, self.config.backlog,
                                               unix_mode=unix_socket_mode(self.config))
        multiprocess = self.config.workers > 1
        # Several workers on one listener (no --reuse-port copies): take turns fairly.
        batch = SHARED_ACCEPT_BATCH if multiprocess and not self.config.reuse_port \
            else ACCEPT_BATCH
        for sock in self._listeners:
            # Non-blocking: a worker that loses the race for a shared listener's connection
            # must not block its hub in accept().
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX and not self.nodelay_per_connection:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    self.nodelay_per_connection = True
            name, port = _server_name_port(sock, self.tls_context is not None)
            base = base_environ(self.config, name, port, multiprocess,
                                errors=self._errors)
            if self.tls_context is not None:
                base["wsgi.url_scheme"] = "https"
            handler = self._connection_handler(base)
            spawn = self.spawner.spawn
            acceptor = Acceptor(sock, lambda client, address, handler=handler:
                                spawn(handler, client, address), self._full, batch,
                                self._stand_back if self.load is not None else None,
                                self.load.others_raced_since if self.load is not None else None)
            acceptor.start()
            self._acceptors.append(acceptor)
        if self.load is not None:
            self.load.publish(len(self.spawner))  # accepting from now on
        self._sweeper.start()
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
            if connection.parked:
                # No greenlet to wait for: close it now, before join() can return.
                connection.close_if_idle()
            elif connection.later is not None:
                # A response waiting without a greenlet: answer it now (a greenlet joins).
                connection.wake()
            else:
                run_callback(connection.close_if_idle)
        if not self.spawner.join(timeout=timeout):
            error_log.warning("graceful timeout: %d connection(s) still busy are cut off",
                              len(self.spawner))
            self.spawner.kill(timeout=1)
        self._sweeper.stop()
        self._acceptors = []
        self._started = False
        self._stopped.set()

    def drain(self, timeout=None):
        """A graceful stop that does not race clients: stop accepting, then for up to
        CLOSE_NOTICE seconds let every response say ``Connection: close`` so busy clients
        leave cleanly, and only then close the connections still idle (a request may be on
        its way on one of them: closing it at once would fail that request)."""
        if timeout is None:
            timeout = self.config.graceful_timeout
        self.stop_accepting()
        for connection in list(self.connections):
            connection.wake()  # a response waiting without a greenlet: answer it now
        notice = min(CLOSE_NOTICE, timeout / 2)
        deadline = monotonic() + notice
        while self.connections and monotonic() < deadline:
            gevent.sleep(0.05)
        self.stop(timeout=max(0.0, deadline - monotonic()) + timeout - notice)

    def stop_accepting(self):
        """Close the listeners and mark the server stopping: every response from now on
        says ``Connection: close``. Connections already open are left to finish."""
        self.stopping = True
        self.stopping_event.set()
        if self.load is not None:
            self.load.withdraw()  # other workers must not leave connections to this one
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

    def _full(self, acceptor=None):
        """At the connection cap? Then, if a client is waiting, make room for it and pause
        the acceptor until the slot frees (a connection to evict may also turn up later:
        the sweep checks again). With nobody waiting the acceptor keeps watching."""
        spawner = self.spawner
        if not spawner.full():
            return False
        spawner.note_full()
        if acceptor is not None and acceptor.client_waiting():
            self._make_room()
            acceptor.pause()
        return True

    def _make_room(self):
        """Close the connection that costs others the most for holding its slot.

        First the longest-idle keep-alive connection (it served a request and sends
        nothing); else the one that has waited longest for its client's bytes (a slow head
        or body, or a connection that never sent anything). Busy connections (an app
        running, a response being sent) are never closed for a newcomer. Returns True if
        one was chosen; the acceptors resume when its slot frees.
        """
        now = monotonic()
        best, best_rank = None, None
        for connection in self.connections:
            rank = connection.eviction_rank(now)
            if rank is not None and (best_rank is None or rank < best_rank):
                best, best_rank = connection, rank
        if best is None:
            return False
        best.evicted = True
        gevent.get_hub().loop.run_callback(best.evict)
        return True

    def _stand_back(self):
        """True if this worker holds clearly more connections than another one sharing
        its listeners: let that one take the next connection (see balance.py)."""
        return self.load.should_stand_back(len(self.spawner))

    def _on_tick(self):
        """Every sweep: the cap, the admin census, memory freed by a burst, the load
        other workers see (connections also end between accepts)."""
        if self.load is not None and not self.stopping:
            self.load.publish(len(self.spawner))
        self._check_cap()
        if self.memory.tick():
            # A burst went idle: its spare greenlets' stacks go back too, keeping a few.
            self.spawner.shrink_idle(IDLE_GREENLETS_KEPT)

    def _check_cap(self):
        """Every sweep: while paused at the cap, make room if a client has come since."""
        stats = self.stats
        if stats is not None and stats.census_wanted():
            from .admin import answer_census
            answer_census(self, stats)
        if self.stopping or not self.spawner.full():
            return
        for acceptor in self._acceptors:
            if acceptor.paused and acceptor.client_waiting():
                self._make_room()
                return

    def _resume_accepting(self):
        """A slot freed after the cap was hit: the acceptors paused, so restart them."""
        if not self.stopping:
            for acceptor in self._acceptors:
                acceptor.start()

def _tls_context(config):
    """The SSL context for --certfile, made of gevent's SSLContext so that the sockets it
    wraps are cooperative even when the process is not monkey-patched."""
    if not getattr(config, "certfile", None):
        return None
    from .tls import server_context
    return server_context(config, cooperative=True)


# Descriptors a worker needs beyond one per connection: listeners, log files, the app's own
# files and database connections.
FD_HEADROOM = 64


def _ensure_fd_limit(max_connections):
    """Raise the soft RLIMIT_NOFILE to what --max-connections needs (up to the hard limit),
    saying what was done; warn if even the hard limit is too low. Otherwise accept() fails
    with EMFILE long before the connection cap is reached."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_HEADROOM
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            error_log.info("raised the open-file limit from %d to %d for --max-connections %d",
                           soft, target, max_connections)
            soft = target
        except (ValueError, OSError) as exc:
            error_log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    if soft < need:
        error_log.warning("the open-file limit (%d, hard limit %d) is below --max-connections "
                          "%d plus %d: new connections will fail with 'too many open files' "
                          "first; raise it (ulimit -n, LimitNOFILE= in systemd) or lower "
                          "--max-connections", soft, hard, max_connections, FD_HEADROOM)


def _server_name_port(sock, tls=False):
    """SERVER_NAME and SERVER_PORT for requests arriving on ``sock``: what a URL to this
    server would hold when a request names no Host (an HTTP/1.0 request)."""
    if sock.family == socket.AF_UNIX:
        # PEP 3333: neither may be empty, and a socket's path is no host name: the local
        # host on the scheme's default port (a proxy in front names the public host).
        return "localhost", "443" if tls else "80"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        host = f"[{host}]"  # RFC 3875 §4.1.14: an IPv6 server-name is written in brackets
    return host, str(port)


def serve(app, **options):
    """Serve ``app`` until SIGTERM/SIGINT (a graceful stop; a second signal stops at once).

    Blocks. ``options`` are the command line's settings (``bind="127.0.0.1:8000"`` is the
    default, as there). Call ``greenserve.patch()`` first, before other imports, for
    blocking code to cooperate. Returns the exit status the command would have.
    """
    from .log import setup_logging

    server = Server(app, **options)
    setup_logging(server.config)
    return run_until_signalled(server)


def run_until_signalled(server, banner=None, admin_socket=None):
    """Start ``server``, log where it listens, and serve until SIGTERM or SIGINT; then stop
    gracefully (up to --graceful-timeout). A second signal stops at once.

    SIGHUP and SIGUSR2 are logged and ignored (reloading needs a master process: run with
    --supervise), and so are SIGTTIN and SIGTTOU (no workers to add or remove: run with
    -w N); SIGUSR1 reopens the log files; SIGQUIT stops at once. Returns 0, or 1 after a
    second SIGTERM or SIGINT.
    """
    import signal

    from .listeners import describe
    from .log import reopen_log_files

    stop_requested, force = Event(), Event()
    quick = []  # SIGQUIT came: stop at once, as a master's workers do on it
    health = admin_server = watch = None
    if admin_socket is not None:
        from .admin import Health
        health = Health()

    def on_stop(signum):
        # Handlers only record the request; the waiting greenlet below does the work.
        if stop_requested.is_set():
            force.set()
        else:
            if health is not None:
                health.set_draining()  # before any connection is closed
            error_log.info("%s received; stopping gracefully (up to %gs)",
                           signal.Signals(signum).name, server.config.graceful_timeout)
            stop_requested.set()

    def on_quit(signum):
        error_log.info("SIGQUIT received; stopping at once (requests in flight are cut)")
        if health is not None:
            health.set_draining()
        quick.append(signum)
        stop_requested.set()
        force.set()

    def on_reopen(signum):
        error_log.info("SIGUSR1 received; reopening log files")
        for problem in reopen_log_files():
            error_log.warning("%s", problem)

    def on_ignored(signum):
        error_log.warning("%s received and ignored: without a master process there is "
                          "nothing to reload (run with --supervise for reloads)",
                          signal.Signals(signum).name)

    def on_scale(signum):
        # Their default action would stop (freeze) the whole server.
        error_log.warning("%s received and ignored: without a master process there are no "
                          "workers to add or remove (run with -w N)",
                          signal.Signals(signum).name)

    handlers = [gevent.signal_handler(signum, on_stop, signum)
                for signum in (signal.SIGTERM, signal.SIGINT)]
    handlers.append(gevent.signal_handler(signal.SIGQUIT, on_quit, signal.SIGQUIT))
    handlers.append(gevent.signal_handler(signal.SIGUSR1, on_reopen, signal.SIGUSR1))
    handlers += [gevent.signal_handler(signum, on_ignored, signum)
                 for signum in (signal.SIGHUP, signal.SIGUSR2)]
    handlers += [gevent.signal_handler(signum, on_scale, signum)
                 for signum in (signal.SIGTTIN, signal.SIGTTOU)]
    try:
        server.start()
        if admin_socket is not None:
            from .admin import AdminRoutes, local_collector, serve_in_process
            routes = AdminRoutes(health, local_collector(server.stats, server,
                                                         server._listeners))
            admin_server = serve_in_process(admin_socket, routes, server.config)
            error_log.info("Admin listener at %s", describe(admin_socket))
            health.set_ready()
        if server.config.block_warning:
            from .blockwatch import BlockWatch
            stats = server.stats
            watch = BlockWatch(server.config.block_warning / 1000,
                               on_block=stats.hub_blocked if stats is not None else None)
            watch.start()
        if banner:
            error_log.info("%s", banner)
        for sock in server._listeners:
            error_log.info("Listening at %s (pid %d)",
                           describe(sock, tls=server.tls_context is not None), os.getpid())
        stop_requested.wait()
        if quick:
            return 0
        stopping = gevent.spawn(server.drain)
        gevent.wait([stopping, force], count=1)
        if not stopping.ready():
            if quick:
                return 0
            error_log.warning("second signal received; exiting without waiting for "
                              "in-flight requests")
            return 1
        stopping.get()  # re-raise whatever stop() raised: it would be a bug worth seeing
        error_log.info("stopped")
        return 0
    finally:
        if watch is not None:
            watch.stop()
        if admin_server is not None:
            admin_server.stop(timeout=1)
        for handler in handlers:
            handler.cancel()
