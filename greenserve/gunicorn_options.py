"""gunicorn's command-line options greenserve does not take: the one-line hint for each (its
greenserve spelling, or why greenserve lacks it), shown when a gunicorn command line is
reused as it is."""

# gunicorn options greenserve spells differently: gunicorn's -> greenserve's. (Those spelled
# the same need nothing here: argparse knows them.)
GUNICORN_SPELLINGS = {
    "--access-logfile": "--access-log",
    "--access-logformat": "--access-log-format",
    "--error-logfile": "--error-log",
    "--log-file": "--error-log",
    "--log-config-dict": "--log-config",
    "--log-config-json": "--log-config",
    "--limit-request-field_size": "--limit-request-field-size",
    "--proxy-allow-from": "--proxy-allow-ips",
    "--ssl-version": "--tls-min-version",
    "-v": "--version",
    "-u": "--user",
    "-g": "--group",
    "-m": "--umask",
}

_SYSLOG = "send logs to syslog with --log-config (a logging.handlers.SysLogHandler)"
_STRICT = ("greenserve's HTTP parser stays strict (RFC 9112): such requests are refused "
           "with 400, there is nothing to relax")
_STATSD = ("greenserve has no StatsD client; it serves Prometheus metrics at /metrics on "
           "--metrics-bind ADDRESS")
_TLS = ("greenserve's TLS has no such setting; its TLS options are --certfile, --keyfile, "
        "--ca-certs, --cert-reqs, --ciphers and --tls-min-version")

_PASTE = "PasteDeploy .ini files are not read: name the app as MODULE:APP or MODULE:FACTORY(...)"
_HTTP2 = ("greenserve speaks HTTP/1.1; the proxy in front of it speaks HTTP/2 (or 3) to "
          "clients")
_ASGI = "greenserve serves WSGI applications, not ASGI ones"
_DIRTY = ("greenserve has no side pool of workers for slow jobs: use a task queue, or "
          "greenlets in the app")
_CONTROL = ("greenserve is controlled with signals: HUP reloads, TTIN/TTOU add/remove a "
            "worker, TERM stops gracefully, QUIT at once")
_UWSGI = "greenserve speaks HTTP only: point nginx's proxy_pass (not uwsgi_pass) at it"

# gunicorn options greenserve lacks on purpose, with the reason (one line each).
GUNICORN_ABSENT = {
    "-k": "greenserve has one kind of worker, gevent greenlets: drop -k/--worker-class "
          "(and -k gevent --worker-connections N is --max-connections N)",
    "--worker-class": "greenserve has one kind of worker, gevent greenlets: drop "
                      "-k/--worker-class (and -k gevent --worker-connections N is "
                      "--max-connections N)",
    "--threads": "greenserve serves each request in a greenlet, not a thread: concurrency "
                 "per worker is --max-connections",
    "-D": "greenserve stays in the foreground: run it under systemd, supervisord or a "
          "container instead of -D/--daemon",
    "--daemon": "greenserve stays in the foreground: run it under systemd, supervisord or a "
                "container instead of -D/--daemon",
    "--initgroups": "with --user greenserve always takes on the user's supplementary groups",
    "--worker-tmp-dir": "greenserve's workers report to the master over a pipe; there is no "
                        "heartbeat file to place",
    "--spew": "greenserve does not trace every line; use a debugger or sys.settrace in the app",
    "--paste": _PASTE,
    "--paste-global": _PASTE, "--paster": _PASTE,
    "--reload-engine": "--reload always uses watchfiles (pip install watchfiles)",
    "--no-sendfile": "greenserve sends wsgi.file_wrapper files with sendfile when it can and "
                     "reads them otherwise; there is nothing to turn off",
    "-R": "workers keep the master's stdout and stderr already; --capture-output sends them "
          "to the error log",
    "--enable-stdio-inheritance": "workers keep the master's stdout and stderr already; "
                                  "--capture-output sends them to the error log",
    "--statsd-host": _STATSD, "--statsd-prefix": _STATSD, "--dogstatsd-tags": _STATSD,
    "--enable-backlog-metric": _STATSD,
    "--log-syslog": _SYSLOG, "--log-syslog-to": _SYSLOG, "--log-syslog-prefix": _SYSLOG,
    "--log-syslog-facility": _SYSLOG, "--disable-redirect-access-to-syslog": _SYSLOG,
    "--logger-class": "route and format logs with --log-config (Python's logging.config "
                      "dictConfig, as TOML or JSON)",
    "--strip-header-spaces": _STRICT,
    "--permit-unconventional-http-method": _STRICT,
    "--permit-unconventional-http-version": _STRICT,
    "--casefold-http-method": _STRICT,
    "--permit-obsolete-folding": _STRICT,
    "--header-map": "greenserve always drops request headers with an underscore in the name "
                    "(gunicorn's 'drop'): they could pass for a proxy's headers",
    "--forwarder-headers": "greenserve applies X-Forwarded-* and Forwarded headers from the "
                           "peers in --forwarded-allow-ips; there is no list to set",
    "--protocol": _UWSGI, "--uwsgi-allow-from": _UWSGI,
    "--http-protocols": _HTTP2, "--http2-cleartext": _HTTP2,
    "--http2-max-concurrent-streams": _HTTP2, "--http2-initial-window-size": _HTTP2,
    "--http2-max-frame-size": _HTTP2, "--http2-max-header-list-size": _HTTP2,
    "--http-parser": "greenserve has one HTTP parser, its own strict one",
    "--asgi-loop": _ASGI, "--asgi-lifespan": _ASGI, "--asgi-disconnect-grace-period": _ASGI,
    "--websocket-max-message-size": "WebSocket messages are the app's WebSocket library's "
                                    "business (simple-websocket, wsproto): limit them there",
    "--dirty-app": _DIRTY, "--dirty-workers": _DIRTY, "--dirty-timeout": _DIRTY,
    "--dirty-threads": _DIRTY, "--dirty-graceful-timeout": _DIRTY,
    "--control-socket": _CONTROL, "--control-socket-mode": _CONTROL,
    "--no-control-socket": _CONTROL,
    # gunicorn's other TLS options (--certfile ... --ciphers) are greenserve's too.
    "--do-handshake-on-connect": _TLS, "--suppress-ragged-eofs": _TLS,
}


