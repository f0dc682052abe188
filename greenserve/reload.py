"""``--reload``: notice that the app's files changed, for the master to replace its workers.

A thread of the master runs ``watchfiles`` (an optional dependency) and only collects the
changed paths and wakes the master's loop up; the master checks the changed Python files
for syntax errors and reloads only when they compile, so a half-typed edit never takes a
working server down. Nothing here forks, logs from the thread, or touches the workers.
"""

import os
import threading
from collections import deque

from .errors import ConfigError

# How long the watcher waits for changes before checking whether it should stop (ms).
POLL_MS = 200
# Changes are gathered until none came for STEP_MS, and for at most DEBOUNCE_MS: one save
# of several files (or an editor's write-then-rename) is then one reload.
STEP_MS = 50
DEBOUNCE_MS = 400
READY_WAIT = 10.0  # seconds the master waits for the watcher to be in place


def require_watchfiles():
    """The ``watchfiles`` module; ``ConfigError`` with how to install it when missing."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigError("--reload needs the watchfiles package: pip install watchfiles "
                          "(the 'reload' extra)") from None
    return watchfiles


def watched_roots(config, cwd):
    """The directories to watch: --reload-dir, else the working directory and --pythonpath;
    plus the directory of each --reload-extra-file. Nested ones are left to their parent."""
    dirs = config.reload_dirs or (cwd, *config.pythonpath)
    roots = [os.path.abspath(path) for path in dirs]
    roots += [os.path.dirname(os.path.abspath(path)) for path in config.reload_extra_files]
    for path in roots:
        if not os.path.isdir(path):
            raise ConfigError(f"--reload: cannot watch {path}: no such directory")
    kept = []
    for path in sorted(set(roots), key=len):
        if not any(path == root or path.startswith(root.rstrip(os.sep) + os.sep)
                   for root in kept):
            kept.append(path)
    return kept


class Reloader:
    """Watches ``roots`` for Python files (and ``extra_files``) in a daemon thread.

    ``start(wake)`` returns once the watch is in place; ``wake()`` is then called (from the
    thread) whenever changes arrive, and ``take()`` (from the master's loop) returns them.
    """

    def __init__(self, roots, extra_files=()):
        self.roots = list(roots)
        self.extra_files = {os.path.abspath(path) for path in extra_files}
        self._changes = deque()        # appended by the thread, emptied by take()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = None
        self.error = None              # why the watcher thread ended, if it failed

    def start(self, wake):
        watchfiles = require_watchfiles()
        python_files = watchfiles.PythonFilter()

        def wanted(change, path):
            return path in self.extra_files or python_files(change, path)

        self._thread = threading.Thread(target=self._watch, args=(watchfiles, wanted, wake),
                                        name="greenserve-reload", daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_WAIT) and self.error is None:
            self.error = "the file watcher did not start"
        if self.error is not None:
            raise ConfigError(f"--reload: {self.error}")

    def _watch(self, watchfiles, wanted, wake):
        try:
            # yield_on_timeout: the first (empty) yield proves the watch is in place.
            for changes in watchfiles.watch(
                    *self.roots, watch_filter=wanted, debounce=DEBOUNCE_MS, step=STEP_MS,
                    stop_event=self._stop, rust_timeout=POLL_MS, yield_on_timeout=True,
                    raise_interrupt=False):
                self._ready.set()
                if changes:
                    self._changes.extend(path for _, path in changes)
                    wake()
        except Exception as exc:  # reported by the master; a thread must not print
            self.error = f"the file watcher stopped: {type(exc).__name__}: {exc}"
            wake()
        finally:
            self._ready.set()

    def take(self):
        """The paths changed since the last call, sorted, without repeats."""
        paths = set()
        while self._changes:
            paths.add(self._changes.popleft())
        return sorted(paths)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(READY_WAIT)


def syntax_errors(paths):
    """One line per changed Python file that does not compile, e.g.
    ``app.py:3: SyntaxError: invalid syntax``; deleted and other files are skipped."""
    problems = []
    for path in paths:
        if not path.endswith(".py"):
            continue
        try:
            with open(path, "rb") as stream:
                source = stream.read()
        except OSError:
            continue  # deleted (or renamed away) since: importing will tell
        try:
            compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"{exc.filename or path}:{exc.lineno}" if exc.lineno else path
            problems.append(f"{where}: {type(exc).__name__}: {exc.msg}")
        except ValueError as exc:  # e.g. a NUL byte in the source
            problems.append(f"{path}: {exc}")
    return problems
