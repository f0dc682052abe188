"""The error log (logger ``greenserve.error``) and the access log (``greenserve.access``).

Nothing here configures logging on import: the entry point calls ``setup_logging`` (and,
on SIGUSR1, ``reopen_log_files``). A library user who never calls them keeps full control
through the standard ``logging`` tree. Line formats live in ``accessformat``.
"""

import json
import logging
import logging.config
import logging.handlers
import os
import sys

from .accessformat import compile_format, rejected_environ
from .errors import ConfigError

error_log = logging.getLogger("greenserve.error")
access_logger = logging.getLogger("greenserve.access")

ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

# Marks the handlers setup_logging installed, so a second call replaces exactly those.
_OURS = "_greenserve_handler"

# What setup_logging did that later calls need to know (set only by entry points).
_state = {
    "routed": frozenset(),  # greenserve loggers the --log-config file configures
    "captured": None,       # the --error-log path fds 1 and 2 point to (--capture-output)
    "stdout": None,         # the real stdout, kept for --access-log - while captured
}


def setup_logging(config):
    """Point both loggers at the destinations ``config`` names (idempotent).

    The error log goes to ``config.error_log`` ('-' = stderr) at ``config.log_level``; the
    access log to ``config.access_log`` ('-' = stdout), or nowhere when it is None. Neither
    propagates to the root logger, so an application's own logging setup does not print
    greenserve's lines twice.

    ``config.log_config`` (a dictConfig in TOML or JSON) is applied first; a greenserve
    logger it configures (by its name or as ``greenserve``) is left as the file says, the
    options above then only route the others. ``config.capture_output`` points the
    process's stdout and stderr at the error-log file. Any problem is a ``ConfigError``.
    """
    _check_capture_output(config)
    document = load_log_config(config.log_config) if config.log_config else None
    routed = _routed_by(document)
    if document is not None:
        _apply_log_config(document, config.log_config)
    # Open our files before installing anything: a bad path must not leave greenserve's
    # loggers half-configured.
    error_handler = access_handler = None
    try:
        if error_log.name not in routed:
            error_handler = _handler(config.error_log, sys.stderr, "error-log")
        if access_logger.name not in routed and config.access_log is not None:
            access_handler = _handler(config.access_log, sys.stdout, "access-log")
        if config.capture_output:
            _capture_output(config.error_log)
    except BaseException:
        for handler in (error_handler, access_handler):
            if handler is not None:
                handler.close()
        raise
    if access_handler is not None and _state["stdout"] is not None and \
            config.access_log == "-":
        access_handler.setStream(_state["stdout"])  # not into the captured error log
    _state["routed"] = frozenset(routed)
    level = getattr(logging, config.log_level.upper())
    for logger, handler, fmt, lvl in ((error_log, error_handler, ERROR_FORMAT, level),
                                      (access_logger, access_handler, None, logging.INFO)):
        if logger.name in routed:
            _release(logger, named=logger.name in (document.get("loggers") or {}))
            continue
        if handler is not None:
            handler.setFormatter(logging.Formatter(fmt or "%(message)s", DATE_FORMAT))
        _install(logger, handler, lvl)


def _check_capture_output(config):
    if config.capture_output and config.error_log == "-":
        raise ConfigError("capture-output: needs --error-log FILE (without it the app's "
                          "output already goes to stdout and stderr)")


def check_logging(config):
    """ConfigError for what ``setup_logging`` would refuse, found without installing
    anything or creating a file (for --check-config): --capture-output without a file, a
    log file that cannot be opened for writing."""
    _check_capture_output(config)
    document = load_log_config(config.log_config) if config.log_config else None
    routed = _routed_by(document)
    for logger, destination, option in ((error_log, config.error_log, "error-log"),
                                        (access_logger, config.access_log, "access-log")):
        if logger.name in routed or destination in (None, "-"):
            continue
        problem = _unwritable(destination)
        if problem:
            raise ConfigError(f"{option}: cannot open {destination}: {problem}")


