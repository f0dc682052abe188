"""The error log (logger ``greenserve.error``) and the access log (``greenserve.access``).

Nothing here configures logging on import: the entry point calls ``setup_logging``. A
library user who never calls it keeps full control through the standard ``logging`` tree.
"""

import logging
import logging.handlers
import os
import re
import sys
import time

from .errors import ConfigError

error_log = logging.getLogger("greenserve.error")
access_logger = logging.getLogger("greenserve.access")

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

# Marks the handlers setup_logging installed, so a second call replaces exactly those.
_OURS = "_greenserve_handler"


def setup_logging(config):
    """Point both loggers at the destinations ``config`` names (idempotent).

    The error log goes to ``config.error_log`` ('-' = stderr) at ``config.log_level``; the
    access log to ``config.access_log`` ('-' = stdout), or nowhere when it is None. Neither
    propagates to the root logger, so an application's own logging setup does not print
    greenserve's lines twice. A file that cannot be opened is a ``ConfigError``.
    """
    # Open everything first: a bad path must not leave logging half-configured.
    error_handler = _handler(config.error_log, sys.stderr, "error-log")
    error_handler.setFormatter(logging.Formatter(ERROR_FORMAT, DATE_FORMAT))
    access_handler = None
    if config.access_log is not None:
        access_handler = _handler(config.access_log, sys.stdout, "access-log")
        access_handler.setFormatter(logging.Formatter("%(message)s"))
    _install(error_log, error_handler, getattr(logging, config.log_level.upper()))
    _install(access_logger, access_handler, logging.INFO)


def _handler(destination, stream, option):
    if destination == "-":
        handler = logging.StreamHandler(stream)
    else:
        try:
            # Watched: after logrotate moves the file, the next line goes to a fresh one.
            handler = logging.handlers.WatchedFileHandler(destination, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{option}: cannot open {destination}: "
                              f"{(exc.strerror or str(exc)).lower()}") from None
    setattr(handler, _OURS, True)
    return handler


def _install(logger, handler, level):
    for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(old)
        old.close()
    if handler is not None:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


# -- access log ------------------------------------------------------------------------------

# Characters that would let a client forge or break a log line are written as escapes.
_ESCAPES = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7f]}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"


def _clean(text):
    return text.translate(_ESCAPES) if text else "-"


def _request_line(environ):
    uri = environ.get("RAW_URI")
    if uri is None:  # not set by every server; rebuild it for environs from elsewhere
        query = environ.get("QUERY_STRING")
        uri = environ.get("PATH_INFO", "") + ("?" + query if query else "")
    return _clean(f"{environ.get('REQUEST_METHOD', '-')} {uri} "
                  f"{environ.get('SERVER_PROTOCOL', '-')}")


# key -> (what it is, how to compute it from (environ, status, sent, seconds)).
FIELDS = {
    "h": ("remote address", lambda e, s, b, d: e.get("REMOTE_ADDR") or "-"),
    "t": ("time of the request", None),  # filled by AccessLog, which caches it per second
    "r": ("request line", lambda e, s, b, d: _request_line(e)),
    "m": ("method", lambda e, s, b, d: e.get("REQUEST_METHOD") or "-"),
    "U": ("path", lambda e, s, b, d: _clean(e.get("PATH_INFO"))),
    "q": ("query string", lambda e, s, b, d: _clean(e.get("QUERY_STRING"))),
    "H": ("protocol", lambda e, s, b, d: e.get("SERVER_PROTOCOL") or "-"),
    "s": ("status code", lambda e, s, b, d: s),
    "b": ("response body bytes sent", lambda e, s, b, d: b),
    "f": ("referer", lambda e, s, b, d: _clean(e.get("HTTP_REFERER"))),
    "a": ("user agent", lambda e, s, b, d: _clean(e.get("HTTP_USER_AGENT"))),
    "D": ("duration in microseconds", lambda e, s, b, d: int(d * 1_000_000)),
    "L": ("duration in seconds", lambda e, s, b, d: f"{d:.6f}"),
    "p": ("process id", lambda e, s, b, d: os.getpid()),
}

_KEY = re.compile(r"%\((\w*)\)")


class AccessLog:
    """Formats one access-log line per response and sends it to ``greenserve.access``.

    ``format`` uses %-style keys (``%(h)s %(r)s``...), see ``FIELDS``. Only the keys the
    format uses are computed for each request.
    """

    def __init__(self, format, logger=access_logger):
        keys = list(dict.fromkeys(_KEY.findall(format)))
        unknown = [key for key in keys if key not in FIELDS]
        if unknown:
            raise ConfigError(f"access-log-format: unknown key '{unknown[0]}' "
                              f"(known: {' '.join(FIELDS)})")
        self.format = format
        self._getters = tuple((key, FIELDS[key][1]) for key in keys if key != "t")
        self._wants_time = "t" in keys
        self._second = None
        self._stamp = ""
        self._info = logger.info
        try:  # catch a broken format (e.g. "%(h)" without a type) now, not on each request
            format % {key: "-" if key != "s" else 200 for key in keys}
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"access-log-format: {format!r} is not a valid format: "
                              f"{exc}") from None

    def __call__(self, environ, status_code, bytes_sent, duration_seconds):
        values = {key: get(environ, status_code, bytes_sent, duration_seconds)
                  for key, get in self._getters}
        if self._wants_time:
            values["t"] = self._now()
        self._info(self.format % values)

    def _now(self):
        # strftime costs microseconds; once per second is enough for a log stamp.
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(second))
        return self._stamp


def make_access_log(config):
    """An ``AccessLog`` for ``config``, or None when the access log is off."""
    if config.access_log is None:
        return None
    return AccessLog(config.access_log_format)


def reopen_log_files():
    """Reopen the log files greenserve writes (SIGUSR1, e.g. after logrotate moved them)."""
    for logger in (error_log, access_logger):
        for handler in logger.handlers:
            if getattr(handler, _OURS, False) and isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream is not None:
                        handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()
