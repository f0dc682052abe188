"""Run greenserve (and other programs) as real child processes, for tests.

One harness for every test that starts a process:

- the child gets a clean environment (no ``GREENSERVE_*`` settings, no systemd variables), the
  repository and ``tests/fixtureapps`` on ``PYTHONPATH``, and default handlers for SIGINT and
  SIGQUIT even when the test run itself ignores them (``trap '' INT; pytest &``);
- it runs in its own session, so ``kill()`` reaches the workers a master forked;
- threads read stdout and stderr as they come, so the child never blocks on a full pipe and a
  test can wait for a line (``wait_for``) instead of sleeping;
- a server binds port 0 and the test reads the real address back from its "Listening at" line.

Every wait is bounded; when one runs out the test fails with the child's output.
"""

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURE_APPS = Path(__file__).resolve().parent / "fixtureapps"
WAIT = 20  # seconds: the default bound on every wait (generous for a loaded CI machine)

# greenserve's start-up line, one per listening socket.
LISTENING = re.compile(r"Listening at https?://(?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+) "
                       r"\(pid (?P<pid>\d+)\)")


def environment(pythonpath=(), **extra):
    """A child's environment: the test's own, minus settings that would change what it tests.

    ``pythonpath`` entries come first, then the repository and the fixture apps.
    """
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("GREENSERVE_", "LISTEN_"))
           and name not in ("WEB_CONCURRENCY", "DJANGO_SETTINGS_MODULE")}
    paths = [*map(str, pythonpath), str(REPO), str(FIXTURE_APPS), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def greenserve_command(*args):
    return [sys.executable, "-m", "greenserve", *map(str, args)]


def _default_signal_handlers():
    # Runs in the child between fork and exec. A shell starts background jobs with SIGINT and
    # SIGQUIT ignored, and an ignored signal stays ignored across exec; a user at a terminal
    # never starts greenserve that way. Only C-level calls here: safe although the test
    # process has threads.
    for signum in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)


def run(argv, cwd=REPO, env=None, timeout=WAIT):
    """Run a command to completion; its CompletedProcess (text output)."""
    return subprocess.run(list(map(str, argv)), cwd=cwd, env=env or environment(),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          errors="replace", timeout=timeout,
                          preexec_fn=_default_signal_handlers)


def wait_until(predicate, timeout=WAIT, what="the condition", interval=0.02):
    """Poll ``predicate()`` until it returns something true, and return that; fail after
    ``timeout`` seconds. For events only visible by asking (a counter, a file)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class StderrLines:
    """Collects a child's stderr line by line (``self.proc``, opened with stderr=PIPE) and
    waits for patterns in it; for tests that start their own kind of child process."""

    def _collect_stderr(self):
        self.lines = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self):
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    @property
    def text(self):
        with self.changed:
            return "".join(self.lines)

    def wait_for(self, pattern, count=1, timeout=WAIT):
        """Wait until ``pattern`` has matched ``count`` times; all its matches."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = re.findall(pattern, "".join(self.lines), re.MULTILINE)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{pattern!r} x{count} not seen within {timeout}s; exit="
                                f"{self.proc.poll()}; stderr:\n{''.join(self.lines)}")
                self.changed.wait(min(left, 0.2))


