"""The ``greenserve`` command: ``greenserve MODULE:APP [options]``.

Order matters here. gevent's monkey-patching must run before anything that could create
threads, locks or SSL contexts is imported, so this module imports only the standard
library and ``greenserve.config``/``greenserve.errors`` at the top; logging, gevent, the
application and the server are imported inside ``main`` once patching is done.
"""

import argparse
import dataclasses
import os
import sys

from .config import ENV_PREFIX, SETTINGS, load_config
from .errors import AppLoadError, ConfigError

PROG = "greenserve"

EPILOG = f"""\
Every option can also be set in a TOML file given with -c/--config (keys are the option
names, e.g. max-connections = 500) and in an environment variable {ENV_PREFIX}<OPTION>
(e.g. {ENV_PREFIX}MAX_CONNECTIONS=500; lists separated by commas or spaces). Precedence:
command line > environment > config file > default.

APP forms: module:name, module (uses 'application', then 'app'), module:factory() and
module:factory(literal, key=literal). The current directory is importable.

SIGTERM or SIGINT stops the server gracefully: it stops accepting, lets in-flight requests
finish (up to --graceful-timeout) and exits 0. A second signal stops it at once (exit 1).

With --workers above 1 (or --supervise) a master process binds the addresses and forks the
workers, each loading the app. Signals to the master: TERM/INT graceful stop, QUIT fast
stop, HUP reload (new workers load the app afresh, then the old ones drain), TTIN/TTOU one
worker more/fewer. systemd socket activation (LISTEN_FDS) is used when present.
"""


def version():
    """greenserve's version, without importing the server (and so gevent)."""
    try:
        from . import __version__
        return __version__
    except ImportError:  # the package's __init__ is not there yet (early checkouts)
        try:
            from importlib.metadata import version as dist_version
            return dist_version("greenserve")
        except Exception:
            return "unknown"


def _show_default(spec):
    """The default as a user would type it, or None when there is nothing to show."""
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    else:
        value = spec.default_factory()
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(str(item) for item in value)
    return str(value)


def build_parser():
    """An argparse parser generated from ``SETTINGS``: one option per declared setting.

    Options not given on the command line are absent from the namespace (SUPPRESS), so
    only what the user typed overrides the environment and the config file.
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="Serve a WSGI application with gevent.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS)
    parser.add_argument("app", metavar="APP", help="the WSGI application, as MODULE:APP")
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    for name, spec in SETTINGS.items():
        meta = spec.metadata
        help_text = meta["help"].replace("%", "%%")
        shown = _show_default(spec)
        notes = [f"default: {shown}".replace("%", "%%")] if shown is not None else []
        if not meta["cli_only"] or name == "config":  # load_config reads GREENSERVE_CONFIG
            notes.append(f"env {ENV_PREFIX}{name.upper()}")
        if notes:
            help_text += f" [{'; '.join(notes)}]"
        if meta["flag"]:
            parser.add_argument(*meta["flags"], dest=name, help=help_text,
                                action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(*meta["flags"], dest=name, help=help_text,
                                metavar=meta["metavar"] or name.upper(),
                                action="append" if meta["multiple"] else "store")
    return parser


def main(argv=None):
    """Run greenserve as a command; returns the process exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


