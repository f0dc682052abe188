"""The ``greenserve`` command: ``greenserve MODULE:APP [options]``.

Order matters here. gevent's monkey-patching must run before anything that could create
threads, locks or SSL contexts is imported, so this module imports only the standard
library and ``greenserve.config``/``greenserve.errors`` at the top; logging, gevent, the
application and the server are imported inside ``main`` once patching is done.
"""

import argparse
import dataclasses
import difflib
import os
import signal
import sys

from . import speedups
from .config import (ENV_PREFIX, SETTINGS, WORKER_PROCESS_HOOKS, format_toml, given_settings,
                     load_config, option_name, unknown_env_warnings)
from .errors import AppLoadError, ConfigError
from .gunicorn_options import gunicorn_hints
from .pidfile import remove_pid_file, write_pid_file

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
workers, each loading the app. --reload, --preload, an explicit --timeout, --max-requests
and the worker hooks start one too. Signals to the master: TERM/INT graceful stop, QUIT fast
stop, HUP reload (new workers load the app afresh, then the old ones drain; with --preload
they start from the master's copy, so code is not reloaded), TTIN/TTOU one worker
more/fewer. systemd socket activation (LISTEN_FDS) is used when present.

Server hooks (--on-starting ... --post-request, or the same keys in the config file) name
functions as MODULE:FUNCTION; a hook that raises at start-up stops greenserve (exit 2).
"""


def version():
    """greenserve's version, without importing the server (and so gevent)."""
    from . import __version__
    return __version__


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
    parser = _Parser(
        prog=PROG, description="Serve a WSGI application with gevent.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS)
    # Optional for argparse only so that --print-config needs no app; _main requires it.
    parser.add_argument("app", metavar="APP", nargs="?",
                        help="the WSGI application, as MODULE:APP")
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


class _Parser(argparse.ArgumentParser):
    """argparse, except that every usage error is one line on stderr, exit 2: a gunicorn
    option it does not know gets a hint (its greenserve spelling, or why greenserve lacks
    it), anything else argparse's reason and a pointer to --help instead of the usage text."""

    argv = ()

    def error(self, message):
        self.fail([f"{message} (see {PROG} --help)"])

    def fail(self, lines):
        """Write ``lines`` as errors (gunicorn hints first, as they are the likely cause)."""
        hints = gunicorn_hints(self.argv, self._option_string_actions)
        for line in hints or lines:
            sys.stderr.write(f"{PROG}: error: {line}\n")
        sys.exit(2)

    def parse(self, argv):
        """The options given, as a dict; a usage error exits 2 with one line."""
        # parse_known_args, so the extras can be told apart here: argparse itself only says
        # "unrecognized arguments: ..." and prints the whole usage.
        namespace, extras = self.parse_known_args(argv)
        if extras:
            self.fail([_unrecognized(extras, self._option_string_actions)])
        return vars(namespace)


def _unrecognized(extras, known):
    """One line about the first argument greenserve did not take."""
    options = [token for token in extras if token.startswith("-") and token != "-"]
    if not options:
        return (f"unexpected argument {extras[0]!r}: greenserve serves one APP (see "
                f"{PROG} --help)")
    flag = options[0].partition("=")[0]
    longs = [name for name in known if name.startswith("--")]
    close = difflib.get_close_matches(flag, longs, 1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unrecognized option {flag}{hint} (see {PROG} --help)"


def main(argv=None):
    """Run greenserve as a command; returns the process exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers are in place
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


def _main(argv):
    parser = build_parser()
    parser.argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse(parser.argv)  # bad usage: one line, exit 2
    spec = args.pop("app", None)
    try:
        config = load_config(cli=args, environ=os.environ, base=_platform_defaults(os.environ),
                             cli_source="the command line")
        given = given_settings(args, os.environ)
    except ConfigError as exc:
        return _fail(exc)
    if config.print_config:
        sys.stdout.write(format_toml(config, given))
        return 0
    if spec is None:
        parser.fail([f"no application given: {PROG} MODULE:APP [options] (see {PROG} --help)"])
    notes = unknown_env_warnings(os.environ) + _gunicorn_conf_warning(config)
    for pair in config.env:  # -e KEY=VALUE: for the app, the hooks and every worker
        key, _, value = pair.partition("=")
        os.environ[key] = value
    if config.reload and config.preload:
        return _fail("--reload and --preload exclude each other: with --preload the code is "
                     "loaded once, in the master, and cannot reload")

    if config.check_config:
        return _check(spec, config, notes)
    why_master = _needs_master(config, given)
    if config.workers > 1 or config.supervise or why_master:
        return _supervise(spec, config, notes, why_master)
    return _single(spec, config, notes)


def _gunicorn_conf_warning(config):
    """A warning when ./gunicorn.conf.py is there and no config file is named: gunicorn
    reads that file by default (its --config default is ./gunicorn.conf.py), so a project
    moving over may believe its settings apply."""
    if config.config or os.environ.get(f"{ENV_PREFIX}CONFIG") or \
            not os.path.isfile("gunicorn.conf.py"):
        return []
    return ["./gunicorn.conf.py is not read: greenserve takes its settings from the command "
            "line, GREENSERVE_* variables and a TOML file given with -c (see "
            "docs/migrating-from-gunicorn.md)"]


def _needs_master(config, given):
    """The options given that only a master process can honour (it starts implicitly)."""
    reasons = [flag for flag, wanted in (
        ("--reload", config.reload),
        ("--preload", config.preload),
        # Without a master nobody watches the hub: an explicit --timeout asks for that.
        ("--timeout", "timeout" in given and config.timeout),
        ("--max-requests", config.max_requests)) if wanted]
    reasons += [f"--{option_name(name)}" for name in WORKER_PROCESS_HOOKS if getattr(config, name)]
    return reasons


class _StoppedWhileStarting(BaseException):
    """SIGTERM arrived before the server's signal handlers were in place."""


def _stop_while_starting_in(main):
    """A SIGTERM handler that ends the start in the ``main`` greenlet, where it runs (an app
    whose import waits runs gevent's hub meanwhile: the handler runs there, and the stop is
    thrown into the main greenlet from it rather than raised, and printed, in the hub)."""
    def stop(signum, frame):
        import greenlet
        if greenlet.getcurrent() is main or "gevent" not in sys.modules:
            raise _StoppedWhileStarting()
        import gevent
        gevent.get_hub().loop.run_callback(main.throw, _StoppedWhileStarting())
    return stop


def _single(spec, config, notes):
    """One process, no master: patch, load the app, bind, serve."""
    patch_warnings = _monkey_patch() if config.monkey_patch else []
    _guard_timers()

    # Only now is it safe to import things that touch threads, sockets or the app.
    from . import listeners, tls
    from .hooks import MASTER_HOOKS, Hooks, HookFailed, ServerView, WorkerView
    from .log import error_log, setup_logging

    server_view = ServerView(config, spec, os.getpid())
    try:
        _setup_import_path(config)
        setup_logging(config)
        hooks = Hooks(config, (*MASTER_HOOKS, "pre_request", "post_request"))
        pid_file = write_pid_file(config.pid)
    except (ConfigError, AppLoadError) as exc:
        return _fail(exc)
    for line in [*notes, *patch_warnings]:
        error_log.warning("%s", line)
    _set_title("server", config, spec, error_log)
    try:
        try:
            hooks.call("on_starting", server_view)
        except HookFailed as exc:
            return _fail(exc)
        sockets, admin_socket = [], None
        # Until the server's own handlers are in place (once the app has loaded), SIGTERM
        # would kill the process outright: no log line, exit status 143, the --pid file
        # left behind. There is nothing to drain yet: stop as from a failed start.
        import greenlet
        previous_term = signal.signal(signal.SIGTERM,
                                      _stop_while_starting_in(greenlet.getcurrent()))
        try:
            identity = listeners.resolve_identity(config.user, config.group)
            # A bad certificate stops the start before a slow app loads; read while still
            # root, as the key may be readable by root only.
            tls_context = tls.server_context(config, cooperative=True)
            if identity is not None:
                # Bind first (port 80, a socket in /run), then switch: the app never runs
                # as root.
                sockets = _bind(config, identity)
                admin_socket = _bind_admin(config)
                listeners.drop_privileges(identity)
            app = _load_app_showing_cause(spec)
            if identity is None:
                sockets = _bind(config)
                admin_socket = _bind_admin(config)
        except (ConfigError, AppLoadError) as exc:
            _close(sockets + ([admin_socket] if admin_socket is not None else []))
            hooks.call_logged("on_exit", server_view)
            return _fail(exc)
        except _StoppedWhileStarting:
            _close(sockets + ([admin_socket] if admin_socket is not None else []))
            error_log.info("SIGTERM received while starting (loading the app); stopped")
            hooks.call_logged("on_exit", server_view)
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous_term)
        worker_view = WorkerView(os.getpid(), 0, config)
        worker_view.app = app
        return _serve(hooks.wrap_app(app, worker_view), spec, config, sockets, hooks,
                      server_view, tls_context, admin_socket)
    finally:
        remove_pid_file(pid_file)


def _check(spec, config, notes=()):
    """--check-config: load the settings, the app and every hook as a worker would; bind
    nothing, start nothing. 0 if all of it loads, else 2 with the reason. The warnings a
    real start would log come first, on stderr: a check that hides them is no check."""
    # Monkey-patched so that the app imports as it will when served.
    patch_warnings = _monkey_patch() if config.monkey_patch else []
    for line in [*notes, *patch_warnings]:
        sys.stderr.write(f"{PROG}: warning: {line}\n")
    from . import listeners, tls
    from .hooks import ARGUMENTS, Hooks
    from .log import check_logging
    try:
        # What a real start refuses before it loads the app: a malformed --bind address, an
        # unknown or unusable --user/--group, a missing or mismatched certificate or key.
        for text in config.bind:
            listeners.parse_bind(text)
        listeners.resolve_identity(config.user, config.group)
        tls.server_context(config)
        _setup_import_path(config)
        for text in config.bind:
            # A unix socket's folder, as the start (after --chdir) would need it.
            address = listeners.parse_bind(text)
            if address[0] == "unix" and not os.path.isdir(
                    os.path.dirname(os.path.abspath(address[1]))):
                raise ConfigError(f"bind {text}: no such directory")
        if config.pid:
            # The --pid file's folder: the start writes the file there (not checked: whether
            # it names a running greenserve, as it does while one serves).
            folder = os.path.dirname(os.path.abspath(config.pid))
            if not os.path.isdir(folder):
                raise ConfigError(f"pid file {os.path.abspath(config.pid)}: no such file or "
                                  f"directory")
        check_logging(config)  # loads --log-config too
        if config.reload:
            from .reload import require_watchfiles, watched_roots
            require_watchfiles()
            watched_roots(config, os.getcwd())
        _load_app_showing_cause(spec)
        Hooks(config, ARGUMENTS)
    except (ConfigError, AppLoadError) as exc:
        return _fail(exc)
    sys.stdout.write(f"{PROG}: configuration OK; {spec} loads\n")
    return 0


def _load_app_showing_cause(spec):
    """load_app, writing the app's own traceback (import error, raising factory) to stderr
    before the one-line error."""
    from .appload import format_app_error, load_app
    try:
        return load_app(spec)
    except AppLoadError as exc:
        sys.stderr.write(format_app_error(exc))
        raise


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


def _bind_admin(config):
    """The --metrics-bind listening socket, or None."""
    if not config.metrics_bind:
        return None
    from .listeners import create_listeners
    return create_listeners([config.metrics_bind], 64)[0]


def _supervise(spec, config, notes=(), why_master=()):
    """Run the pre-fork master; each worker patches, loads the app afresh and serves.

    The master itself neither monkey-patches nor imports the app: forked workers then
    import the code as it is on disk (so SIGHUP picks up changes), and patch in a process
    with no threads and no hub yet. With --preload it does both, once, before forking.
    """
    preload = config.preload
    patch_warnings = _monkey_patch() if preload and config.monkey_patch else []
    if preload:
        _guard_timers()

    from . import listeners, tls
    from .hooks import MASTER_HOOKS, Hooks, HookFailed, ServerView
    from .log import error_log, setup_logging
    from .supervisor import Supervisor

    server_view = ServerView(config, spec, os.getpid())
    reloader = None
    try:
        _setup_import_path(config)
        if config.reload:
            from .reload import Reloader, require_watchfiles, watched_roots
            require_watchfiles()
            reloader = Reloader(watched_roots(config, os.getcwd()), config.reload_extra_files)
        setup_logging(config)
        hooks = Hooks(config, MASTER_HOOKS)
        identity = listeners.resolve_identity(config.user, config.group)
        # Checked here, once: a bad certificate must not make every worker fail in turn.
        tls.check_in_child(config)
        pid_file = write_pid_file(config.pid)
    except (ConfigError, AppLoadError) as exc:
        return _fail(exc)
    for line in [*notes, *patch_warnings]:
        error_log.warning("%s", line)
    if why_master and config.workers == 1 and not config.supervise:
        error_log.info("starting a master process (as --supervise does): %s %s one",
                       " and ".join(why_master), "needs" if len(why_master) == 1 else "need")
    _set_title("master", config, spec, error_log)

    try:
        try:
            hooks.call("on_starting", server_view)
        except HookFailed as exc:
            return _fail(exc)
        sockets, admin_socket = [], None
        try:
            app = _load_app_showing_cause(spec) if preload else None
            inherited, created = _bind_split(config, identity)
            sockets = inherited + created
            admin_socket = _bind_admin(config)
        except (ConfigError, AppLoadError) as exc:
            _close(sockets)
            hooks.call_logged("on_exit", server_view)
            return _fail(exc)
        server_view.addresses = [listeners.describe(sock, tls=bool(config.certfile))
                                 for sock in sockets]
        monitor = health = admin = None
        if admin_socket is not None:
            from .admin import MASTER_LIVE_TIMEOUT, AdminRoutes, AdminThread, Health
            from .metrics import Supervision
            health = Health(live_timeout=MASTER_LIVE_TIMEOUT)
            holder = {}
            monitor = Supervision(listeners=lambda: holder["supervisor"]._all_listeners())
            admin = AdminThread(admin_socket, AdminRoutes(health, monitor.collect))

        def boot(worker_sockets, info):  # runs in each forked worker
            _set_title("worker", config, spec)
            notes = _monkey_patch() if config.monkey_patch and not preload else []
            _guard_timers()
            # Read while still root: the key may be readable by root only.
            tls_context = tls.server_context(config, cooperative=True)
            # The master keeps root (to bind --reuse-port copies, remove its unix sockets);
            # the workers, which run the app, switch before loading it.
            listeners.drop_privileges(identity)
            from .worker import run
            return run(spec, config, worker_sockets, info, notes, app=app,
                       server_view=server_view, tls_context=tls_context)

        unix_files = listeners.unix_paths(sockets + ([admin_socket] if admin_socket else []))
        error_log.info("greenserve %s (%s) serving %s%s", version(), speedups.describe(), spec,
                       " (preloaded in the master)" if preload else "")
        for sock in sockets:
            error_log.info("Listening at %s (pid %d)",
                           listeners.describe(sock, tls=bool(config.certfile)), os.getpid())
        try:
            # systemd's sockets stay open through a stop: systemd queues for the next start.
            supervisor = Supervisor(config, sockets, boot, keep_listening=inherited,
                                    on_ready=lambda: hooks.call("when_ready", server_view),
                                    reloader=reloader, monitor=monitor, health=health,
                                    admin=admin)
            if admin is not None:
                holder["supervisor"] = supervisor
                admin.start()
                error_log.info("Admin listener at %s", listeners.describe(admin_socket))
            return supervisor.run()
        except (AppLoadError, ConfigError, HookFailed) as exc:
            return _fail(exc)
        finally:
            if admin is not None:
                admin.stop()
            for sock in sockets + ([admin_socket] if admin_socket else []):
                sock.close()
            listeners.remove_unix_files(unix_files)
            hooks.call_logged("on_exit", server_view)
    finally:
        remove_pid_file(pid_file)


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
    for entry in config.pythonpath:
        # Relative entries are read after --chdir, as the import system will read them. A
        # missing one would only show up later as a puzzling "no module named ...". (An
        # existing file is let through: a zip archive is a valid sys.path entry.)
        if not os.path.exists(entry):
            hint = " (give one directory per --pythonpath)" if "," in entry else ""
            raise ConfigError(f"pythonpath {entry}: no such file or directory{hint}")
    for entry in reversed((cwd, *config.pythonpath)):
        entry = os.path.abspath(entry)
        if entry not in sys.path:
            sys.path.insert(0, entry)
    # An entry point script's own directory is sys.path[0]; keep cwd ahead of it.
    if sys.path[0] != cwd and cwd in sys.path:
        sys.path.remove(cwd)
        sys.path.insert(0, cwd)


def _serve(app, spec, config, sockets, hooks, server_view, tls_context=None,
           admin_socket=None):
    """Run the one process (no master) until SIGTERM/SIGINT; stop gracefully; the exit code."""
    from . import listeners
    from .collector import freeze_startup_objects
    from .hooks import HookFailed
    from .server import Server, run_until_signalled

    unix_files = listeners.unix_paths(sockets + ([admin_socket] if admin_socket else []))
    server_view.addresses = [listeners.describe(sock, tls=bool(config.certfile))
                             for sock in sockets]
    stats = None
    if admin_socket is not None:
        from .metrics import private_stats
        stats = private_stats()[1]
    server = Server(app, config, listeners=sockets, tls_context=tls_context, stats=stats)
    try:
        server.start()
        try:
            hooks.call("when_ready", server_view)
        except HookFailed as exc:
            server.stop(timeout=0)
            return _fail(exc)
        freeze_startup_objects()
        return run_until_signalled(server, f"greenserve {version()} ({speedups.describe()}) "
                                           f"serving {spec}",
                                   admin_socket)
    finally:
        listeners.remove_unix_files(unix_files)
        hooks.call_logged("on_exit", server_view)


# -- process titles and the pid file ---------------------------------------------------------

def _set_title(role, config, spec, log=None):
    """'greenserve: master [NAME]' in ps and top, when setproctitle is installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        if config.name and log is not None:
            log.warning("--name: process titles need the setproctitle package (pip install "
                        "setproctitle); they are left as they are")
        return
    setproctitle(f"{PROG}: {role} [{config.name or spec}]")