def _unwritable(path):
    """Why ``path`` could not be opened for appending (None if it could), without creating it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        return None
    except FileNotFoundError:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return "no such file or directory"
        if not os.access(folder, os.W_OK | os.X_OK):
            return "permission denied"
        return None
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()


def _handler(destination, stream, option):
    if destination == "-":
        handler = logging.StreamHandler(stream)
    else:
        try:
            handler = _WatchedFile(destination, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{option}: cannot open {destination}: "
                              f"{(exc.strerror or str(exc)).lower()}") from None
    setattr(handler, _OURS, True)
    return handler


class _WatchedFile(logging.handlers.WatchedFileHandler):
    """After logrotate moves the file, the next line goes to a fresh one at the same path.

    Unlike the standard handler, a fresh file that cannot be opened (its folder is gone,
    the disk is full) never raises into the code that logs: lines go on to the old file.
    """

    def reopenIfNeeded(self):
        try:
            now = os.stat(self.baseFilename)
            if (now.st_dev, now.st_ino) == (self.dev, self.ino):
                return
        except OSError:
            pass
        _reopen(self)


def _remove_ours(logger):
    for old in [h for h in logger.handlers if getattr(h, _OURS, False)]:
        logger.removeHandler(old)
        old.close()


def _install(logger, handler, level):
    _remove_ours(logger)
    if handler is not None:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    logger.disabled = False  # a log config's disable_existing_loggers must not silence it


def _release(logger, named):
    """Hand ``logger`` over to the log config file."""
    _remove_ours(logger)
    if not named:  # configured through its parent 'greenserve': let lines reach it
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        logger.disabled = False


# -- --log-config ---------------------------------------------------------------------------

def load_log_config(path):
    """Read a ``logging.config.dictConfig`` dictionary from a .toml or .json file.

    ``version`` defaults to 1 and ``disable_existing_loggers`` to false (so the loggers of
    greenserve and of the app keep working unless the file names them). ConfigError on
    any problem, in one line.
    """
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".toml", ".json"):
        raise ConfigError(f"log-config: {path} must be a .toml or .json file")
    try:
        with open(path, "rb") as stream:
            if kind == ".json":
                document = json.load(stream)
            else:
                document = _toml().load(stream)
    except OSError as exc:
        raise ConfigError(f"log-config: cannot read {path}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise ConfigError(f"log-config: {path} is not valid {kind[1:].upper()}: "
                          f"{_one_line(exc)}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"log-config: {path} must hold a table of dictConfig settings")
    document.setdefault("version", 1)
    document.setdefault("disable_existing_loggers", False)
    return document


def _toml():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def _routed_by(document):
    """The greenserve logger names the log config configures, itself or through a parent."""
    if document is None:
        return set()
    names = document.get("loggers") or {}
    if not isinstance(names, dict):
        return set()
    return {logger.name for logger in (error_log, access_logger)
            if any(logger.name == name or logger.name.startswith(name + ".")
                   for name in names if name)}


def _apply_log_config(document, path):
    try:
        logging.config.dictConfig(document)
    except Exception as exc:  # dictConfig raises many kinds; none may become a traceback
        raise ConfigError(f"log-config: {path}: {_one_line(exc)}") from None


def _one_line(exc):
    text = str(exc)
    if exc.__cause__ is not None and str(exc.__cause__) not in text:
        text += f": {exc.__cause__}"  # dictConfig wraps the real reason
    return " ".join(text.split())


# -- log files: --capture-output and reopening (SIGUSR1) ------------------------------------

def _capture_output(path):
    """Point file descriptors 1 and 2 (print(), stray tracebacks, C libraries) at ``path``."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if _state["stdout"] is None:
        # Keep the real stdout: an access log on '-' must not end up in the error log.
        _state["stdout"] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8",
                                     errors="backslashreplace")
    _redirect_output(path)
    _state["captured"] = path
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(line_buffering=True)  # a print() reaches the file at once


