"""The --pid file: written atomically at start-up, refused while it names a running
greenserve, removed at exit only if it still holds our pid."""

import os

from .errors import ConfigError


def write_pid_file(path):
    """Write our pid to ``path`` (atomically); refuse when it names a running greenserve.
    Returns the path, for remove_pid_file; None when there is no pid file."""
    if not path:
        return None
    path = os.path.abspath(path)
    try:
        with open(path) as stream:
            previous = int(stream.read().strip() or 0)
    except (OSError, ValueError):
        previous = 0  # none yet, or not ours to read: written over below
    if previous and previous != os.getpid() and is_greenserve(previous):
        raise ConfigError(f"pid file {path} names process {previous}, which is running: is "
                          f"greenserve already running? (if not, remove the file)")
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w") as stream:
            stream.write(f"{os.getpid()}\n")
        os.replace(temporary, path)
    except OSError as exc:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise ConfigError(f"pid file {path}: {(exc.strerror or str(exc)).lower()}") from None
    return path


def remove_pid_file(path):
    """Remove the pid file if it still holds our pid (a newer greenserve may own it now)."""
    if not path:
        return
    try:
        with open(path) as stream:
            if int(stream.read().strip() or 0) == os.getpid():
                os.unlink(path)
    except (OSError, ValueError):
        pass


def is_greenserve(pid):
    """Is ``pid`` a running process, and (where /proc tells) a greenserve one? A stale pid
    file whose number now belongs to another program must not block a start."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            return b"greenserve" in stream.read()
    except OSError:
        return True  # no /proc: assume the worst
