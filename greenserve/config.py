"""Every setting, declared once: CLI flag, env var, config-file key, default, help, validation.

Precedence: command line > ``GREENSERVE_<NAME>`` environment > TOML config file > default.
Nothing here reads the environment or the disk on import; callers pass them in.
"""

import dataclasses
import difflib
from dataclasses import dataclass, field

from . import setting_values as parsers
from .accessformat import ATOMS, JSON_PRESET
from .errors import ConfigError
from .protocol.parser import Limits
from .speedups import VARIABLES as SPEEDUP_VARIABLES

ENV_PREFIX = "GREENSERVE_"
_PARSER_LIMITS = Limits()


def setting(default, *flags, help, parse=parsers.text_value, metavar=None, multiple=False,
            flag=False, cli_only=False):
    """Declare one setting as a dataclass field carrying its CLI/env/file metadata."""
    meta = {"flags": flags, "help": help, "parse": parse, "metavar": metavar,
            "multiple": multiple, "flag": flag, "cli_only": cli_only}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """greenserve's settings. Build one with ``Config(**options)`` or ``load_config(...)``."""

    # -- listening ------------------------------------------------------------------------
    bind: tuple = setting(
        ("127.0.0.1:8000",), "-b", "--bind", multiple=True, metavar="ADDRESS",
        help="Address to listen on: HOST:PORT, [IPv6]:PORT, unix:/path or fd://N. "
             "Repeat for several.")
    backlog: int = setting(
        2048, "--backlog", parse=parsers.positive_int, metavar="N",
        help="Pending connections the kernel queues before refusing new ones.")
    max_connections: int = setting(
        10000, "--max-connections", "--worker-connections", parse=parsers.positive_int, metavar="N",
        help="Open connections one worker handles at once (its greenlet pool size).")
    workers: int = setting(
        1, "-w", "--workers", parse=parsers.positive_int, metavar="N",
        help="Worker processes to fork (each runs its own gevent hub). More than 1 starts "
             "a master process; WEB_CONCURRENCY is used when neither -w nor "
             "GREENSERVE_WORKERS nor the config file sets it.")
    supervise: bool = setting(
        False, "--supervise", parse=parsers.boolean, flag=True,
        help="Run a master process even with one worker: it restarts a worker that dies, "
             "reloads on SIGHUP and scales on SIGTTIN/SIGTTOU.")
    reuse_port: bool = setting(
        False, "--reuse-port", parse=parsers.boolean, flag=True,
        help="Give each worker its own SO_REUSEPORT listening socket per TCP address, so "
             "the kernel spreads connections evenly (Linux).")

    # -- sockets and privileges -------------------------------------------------------------
    umask: int = setting(
        0, "--umask", parse=parsers.octal_mode, metavar="MODE",
        help="Permission bits (octal, as umask takes them) removed from the unix sockets "
             "greenserve creates. The default 0 lets any local user connect (a reverse "
             "proxy running as another user must be able to); 007 keeps other users out.")
    socket_mode: int = setting(
        None, "--socket-mode", parse=parsers.optional_mode, metavar="MODE",
        help="Exact permissions (octal, e.g. 660) of the unix sockets greenserve creates; "
             "overrides --umask.")
    user: str = setting(
        None, "--user", parse=parsers.account, metavar="USER",
        help="After binding, switch to this user (name or id), with its groups: bind port "
             "80 or a socket in /run as root, then serve as e.g. www-data. Needs root. "
             "With workers, the master stays root and the workers switch.")
    group: str = setting(
        None, "--group", parse=parsers.account, metavar="GROUP",
        help="After binding, switch to this group (name or id); default: the --user's own "
             "group. Needs root. Unix sockets greenserve creates belong to --user/--group.")

    # -- TLS --------------------------------------------------------------------------------
    certfile: str = setting(
        None, "--certfile", parse=parsers.optional_str, metavar="FILE",
        help="Serve HTTPS with this PEM certificate (chain first, then intermediates; the "
             "private key may follow in the same file).")
    keyfile: str = setting(
        None, "--keyfile", parse=parsers.optional_str, metavar="FILE",
        help="The PEM private key of --certfile, when it is not in that file. It is read "
             "before --user takes effect, so it may stay readable by root only.")
    ca_certs: str = setting(
        None, "--ca-certs", parse=parsers.optional_str, metavar="FILE",
        help="PEM file of the certificate authorities whose client certificates are "
             "accepted (with --cert-reqs).")
    cert_reqs: str = setting(
        "none", "--cert-reqs", parse=parsers.cert_reqs, metavar="WHEN",
        help="Client certificates: none (not asked for), optional (checked if sent) or "
             "required (the handshake fails without a valid one).")
    ciphers: str = setting(
        None, "--ciphers", parse=parsers.optional_str, metavar="LIST",
        help="OpenSSL cipher list for TLS 1.2 (e.g. ECDHE+AESGCM:ECDHE+CHACHA20); TLS 1.3 "
             "always uses its own strong suites. Default: Python's.")
    tls_min_version: str = setting(
        "1.2", "--tls-min-version", parse=parsers.tls_version, metavar="VERSION",
        help="Oldest TLS version accepted: 1.2 or 1.3.")

    # -- application ----------------------------------------------------------------------
    chdir: str = setting(
        None, "--chdir", parse=parsers.optional_str, metavar="DIR",
        help="Change to this directory before loading the application.")
    pythonpath: tuple = setting(
        (), "--pythonpath", multiple=True, metavar="DIR",
        help="Add a directory to sys.path before loading the application (repeatable).")
    root_path: str = setting(
        "", "--root-path", parse=parsers.root_path, metavar="PATH",
        help="SCRIPT_NAME the application is mounted under (e.g. /app behind a proxy).")
    monkey_patch: bool = setting(
        True, "--monkey-patch", parse=parsers.boolean, flag=True,
        help="Run gevent.monkey.patch_all() before loading anything "
             "(--no-monkey-patch turns it off).")
    server_header: str = setting(
        "greenserve", "--server-header", parse=parsers.field_value, metavar="TEXT",
        help="The Server header greenserve adds to responses that lack one, and to its own "
             "error responses ('' = none).")
    forwarded_allow_ips: str = setting(
        "127.0.0.1,::1", "--forwarded-allow-ips", parse=parsers.trusted_peers, metavar="ADDRESSES",
        help="Proxies whose X-Forwarded-For/-Proto/-Host/-Port/-Prefix and Forwarded "
             "headers are applied (client address, scheme, host): comma-separated "
             "addresses and CIDR networks, 'unix' for peers on a unix socket, '*' for any "
             "peer, '' for none. From other peers the headers reach the app untouched.")
    proxy_protocol: bool = setting(
        False, "--proxy-protocol", parse=parsers.boolean, flag=True,
        help="Expect a PROXY protocol header (HAProxy v1 or v2) before each connection's "
             "first request, from the peers in --proxy-allow-ips; it sets the client "
             "address. Connections without a valid one are closed.")
    proxy_allow_ips: str = setting(
        "127.0.0.1,::1", "--proxy-allow-ips", parse=parsers.trusted_peers, metavar="ADDRESSES",
        help="Peers allowed to send a PROXY protocol header (same forms as "
             "--forwarded-allow-ips); others are closed at once.")
    url_scheme: str = setting(
        "http", "--url-scheme", parse=parsers.url_scheme, metavar="SCHEME",
        help="wsgi.url_scheme for requests (set to https behind a TLS-terminating proxy).")

    # -- limits (RFC 9112 leaves them to the server) ----------------------------------------
    # The numbers are the protocol core's own defaults (it cannot import this module, so
    # they are written once, there) and reach it back through Limits.from_config().
    limit_request_line: int = setting(
        _PARSER_LIMITS.request_line, "--limit-request-line", parse=parsers.head_limit,
        metavar="BYTES",
        help="Longest request line; longer gets 414.")
    limit_request_field_size: int = setting(
        _PARSER_LIMITS.field_size, "--limit-request-field-size", parse=parsers.head_limit,
        metavar="BYTES",
        help="Longest header line; longer gets 431.")
    limit_request_fields: int = setting(
        _PARSER_LIMITS.fields, "--limit-request-fields", parse=parsers.head_limit, metavar="N",
        help="Most header fields in one request; more gets 431.")
    limit_request_head: int = setting(
        _PARSER_LIMITS.head, "--limit-request-head", parse=parsers.head_limit, metavar="BYTES",
        help="Largest header block; larger gets 431.")
    buffer_chunked_bodies: int = setting(
        0, "--buffer-chunked-bodies", parse=parsers.non_negative_int, metavar="BYTES",
        help="Read a chunked request body (up to BYTES, else 413) before calling the app and "
             "set CONTENT_LENGTH, for frameworks that ignore bodies without one (Django, "
             "Bottle); 0 = off, the app reads the body as it arrives.")
    max_body_size: int = setting(
        _PARSER_LIMITS.body, "--max-body-size", parse=parsers.non_negative_int, metavar="BYTES",
        help="Largest request body; larger gets 413 without being read (0 = unlimited).")

    # -- timers (seconds, 0 = off) ----------------------------------------------------------
    graceful_timeout: float = setting(
        30.0, "--graceful-timeout", parse=parsers.seconds, metavar="SECONDS",
        help="On SIGTERM/SIGINT, how long in-flight requests may take to finish.")
    keep_alive: float = setting(
        5.0, "--keep-alive", parse=parsers.seconds, metavar="SECONDS",
        help="Close a keep-alive connection idle this long (0 = no keep-alive).")
    header_timeout: float = setting(
        10.0, "--header-timeout", parse=parsers.seconds, metavar="SECONDS",
        help="The whole request head must arrive within this time of its first byte "
             "(408 otherwise).")
    body_timeout: float = setting(
        30.0, "--body-timeout", parse=parsers.seconds, metavar="SECONDS",
        help="Longest pause while reading a request body (408 otherwise).")
    body_min_rate: int = setting(
        500, "--body-min-rate", parse=parsers.non_negative_int, metavar="BYTES",
        help="Slowest request body allowed, in bytes per second: the whole body must arrive "
             "within --body-timeout plus one second per this many bytes (408 otherwise; "
             "0 = no rate limit, only the pause limit).")
    send_timeout: float = setting(
        30.0, "--send-timeout", parse=parsers.seconds, metavar="SECONDS",
        help="Drop a client that accepts no response bytes for this long.")
    send_min_rate: int = setting(
        500, "--send-min-rate", parse=parsers.non_negative_int, metavar="BYTES",
        help="Slowest reader allowed while a response waits to be sent, in bytes per second "
             "averaged over each --send-timeout (dropped otherwise; 0 = no rate limit, only "
             "the stall limit).")
    request_timeout: float = setting(
        0.0, "--request-timeout", parse=parsers.seconds, metavar="SECONDS",
        help="Interrupt an app still running this long after its request arrived: 503 if "
             "nothing was sent yet, else the connection is closed (0 = no deadline).")

    # -- workers (under a master process) ---------------------------------------------------
    timeout: float = setting(
        30.0, "-t", "--timeout", parse=parsers.seconds, metavar="SECONDS",
        help="A worker whose gevent hub has not run for this long (a greenlet that never "
             "yields, or an app that takes this long to load) gets every greenlet's stack "
             "logged and is killed and replaced (0 = never).")
    max_requests: int = setting(
        0, "--max-requests", parse=parsers.non_negative_int, metavar="N",
        help="Replace a worker gracefully after it has served about this many requests "
             "(0 = never); guards against slow memory leaks.")
    max_requests_jitter: int = setting(
        0, "--max-requests-jitter", parse=parsers.non_negative_int, metavar="N",
        help="Add a random 0..N to each worker's --max-requests, so workers do not all "
             "restart at once.")

    # -- operations -------------------------------------------------------------------------
    metrics_bind: str = setting(
        None, "--metrics-bind", parse=parsers.admin_address, metavar="ADDRESS",
        help="Serve /metrics (Prometheus), /healthz (alive) and /readyz (ready for traffic; "
             "503 as soon as a graceful stop or a reload begins) on this separate address: "
             "HOST:PORT, [IPv6]:PORT or unix:/path. Off by default; keep it off the public "
             "network.")
    block_warning: int = setting(
        100, "--block-warning", parse=parsers.milliseconds, metavar="MS",
        help="Log a warning, with the request and the stack, when code serving a request "
             "keeps a worker's event loop from running for this many milliseconds or more "
             "(a CPU-bound loop, a blocking call that is not cooperative); 0 = off.")

    # -- logging ----------------------------------------------------------------------------
    log_level: str = setting(
        "info", "--log-level", parse=parsers.log_level, metavar="LEVEL",
        help="Error log level: debug, info, warning, error or critical.")
    error_log: str = setting(
        "-", "--error-log", metavar="FILE",
        help="Where the error log goes ('-' = stderr).")
    access_log: str = setting(
        None, "--access-log", parse=parsers.optional_str, metavar="FILE",
        help="Write an access log to FILE ('-' = stdout). Off by default.")
    access_log_format: str = setting(
        # gunicorn's default (%(l)s is always '-', %(u)s the Basic auth user), then the
        # duration in microseconds.
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s', "--access-log-format",
        parse=parsers.access_log_format, metavar="FORMAT",
        help="Access log line, as in gunicorn: %(h)s etc. with "
             + ", ".join(f"{key} {what}" for key, (what, *_) in ATOMS.items())
             + "; %({Header}i)s a request header, %({Header}o)s a response header, "
             f"%({{VARIABLE}}e)s an environ variable. '{JSON_PRESET}' writes one JSON "
             "object per line instead.")
    log_config: str = setting(
        None, "--log-config", parse=parsers.log_config_file, metavar="FILE",
        help="Configure logging from this file (Python's logging.config.dictConfig, as "
             "TOML or JSON), e.g. to send logs to syslog or as JSON. The greenserve.error "
             "and greenserve.access loggers it configures follow the file; the others "
             "still follow --error-log and --access-log.")
    capture_output: bool = setting(
        False, "--capture-output", parse=parsers.boolean, flag=True,
        help="Send the app's stdout and stderr (print(), stray tracebacks) to the "
             "--error-log file.")

    # -- development and process management --------------------------------------------------
    reload: bool = setting(
        False, "--reload", parse=parsers.boolean, flag=True,
        help="Development: restart the workers when a Python file under the working "
             "directory and --pythonpath (or --reload-dir), or a --reload-extra-file, "
             "changes. A changed file with a syntax error is reported and the workers keep "
             "the old code until it is fixed. Needs the watchfiles package (pip install "
             "watchfiles, or the 'reload' extra); starts a master process.")
    reload_dirs: tuple = setting(
        (), "--reload-dir", "--reload-dirs", multiple=True, metavar="DIR",
        help="With --reload, watch this directory instead of the working directory and "
             "--pythonpath (repeatable).")
    reload_extra_files: tuple = setting(
        (), "--reload-extra-file", "--reload-extra-files", multiple=True, metavar="FILE",
        help="With --reload, also restart when this file changes, e.g. a template or a "
             "settings file (repeatable).")
    preload: bool = setting(
        False, "--preload", parse=parsers.boolean, flag=True,
        help="Load the app once in the master process, then fork the workers (they share "
             "its memory copy-on-write). SIGHUP then restarts the workers without "
             "reloading the code. Starts a master process.")
    pid: str = setting(
        None, "-p", "--pid", parse=parsers.optional_str, metavar="FILE",
        help="Write the pid of the master (or of the only process) to FILE; it is removed "
             "at exit.")
    env: tuple = setting(
        (), "-e", "--env", parse=parsers.env_pair, multiple=True, metavar="KEY=VALUE",
        help="Set an environment variable before the app is loaded (repeatable).")
    name: str = setting(
        None, "-n", "--name", parse=parsers.optional_str, metavar="NAME",
        help="Name in the process titles ('greenserve: master [NAME]', 'greenserve: worker "
             "[NAME]'; default: the app spec). Titles are set when the setproctitle package "
             "is installed.")
    check_config: bool = setting(
        False, "--check-config", parse=parsers.boolean, flag=True, cli_only=True,
        help="Check the settings, the app and the hooks, then exit: 0 if they load, 2 "
             "(with the reason) if not. Nothing is bound.")
    print_config: bool = setting(
        False, "--print-config", parse=parsers.boolean, flag=True, cli_only=True,
        help="Print the settings in effect, as a TOML config file, and exit.")

    # -- server hooks: functions named MODULE:FUNCTION --------------------------------------
    on_starting: str = setting(
        None, "--on-starting", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook on_starting(server): in the master (or the only process) before the "
             "listeners are bound and the app is loaded.")
    when_ready: str = setting(
        None, "--when-ready", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook when_ready(server): in the master once every worker serves (or in the "
             "only process once it accepts).")
    post_fork: str = setting(
        None, "--post-fork", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook post_fork(server, worker): in each new worker, before it loads the app "
             "(with --preload the master's app is already there: reset what it shares, "
             "such as a connection pool). Starts a master.")
    post_worker_init: str = setting(
        None, "--post-worker-init", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook post_worker_init(worker): in each worker once the app is loaded, before "
             "it accepts connections. Starts a master.")
    worker_exit: str = setting(
        None, "--worker-exit", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook worker_exit(server, worker): in each worker as it exits, after its "
             "connections are closed. Starts a master.")
    on_exit: str = setting(
        None, "--on-exit", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook on_exit(server): in the master (or the only process) just before it "
             "exits.")
    pre_request: str = setting(
        None, "--pre-request", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook pre_request(worker, environ): in the worker, before the app is called.")
    post_request: str = setting(
        None, "--post-request", parse=parsers.hook_name, metavar="MODULE:FUNCTION",
        help="Hook post_request(worker, environ, status): in the worker once the response "
             "is over; status is the line the app gave start_response ('200 OK'), or None "
             "if the app raised first.")

    config: str = setting(
        None, "-c", "--config", parse=parsers.optional_str, metavar="FILE", cli_only=True,
        help="Read settings from this TOML file (keys are the option names).")

    def __post_init__(self):
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.metadata.get("multiple") and isinstance(value, (list, str)):
                object.__setattr__(self, spec.name,
                                   tuple([value] if isinstance(value, str) else value))
        if not self.bind:
            raise ConfigError("bind: at least one address is needed")

    def replace(self, **changes):
        """A copy with some settings changed (validated like any other source)."""
        return load_config(cli=changes, base=self, cli_source="Config.replace()")


SETTINGS = {spec.name: spec for spec in dataclasses.fields(Config)}

# Hooks about worker processes (hooks.py runs them): setting one starts a master process
# even with one worker. Here so that the entry point knows before importing anything.
WORKER_PROCESS_HOOKS = ("post_fork", "post_worker_init", "worker_exit")


def option_name(name):
    """The user-facing spelling of a setting: ``max_connections`` -> ``max-connections``."""
    return name.replace("_", "-")


def _suggest(name, candidates=SETTINGS):
    close = difflib.get_close_matches(option_name(name), [option_name(n) for n in candidates],
                                      1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# What a config file may set: not the command-line-only options (--config, --check-config...).
_FILE_SETTINGS = [name for name, spec in SETTINGS.items() if not spec.metadata["cli_only"]]


def parse_value(name, raw, source):
    """Turn one raw value (text, or a typed value from TOML or Python) into the setting's type."""
    spec = SETTINGS[name]
    parse = spec.metadata["parse"]
    try:
        if spec.metadata["multiple"]:
            if isinstance(raw, str):
                # Env vars carry lists as "a,b" or "a b"; elsewhere a string is one item.
                items = raw.replace(",", " ").split() if source == "env" else [raw]
            elif isinstance(raw, (list, tuple)):
                items = list(raw)
            else:
                raise ValueError("must be a string or a list of strings")
            parsed = []
            for item in items:
                raw = item  # the message quotes the bad item, not the whole list
                parsed.append(parse(item))
            return tuple(parsed)
        if spec.metadata["flag"]:
            return parsers.boolean(raw)
        if isinstance(raw, bool) or (raw is None and parse is not parsers.optional_str):
            raise ValueError("is not allowed here")
        return parse(raw)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
        if not reason or "invalid literal" in reason or "could not convert" in reason:
            reason = "is not a valid number"
        if reason.startswith(f"{raw!r} "):  # the reason quotes the whole value: say it once
            reason = reason[len(repr(raw)):]
        elif reason.startswith("'"):  # it quotes the bad entry of a list
            reason = ": " + reason
        else:
            reason = " " + reason
        raise ConfigError(f"{option_name(name)}: {raw!r} from {source}{reason}") from None


def settings_from_env(environ):
    """The ``GREENSERVE_*`` variables of ``environ`` as parsed settings."""
    values = {}
    for name, spec in SETTINGS.items():
        if spec.metadata["cli_only"]:
            continue
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = parse_value(name, environ[key], "env")
    return values


def settings_from_toml(path):
    """Read a TOML config file into parsed settings; unknown keys are an error."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    if str(path).endswith(".py"):
        # A gunicorn.conf.py (simple ones even parse as TOML): its settings go in a TOML
        # file, its hook functions stay in Python.
        raise ConfigError(f"config file {path}: greenserve reads TOML, not Python: put the "
                          f"settings in a .toml file and name hook functions as "
                          f"MODULE:FUNCTION (e.g. post-fork = \"myhooks:post_fork\")")
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    values = {}
    for key, raw in document.items():
        name = key.replace("-", "_")
        if name == "config":
            raise ConfigError(f"config file {path}: 'config' cannot be set in a config file "
                              f"(one file is read: the one -c/--config or "
                              f"{ENV_PREFIX}CONFIG names)")
        if name in SETTINGS and SETTINGS[name].metadata["cli_only"]:
            raise ConfigError(f"config file {path}: '{key}' is a command-line option only "
                              f"(give --{option_name(name)} when running greenserve)")
        if name not in SETTINGS:
            from .gunicorn_options import gunicorn_config_hint
            hint = gunicorn_config_hint(key)
            if hint:
                raise ConfigError(f"config file {path}: unknown option '{key}' (gunicorn's): "
                                  f"{hint}")
            raise ConfigError(f"config file {path}: unknown option "
                              f"'{key}'{_suggest(name, _FILE_SETTINGS)}")
        if (SETTINGS[name].metadata["parse"] in (parsers.octal_mode, parsers.optional_mode)
                and isinstance(raw, int) and not isinstance(raw, bool) and raw >= 8):
            # A bare TOML number is decimal: "umask = 77" would be octal 115 and leave the
            # socket open to other users. Modes are octal, as chmod and umask write them.
            raise ConfigError(f"config file {path}: {key} = {raw}: write a mode as a string "
                              f"of octal digits, e.g. {key} = \"{_octal_example(name)}\" "
                              f"(TOML reads a bare number as decimal: {raw} is octal "
                              f"{raw:o})")
        values[name] = parse_value(name, raw, f"config file {path}")
    return values


def _octal_example(name):
    return "660" if name == "socket_mode" else "007"


def load_config(cli=None, environ=None, base=None, cli_source="Server() options"):
    """Merge the sources: ``cli`` (dict of given options) > ``environ`` > config file > base.

    The config file is named by ``config`` in ``cli`` or ``GREENSERVE_CONFIG`` in ``environ``.
    ``cli_source`` names where ``cli`` came from in error messages: the entry point passes
    "the command line"; the default fits the library's ``Server(app, **options)`` and
    ``serve(app, **options)``.
    """
    cli = dict(cli or {})
    for name in cli:
        if name not in SETTINGS:
            raise ConfigError(f"unknown option '{option_name(name)}'{_suggest(name)}")
    merged = {}
    config_path = cli.get("config") or (environ or {}).get(ENV_PREFIX + "CONFIG")
    if config_path:
        merged.update(settings_from_toml(config_path))
    if environ:
        merged.update(settings_from_env(environ))
    for name, raw in cli.items():
        merged[name] = parse_value(name, raw, cli_source)
    if base is None:
        return Config(**merged)
    return dataclasses.replace(base, **merged)


# -- what the user gave, what they may have misspelled, what is in effect --------------------

def given_settings(cli=None, environ=None):
    """The names of the settings some source sets (the command line, the environment or
    the config file), whatever their value: an option given explicitly, even at its default."""
    cli = dict(cli or {})
    environ = environ or {}
    given = set(cli)
    given.update(name for name, spec in SETTINGS.items()
                 if not spec.metadata["cli_only"] and ENV_PREFIX + name.upper() in environ)
    config_path = cli.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        given.update(settings_from_toml(config_path))
    return given


def unknown_env_warnings(environ):
    """One line per ``GREENSERVE_*`` variable that names no setting (a typo is otherwise
    ignored in silence), with a did-you-mean."""
    known = {ENV_PREFIX + name.upper() for name, spec in SETTINGS.items()
             if not spec.metadata["cli_only"]}
    known.add(ENV_PREFIX + "CONFIG")
    known.update(SPEEDUP_VARIABLES)  # they choose the code (speedups.py), not a setting
    lines = []
    names = sorted(key[len(ENV_PREFIX):] for key in known)
    for key in sorted(environ):
        if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX) and key not in known:
            # Compared without the prefix, which every candidate shares.
            close = difflib.get_close_matches(key[len(ENV_PREFIX):], names, 1)
            hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
            lines.append(f"unknown environment variable {key} ignored{hint}")
    return lines


def format_toml(config, given=()):
    """The settings of ``config`` as a TOML config file that ``-c`` reads back the same.

    Only the settings in ``given`` (set by some source, see given_settings) are written as
    settings; the others are written commented out, with the default in effect: written
    out, a default would count as given when read back (an explicit --timeout starts a
    master; an explicit workers = 1 would hide WEB_CONCURRENCY).
    """
    lines = []
    for name, spec in SETTINGS.items():
        if spec.metadata["cli_only"]:
            continue
        value = getattr(config, name)
        key = option_name(name)
        if value is None:
            lines.append(f"# {key} is not set")
            continue
        if spec.metadata["parse"] in (parsers.octal_mode, parsers.optional_mode):
            line = f'{key} = "{value:03o}"'  # octal, as chmod and umask write it
        else:
            line = f"{key} = {_toml_value(value)}"
        lines.append(line if name in given else f"# {line}  (default)")
    return "\n".join(lines) + "\n"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    # TOML basic strings: escape the backslash, the quote and every control character.
    escaped = []
    for char in str(value):
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7f:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