def _redirect_output(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(f"capture-output: cannot open {path}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def reopen_log_files():
    """Reopen every log file (for SIGUSR1 after logrotate moved them); problems as lines.

    Every ``logging.FileHandler`` of every logger (ours and a --log-config file's) gets
    a fresh file at its path, and a captured stdout/stderr is pointed at it again. A file
    that cannot be opened keeps its old one, and its problem is returned for the caller
    to log; nothing raises.
    """
    problems = []
    for handler in _file_handlers():
        problem = _reopen(handler)
        if problem:
            problems.append(problem)
    if _state["captured"] is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        try:
            _redirect_output(_state["captured"])
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _file_handlers():
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [logger for logger in list(manager.loggerDict.values())
                                       if isinstance(logger, logging.Logger)]
    seen = set()
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and id(handler) not in seen:
                seen.add(id(handler))
                yield handler


def _reopen(handler):
    handler.acquire()
    try:
        # Reopening must not truncate what was written since start-up.
        if handler.mode.startswith("w"):
            handler.mode = "a" + handler.mode[1:]
        try:
            fresh = handler._open()  # the same path, mode and encoding as at start-up
        except OSError as exc:
            return (f"cannot reopen {handler.baseFilename}: "
                    f"{(exc.strerror or str(exc)).lower()}; still writing to the old file")
        old, handler.stream = handler.stream, fresh
        if old is not None:
            try:
                old.close()
            except OSError:
                pass
        statstream = getattr(handler, "_statstream", None)  # WatchedFileHandler's inode
        if statstream is not None:
            statstream()
        return None
    finally:
        handler.release()


# -- wsgi.errors ----------------------------------------------------------------------------

class ErrorStream:
    """``wsgi.errors``: what the app writes reaches the error log (``greenserve.error``).

    Text is collected until a newline; each write that completes lines becomes one record
    (a traceback written at once stays one entry). ``flush`` sends an unfinished line.
    One instance may serve every request of a server: a line is only mixed with another
    request's text if the app pauses for I/O in the middle of writing it.
    """

    __slots__ = ("_log", "_partial")

    # Longest unfinished line kept back; beyond it the text is logged as it is.
    MAX_PARTIAL = 65536

    def __init__(self, logger=error_log, level=logging.ERROR):
        self._log = lambda text: logger.log(level, "%s", text)
        self._partial = ""

    def write(self, text):
        if not isinstance(text, str):
            # PEP 3333: wsgi.errors is a text-mode stream.
            raise TypeError(f"wsgi.errors.write() takes str, not {type(text).__name__}")
        if "\n" not in text:
            self._partial += text
            if len(self._partial) > self.MAX_PARTIAL:
                self.flush()
            return len(text)
        lines, _, self._partial = (self._partial + text).rpartition("\n")
        if lines.strip():
            self._log(lines)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        partial, self._partial = self._partial, ""
        if partial.strip():
            self._log(partial)


# -- access log ----------------------------------------------------------------------------

class AccessLog:
    """Formats one access-log line per response and sends it to ``greenserve.access``.

    ``format`` is gunicorn's %-style format (``%(h)s %(r)s %({X-Request-Id}i)s``...) or
    ``json``; see ``accessformat``. Only the atoms the format uses are computed.
    """

    def __init__(self, format, logger=access_logger):
        self.format = format
        self._render = compile_format(format)
        self._info = logger.info

    def __call__(self, environ, status_code, bytes_sent, duration_seconds,
                 response_headers=()):
        """Log one response; ``response_headers`` (name, value) feed %({name}o)s."""
        self._info(self._render(environ, status_code, bytes_sent, duration_seconds,
                                response_headers))

    def rejected(self, remote_addr, status_code, bytes_sent, request_line=None,
                 duration_seconds=0.0, remote_port=None):
        """Log a request the parser refused (400, 408, 413, 414, 431, 505...).

        ``request_line`` is what arrived of the first line (bytes or str; anything after a
        newline is ignored, and it is cut at ``accessformat.REJECTED_LINE_LIMIT``), or None.
        Atoms nobody knows (headers, user agent) are '-' (null in JSON).
        """
        self(rejected_environ(remote_addr, remote_port, request_line), status_code,
             bytes_sent, duration_seconds)


def make_access_log(config):
    """An ``AccessLog`` for ``config``, or None when the access log is off.

    It is on with --access-log, or when the --log-config file (applied by
    ``setup_logging``) configures the logger ``greenserve.access``.
    """
    if config.access_log is None and access_logger.name not in _state["routed"]:
        return None
    return AccessLog(config.access_log_format)