def _main(argv):
    args = vars(build_parser().parse_args(argv))  # bad usage: argparse prints and exits 2
    spec = args.pop("app")
    try:
        config = load_config(cli=args, environ=os.environ, base=_platform_defaults(os.environ))
    except ConfigError as exc:
        return _fail(exc)

    if config.workers > 1 or config.supervise:
        return _supervise(spec, config)

    patch_warnings = _monkey_patch() if config.monkey_patch else []
    _guard_timers()

    # Only now is it safe to import things that touch threads, sockets or the app.
    from .appload import format_app_error, load_app
    from .log import error_log, setup_logging

    from . import listeners, tls

    sockets = []
    admin_socket = None
    try:
        _setup_import_path(config)
        setup_logging(config)
        for line in patch_warnings:
            error_log.warning("%s", line)
        identity = listeners.resolve_identity(config.user, config.group)
        # A bad certificate stops the start before a slow app loads; read while still
        # root, as the key may be readable by root only.
        tls_context = tls.server_context(config, cooperative=True)
        if identity is not None:
            # Bind first (port 80, a socket in /run), then switch: the app never runs as root.
            sockets = _bind(config, identity)
            admin_socket = _bind_admin(config)
            listeners.drop_privileges(identity)
        try:
            app = load_app(spec)
        except AppLoadError as exc:
            # The app's own exception (import error, raising factory) is shown in full.
            sys.stderr.write(format_app_error(exc))
            raise
        if identity is None:
            sockets = _bind(config)
            admin_socket = _bind_admin(config)
    except (ConfigError, AppLoadError) as exc:
        _close(sockets + ([admin_socket] if admin_socket is not None else []))
        return _fail(exc)

    return _serve(app, spec, config, sockets, tls_context, admin_socket)


def _platform_defaults(environ):
    """Defaults a hosting platform sets, below every greenserve source; None if none.

    WEB_CONCURRENCY (Heroku and others, honoured by gunicorn) is the number of workers
    unless -w, GREENSERVE_WORKERS or the config file says otherwise. It is read here, not
    declared as a setting, because it is not ours: it has no flag and no config key.
    """
    raw = environ.get("WEB_CONCURRENCY")
    if not raw:
        return None
    from .config import Config, parse_value
    return Config(workers=parse_value("workers", raw, "env WEB_CONCURRENCY"))


def _bind(config, identity=None):
    """The listening sockets: systemd's (socket activation) and then --bind's."""
    inherited, created = _bind_split(config, identity)
    return inherited + created


def _close(sockets):
    """Close sockets bound for a start that failed, and remove the unix socket files."""
    from . import listeners
    paths = listeners.unix_paths(sockets)
    for sock in sockets:
        sock.close()
    listeners.remove_unix_files(paths)


def _bind_split(config, identity=None):
    """(systemd's sockets, the ones --bind created); unix sockets are given to
    ``identity``, the user and group the server will run as."""
    from . import listeners
    inherited = listeners.systemd_listeners(os.environ, os.getpid())
    binds = config.bind
    if inherited:
        # systemd's sockets replace the default address; other --bind addresses add to them.
        default = SETTINGS["bind"].default_factory()
        taken = {f"fd://{sock.fileno()}" for sock in inherited}
        binds = [b for b in binds if b not in default and b.strip() not in taken]
    try:
        return inherited, listeners.create_listeners(
            binds, config.backlog, config.reuse_port, listeners.unix_socket_mode(config),
            identity)
    except BaseException:
        for sock in inherited:
            sock.detach()
        raise


def _supervise(spec, config):
    """Run the pre-fork master; each worker patches, loads the app afresh and serves.

    The master itself neither monkey-patches nor imports the app: forked workers then
    import the code as it is on disk (so SIGHUP picks up changes), and patch in a process
    with no threads and no hub yet.
    """
    from . import listeners, tls
    from .log import error_log, setup_logging
    from .supervisor import Supervisor

    try:
        _setup_import_path(config)
        setup_logging(config)
        identity = listeners.resolve_identity(config.user, config.group)
        # Checked here, once: a bad certificate must not make every worker fail in turn.
        tls.check_in_child(config)
        inherited, created = _bind_split(config, identity)
        sockets = inherited + created
        admin_socket = _bind_admin(config)
    except ConfigError as exc:
        return _fail(exc)
    monitor = health = admin = None
    if admin_socket is not None:
        from .admin import MASTER_LIVE_TIMEOUT, AdminRoutes, AdminThread, Health
        from .metrics import Supervision
        health = Health(live_timeout=MASTER_LIVE_TIMEOUT)
        holder = {}
        monitor = Supervision(listeners=lambda: holder["supervisor"]._all_listeners())
        admin = AdminThread(admin_socket, AdminRoutes(health, monitor.collect))

    def boot(worker_sockets, info):  # runs in each forked worker
        notes = _monkey_patch() if config.monkey_patch else []
        _guard_timers()
        # Read while still root: the key may be readable by root only.
        tls_context = tls.server_context(config, cooperative=True)
        # The master keeps root (to bind --reuse-port copies, remove its unix sockets);
        # the workers, which run the app, switch before loading it.
        listeners.drop_privileges(identity)
        from .worker import run
        return run(spec, config, worker_sockets, info, notes, tls_context)

    unix_files = listeners.unix_paths(sockets + ([admin_socket] if admin_socket else []))
    error_log.info("greenserve %s serving %s", version(), spec)
    for sock in sockets:
        error_log.info("Listening at %s (pid %d)", listeners.describe(sock), os.getpid())
    try:
        # systemd's sockets stay open through a stop: systemd queues for the next start.
        supervisor = Supervisor(config, sockets, boot, keep_listening=inherited,
                                monitor=monitor, health=health, admin=admin)
        if admin is not None:
            holder["supervisor"] = supervisor
            admin.start()
            error_log.info("Admin listener at %s", listeners.describe(admin_socket))
        return supervisor.run()
    except AppLoadError as exc:
        return _fail(exc)
    finally:
        if admin is not None:
            admin.stop()
        for sock in sockets:
            sock.close()
        listeners.remove_unix_files(unix_files)