class Process:
    """A child process in its own session, its output collected line by line."""

    def __init__(self, argv, cwd=REPO, env=None, pass_fds=()):
        self.argv = list(map(str, argv))
        self.proc = subprocess.Popen(
            self.argv, cwd=cwd, env=env or environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
            start_new_session=True, pass_fds=pass_fds, preexec_fn=_default_signal_handlers)
        self.pid = self.proc.pid
        self._lines = {"stdout": [], "stderr": []}
        self._open = {"stdout": True, "stderr": True}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, getattr(self.proc, name)),
                             daemon=True, name=f"read {name} of {self.pid}")
            for name in self._lines]
        for reader in self._readers:
            reader.start()

    def _read(self, name, stream):
        try:
            for line in stream:
                with self._changed:
                    self._lines[name].append(line)
                    self._changed.notify_all()
        finally:
            stream.close()
            with self._changed:
                self._open[name] = False
                self._changed.notify_all()

    # -- output -------------------------------------------------------------------------------

    def text(self, stream="stderr"):
        """Everything the child has written to ``stream`` so far."""
        with self._changed:
            return "".join(self._lines[stream])

    def output(self, stream="stderr", timeout=WAIT):
        """Everything the child wrote to ``stream``, once the stream has ended."""
        with self._changed:
            ended = self._changed.wait_for(lambda: not self._open[stream], timeout)
        if not ended:
            self._fail(f"{stream} still open after {timeout} s")
        return self.text(stream)

    def matches(self, pattern, stream="stderr"):
        """The first match of ``pattern`` in each line so far that has one."""
        regex = re.compile(pattern)
        with self._changed:
            lines = list(self._lines[stream])
        return [match for match in map(regex.search, lines) if match]

    def wait_for(self, pattern, stream="stderr", count=1, timeout=WAIT):
        """Wait until ``count`` lines of ``stream`` match ``pattern``; the last of those
        matches. Fails the test at once if the stream ends first, else after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        checked, found = 0, []
        with self._changed:
            while True:
                lines = self._lines[stream]
                for line in lines[checked:]:
                    match = regex.search(line)
                    if match:
                        found.append(match)
                        if len(found) == count:
                            return match
                checked = len(lines)
                left = deadline - time.monotonic()
                if not self._open[stream] or left <= 0:
                    break
                self._changed.wait(left)
        why = "the stream ended" if not self._open[stream] else f"{timeout} s passed"
        self._fail(f"{pattern!r} seen {len(found)} of {count} time(s) in {stream} before {why}")

    def listening(self, index=0, timeout=WAIT):
        """The ``index``-th "Listening at http://HOST:PORT (pid N)" line (counting from 0)."""
        return self.wait_for(LISTENING, count=index + 1, timeout=timeout)

    def address(self, index=0, timeout=WAIT):
        """(host, port) a server bound, read from its log: tests bind port 0."""
        match = self.listening(index, timeout)
        return match["host"].strip("[]"), int(match["port"])

    @property
    def url(self):
        """http://HOST:PORT of the first listening socket."""
        match = self.listening()
        return f"http://{match['host']}:{match['port']}"

    # -- life and death -----------------------------------------------------------------------

    def signal(self, signum):
        """Send ``signum`` to the child alone."""
        self.proc.send_signal(signum)

    def signal_group(self, signum):
        """Send ``signum`` to the child's whole process group, as a terminal's Ctrl-C does."""
        os.killpg(self.pid, signum)

    def running(self):
        return self.proc.poll() is None

    def exit_code(self, timeout=WAIT):
        """Wait for the child to exit; its status (negative: killed by that signal)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._fail(f"still running after {timeout} s")

    def kill(self):
        """SIGKILL the child and everything left in its process group; reap it."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the whole group is gone already
        self.proc.wait(timeout=WAIT)
        for reader in self._readers:
            reader.join(5)  # EOF comes soon, unless a grandchild that left the group holds a pipe

    def _fail(self, what):
        pytest.fail(f"{' '.join(self.argv)}: {what}; exit status {self.proc.poll()}\n"
                    f"-- stderr --\n{self.text('stderr')}-- stdout --\n{self.text('stdout')}")


class Processes:
    """Starts processes for one test (or module) and kills all of them when closed.

    Use it as a context manager in a fixture, so no process outlives its test however the
    test ends.
    """

    def __init__(self, cwd=REPO, env=None):
        self.cwd, self.env = cwd, env
        self.started = []

    def start(self, argv, cwd=None, env=None, **options):
        process = Process(argv, cwd=cwd or self.cwd, env=env or self.env, **options)
        self.started.append(process)
        return process

    def greenserve(self, *args, **options):
        """``python -m greenserve ARGS``."""
        return self.start(greenserve_command(*args), **options)

    def close(self):
        for process in self.started:
            process.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


# -- clients of the fixture apps ----------------------------------------------------------------

def get(address, path="/", timeout=WAIT):
    """One GET on a fresh connection: (status, body text, Connection header or None)."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(), response.getheader("Connection")
    finally:
        conn.close()


class HeldRequest:
    """A ``GET /hold`` to ``webapp:app`` from a client thread, in flight until ``release()``.

    Created once the app has the request (its "REQUEST HELD" line), so a test can signal the
    server mid-request without guessing how long a request takes.
    """

    def __init__(self, server, address, directory):
        self.file = Path(directory) / f"release-{id(self)}"
        self.outcome = {}
        seen = len(server.matches("REQUEST HELD"))
        self.thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self.thread.start()
        server.wait_for("REQUEST HELD", count=seen + 1)

    def _run(self, address):
        try:
            self.outcome["response"] = get(address, "/hold?" + urllib.parse.quote(str(self.file)))
        except OSError as exc:  # the server cut the connection; tests that expect it look
            self.outcome["error"] = exc

    def release(self):
        self.file.touch()

    def done(self):
        return not self.thread.is_alive()

    def response(self, timeout=WAIT):
        """(status, body, Connection header) once answered; fails the test otherwise."""
        self.thread.join(timeout)
        if "response" not in self.outcome:
            pytest.fail(f"the held request got no response: {self.outcome or 'still waiting'}")
        return self.outcome["response"]

    def cut(self, timeout=WAIT):
        """True once the request ended without a response (the server closed the connection)."""
        self.thread.join(timeout)
        return self.done() and "error" in self.outcome