def gunicorn_hints(argv, known):
    """One line per gunicorn option in ``argv`` that greenserve does not take (``known``:
    the parser's option strings): its greenserve spelling, or why greenserve lacks it."""
    hints = []
    for token in argv:
        if token == "--":
            break
        if token.startswith("--"):
            flag = token.partition("=")[0]
        elif token.startswith("-") and len(token) > 1 and not token[1].isdigit():
            flag = token[:2]
        else:
            continue
        if flag in known:
            continue
        spelling = GUNICORN_SPELLINGS.get(flag)
        if spelling is not None and spelling in known:
            reason = f"greenserve spells it {spelling}"
        elif flag in GUNICORN_ABSENT:
            reason = GUNICORN_ABSENT[flag]
        else:
            continue
        hints.append(f"unknown option {flag} (gunicorn's): {reason}")
    return hints


# gunicorn's config-file (gunicorn.conf.py) names, where they differ from its flags: a TOML
# file written from a gunicorn.conf.py keeps them.
_CONFIG_SPELLINGS = {
    "accesslog": "access-log", "errorlog": "error-log", "loglevel": "log-level",
    "keepalive": "keep-alive", "worker_connections": "max-connections",
    "preload_app": "preload", "proc_name": "name", "raw_env": "env", "pidfile": "pid",
    "logconfig": "log-config", "logconfig_dict": "log-config", "logconfig_json": "log-config",
    "ssl_version": "tls-min-version",
}
_NO_HOOK = "greenserve has no {name} hook: "
_CONFIG_ABSENT = {
    "wsgi_app": "name the app on the command line: greenserve MODULE:APP -c FILE",
    "worker_class": GUNICORN_ABSENT["--worker-class"],
    "daemon": GUNICORN_ABSENT["--daemon"],
    "sendfile": GUNICORN_ABSENT["--no-sendfile"],
    "syslog": _SYSLOG, "syslog_addr": _SYSLOG, "syslog_prefix": _SYSLOG,
    "syslog_facility": _SYSLOG,
    "secure_scheme_headers": "from the peers in --forwarded-allow-ips, X-Forwarded-Proto, "
                             "X-Forwarded-Ssl, X-Forwarded-Scheme and Forwarded: proto= set "
                             "the scheme; there is no list to set",
    "raw_paste_global_conf": _PASTE, "uwsgi_allow_ips": _UWSGI,
    "dirty_apps": _DIRTY, "control_socket_disable": _CONTROL,
    "default_proc_name": "the app spec is the default --name",
    "tmp_upload_dir": "request bodies are not spooled to disk; the app reads wsgi.input as "
                      "it arrives",
    "on_reload": _NO_HOOK + "SIGHUP replaces the workers; post-fork and post-worker-init run "
                            "in each new one",
    "pre_fork": _NO_HOOK + "the master runs no code of yours around forks; use post-fork",
    "worker_int": _NO_HOOK + "workers ignore SIGINT (the master decides); use worker-exit",
    "worker_abort": _NO_HOOK + "on a blocked hub greenserve logs every greenlet's stack itself",
    "pre_exec": _NO_HOOK + "greenserve never re-executes itself (no SIGUSR2 binary upgrade)",
    "child_exit": _NO_HOOK + "the master logs each worker's exit; worker-exit runs in the "
                             "worker",
    "nworkers_changed": _NO_HOOK + "SIGTTIN and SIGTTOU are logged",
    "ssl_context": _NO_HOOK + "the TLS options are --certfile, --keyfile, --ca-certs, "
                              "--cert-reqs, --ciphers and --tls-min-version",
    "on_dirty_starting": _DIRTY, "dirty_post_fork": _DIRTY, "dirty_worker_init": _DIRTY,
    "dirty_worker_exit": _DIRTY,
}


def gunicorn_config_hint(key):
    """The reason for an unknown config-file key that is one of gunicorn's settings (its
    greenserve spelling, or why greenserve lacks it), or None."""
    name = key.replace("-", "_")
    if name in _CONFIG_SPELLINGS:
        spelling = _CONFIG_SPELLINGS[name]
        return f"greenserve spells it '{spelling}'"
    if name in _CONFIG_ABSENT:
        return _CONFIG_ABSENT[name].format(name=name)
    flag = "--" + name.replace("_", "-")
    if flag in GUNICORN_SPELLINGS:
        return f"greenserve spells it '{GUNICORN_SPELLINGS[flag][2:]}'"
    return GUNICORN_ABSENT.get(flag)