def _bind_admin(config):
    """The --metrics-bind listening socket, or None."""
    if not config.metrics_bind:
        return None
    from .listeners import create_listeners
    return create_listeners([config.metrics_bind], 64)[0]


def _fail(message):
    sys.stderr.write(f"{PROG}: error: {message}\n")
    return 2


def _monkey_patch():
    """Patch the standard library for gevent; return warnings about what came too late.

    The warnings are returned rather than logged because logging is not set up yet (and
    must not be: importing logging before patching creates locks that are not gevent's).
    """
    import threading
    # ssl keeps blocking socket internals; the HTTP clients name the usual culprit.
    late = [name for name in ("ssl", "urllib3", "requests") if name in sys.modules]
    threads = threading.active_count()
    import warnings
    from gevent import monkey
    with warnings.catch_warnings():
        # gevent warns about ssl in several lines; we say it once, below, in one line.
        warnings.simplefilter("ignore")
        monkey.patch_all()
    lines = []
    if late:
        lines.append(f"imported before gevent monkey-patching, may block or misbehave: "
                     f"{', '.join(late)} (import them after greenserve starts, e.g. in the app)")
    if threads > 1:
        lines.append(f"{threads - 1} thread(s) were already running before gevent "
                     f"monkey-patching; they stay real threads")
    return lines


def _guard_timers():
    """gevent.sleep/Timeout refuse NaN: one bad sleep would stop every timer of the hub."""
    from .timers import guard_gevent_timers
    guard_gevent_timers()


def _setup_import_path(config):
    """--chdir, then make the working directory and --pythonpath importable (like gunicorn)."""
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise ConfigError(f"chdir {config.chdir}: "
                              f"{(exc.strerror or str(exc)).lower()}") from None
    cwd = os.getcwd()
    for entry in reversed((cwd, *config.pythonpath)):
        entry = os.path.abspath(entry)
        if entry not in sys.path:
            sys.path.insert(0, entry)
    # An entry point script's own directory is sys.path[0]; keep cwd ahead of it.
    if sys.path[0] != cwd and cwd in sys.path:
        sys.path.remove(cwd)
        sys.path.insert(0, cwd)


def _serve(app, spec, config, sockets, tls_context=None, admin_socket=None):
    """Run the one process (no master) until SIGTERM/SIGINT; stop gracefully; the exit code."""
    from . import listeners
    from .server import Server, run_until_signalled

    everything = sockets + ([admin_socket] if admin_socket is not None else [])
    unix_files = listeners.unix_paths(everything)
    stats = None
    if admin_socket is not None:
        from .metrics import private_stats
        stats = private_stats()[1]
    server = Server(app, config, listeners=sockets, tls_context=tls_context, stats=stats)
    try:
        return run_until_signalled(server, f"greenserve {version()} serving {spec}",
                                   admin_socket)
    finally:
        listeners.remove_unix_files(unix_files)
