"""The ``greenserve`` command, run for real in subprocesses (``python -m greenserve``)."""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from greenserve.config import SETTINGS

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below (generous for a loaded CI machine)

APP = '''
import os
import sys
import time
from wsgiref.validate import validator


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        # Tell the test the request is in flight, then take a while (cooperatively when
        # gevent has patched time.sleep).
        sys.stderr.write("SLOW REQUEST STARTED\\n")
        sys.stderr.flush()
        time.sleep(float(environ["QUERY_STRING"] or "1"))
    if path == "/patched":
        import gevent.monkey
        body = str(gevent.monkey.is_module_patched("socket")).encode()
    else:
        body = f"hello {path} from {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
not_an_app = 42


def create_app(greeting="hi"):
    return app


def broken_factory():
    raise RuntimeError("cannot reach the database")
'''


@pytest.fixture
def project(tmp_path):
    """A directory holding the test app (webapp.py); commands run from there."""
    (tmp_path / "webapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


def environment(**extra):
    """The test's environment, minus GREENSERVE_* settings, with greenserve importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(args, cwd, env=None, timeout=WAIT):
    """Run greenserve to completion (for the cases that must fail fast)."""
    return subprocess.run([sys.executable, "-m", "greenserve", *args], cwd=cwd,
                          env=env or environment(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


class Server:
    """A greenserve process, its output collected by reader threads so waits can be bounded."""

    def __init__(self, args, cwd, env=None, command=None):
        command = command or [sys.executable, "-m", "greenserve"]
        self.proc = subprocess.Popen([*command, *args], cwd=cwd, env=env or environment(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stdout, self.stderr = [], []
        self.changed = threading.Condition()
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()

    def _read(self, stream, lines):
        for line in stream:
            with self.changed:
                lines.append(line)
                self.changed.notify_all()

    def wait_for(self, pattern, stream="stderr", timeout=WAIT):
        """The first match of ``pattern`` in the output; fails the test after ``timeout``."""
        lines = getattr(self, stream)
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for line in lines:
                    match = regex.search(line)
                    if match:
                        return match
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._more(lines):
                    pytest.fail(f"no {pattern!r} in {stream} within {timeout}s; "
                                f"exit={self.proc.poll()}; stderr:\n{''.join(self.stderr)}")
                self.changed.wait(min(left, 0.2))

    def _more(self, lines):
        # After exit, give the reader threads a moment to deliver the last lines.
        count = len(lines)
        self.changed.wait(0.5)
        return len(lines) != count

    def address(self):
        match = self.wait_for(r"Listening at http://127\.0\.0\.1:(\d+) \(pid (\d+)\)")
        assert int(match.group(2)) == self.proc.pid
        return "127.0.0.1", int(match.group(1))

    def exit_code(self, timeout=WAIT):
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)


@pytest.fixture
def start(project):
    """Start greenserve processes; every one is killed when the test ends, however it ends."""
    started = []

    def start(*args, cwd=None, **kwargs):
        server = Server(list(args), cwd or project, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def get(address, path="/", timeout=WAIT):
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def assert_user_error(result, message):
    """Exit 2, ``message`` on the last stderr line, and no traceback at all."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"greenserve: error: {message}"
    return result


# -- a good app -------------------------------------------------------------------------------

def test_serves_a_request_and_stops_on_sigterm(start):
    server = start("webapp:app", "-b", "127.0.0.1:0", "--access-log", "-")
    address = server.address()
    status, body = get(address, "/hello?x=1")
    assert (status, body) == (200, f"hello /hello from {server.proc.pid}")
    # %(b)s is the body's length, headers not counted (as in gunicorn).
    length = len(body.encode())
    server.wait_for(r'^127\.0\.0\.1 - - \[.*\] "GET /hello\?x=1 HTTP/1\.1" 200 '
                    + str(length) + r' "-" "-" \d+$', stream="stdout")
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert "Traceback" not in "".join(server.stderr)


@pytest.mark.parametrize("spec", ["webapp", "webapp:create_app()", "webapp:create_app('hey')",
                                  "webapp:create_app(greeting='hey')"])
def test_app_spec_forms(start, spec):
    server = start(spec, "-b", "127.0.0.1:0")
    assert get(server.address(), "/x")[0] == 200


def test_bind_from_environment_and_config_file(start, project):
    # Env beats the file: the file's port is taken, so starting at all proves the order.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    with blocker:
        (project / "gs.toml").write_text(
            f'bind = ["127.0.0.1:{blocker.getsockname()[1]}"]\nlog-level = "debug"\n')
        server = start("webapp:app", "-c", "gs.toml",
                       env=environment(GREENSERVE_BIND="127.0.0.1:0"))
        assert get(server.address())[0] == 200


def test_unix_socket_bind(start, project):
    path = project / "gs.sock"
    server = start("webapp:app", "-b", f"unix:{path}", "-b", "127.0.0.1:0")
    server.wait_for(re.escape(f"Listening at unix:{path} (pid {server.proc.pid})"))
    server.address()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        client.sendall(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"hello /u from %d"
                                                                   % server.proc.pid)
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert not path.exists()  # the socket file is removed on a clean stop


def test_chdir_and_pythonpath(start, project):
    (project / "site").mkdir()
    (project / "site" / "inner.py").write_text("from webapp import app\n")
    (project / "libs").mkdir()
    (project / "libs" / "outer.py").write_text("from inner import app\n")
    server = start("outer:app", "--chdir", "site", "--pythonpath", str(project / "libs"),
                   "--pythonpath", str(project), "-b", "127.0.0.1:0", cwd=project)
    assert get(server.address())[0] == 200


def test_monkey_patching_on_and_off(start):
    server = start("webapp:app", "-b", "127.0.0.1:0")
    assert get(server.address(), "/patched") == (200, "True")
    server = start("webapp:app", "-b", "127.0.0.1:0", "--no-monkey-patch")
    assert get(server.address(), "/patched") == (200, "False")
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_code() == 0


def test_warns_about_modules_imported_before_patching(start, project):
    # Imitate a wrapper script that imported ssl before handing over to greenserve.
    code = "import ssl, sys; from greenserve.cli import main; sys.exit(main())"
    server = start("webapp:app", "-b", "127.0.0.1:0", command=[sys.executable, "-c", code])
    warning = server.wait_for(r"\[WARNING\] imported before gevent monkey-patching.*")
    assert "ssl" in warning.group(0)
    assert get(server.address())[0] == 200


# -- graceful stop ------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_request_in_flight_finish(start, signum):
    server = start("webapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "15")
    address = server.address()
    outcome = {}

    def slow_client():
        try:
            outcome["response"] = get(address, "/slow?2")
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    client = threading.Thread(target=slow_client, daemon=True)
    client.start()
    server.wait_for("SLOW REQUEST STARTED")
    started = time.monotonic()
    server.proc.send_signal(signum)
    server.wait_for("stopping gracefully")
    client.join(WAIT)
    assert outcome.get("response", (None,))[0] == 200, outcome
    assert server.exit_code() == 0
    assert time.monotonic() - started < 10  # waited for the request, not the whole timeout
    assert "Traceback" not in "".join(server.stderr)


def test_graceful_timeout_bounds_the_wait(start):
    server = start("webapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "1")
    address = server.address()
    client = threading.Thread(target=lambda: _swallow(get, address, "/slow?60"), daemon=True)
    client.start()
    server.wait_for("SLOW REQUEST STARTED")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert 0.9 < time.monotonic() - started < 10  # waited the timeout, not the request


def test_second_signal_stops_at_once(start):
    server = start("webapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "60")
    address = server.address()
    client = threading.Thread(target=lambda: _swallow(get, address, "/slow?60"), daemon=True)
    client.start()
    server.wait_for("SLOW REQUEST STARTED")
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for("stopping gracefully")
    server.proc.send_signal(signal.SIGINT)
    assert server.exit_code(timeout=WAIT) == 1  # long before the 60 s request or timeout
    server.wait_for("second signal received; exiting without waiting")


def _swallow(function, *args):
    try:
        function(*args)
    except OSError:
        pass  # the server went away mid-request, which is the point


# -- --help and --version -----------------------------------------------------------------------

def test_help_lists_every_setting(tmp_path):
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    for name, spec in SETTINGS.items():
        for flag in spec.metadata["flags"]:
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}\b", result.stdout), flag
        if not spec.metadata["cli_only"]:
            assert f"GREENSERVE_{name.upper()}" in result.stdout
    flowing = " ".join(result.stdout.split())  # undo argparse's line wrapping
    assert "--no-monkey-patch" in flowing
    assert "default: 127.0.0.1:8000" in flowing
    assert "default: 2048" in flowing


def test_version(tmp_path):
    result = run(["--version"], tmp_path)
    assert result.returncode == 0
    assert re.fullmatch(r"greenserve \d+\.\d+\.\d+\S*\n", result.stdout)


# -- user errors: one line, exit 2, no traceback --------------------------------------------

def test_no_app_given(tmp_path):
    result = run([], tmp_path)
    assert result.returncode == 2
    assert "the following arguments are required: APP" in result.stderr


def test_unknown_option(tmp_path):
    result = run(["webapp:app", "--bakclog", "3"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unrecognized arguments: --bakclog" in result.stderr


def test_missing_module(project):
    assert_user_error(run(["webap:app"], project),
                      "no module named 'webap' (did you mean 'webapp'?)")


def test_missing_attribute(project):
    assert_user_error(run(["webapp:ap"], project),
                      "module 'webapp' has no attribute 'ap' (did you mean 'app'?)")


def test_not_callable(project):
    assert_user_error(run(["webapp:not_an_app"], project),
                      "webapp:not_an_app is an int, which is not callable; a WSGI application "
                      "is a callable taking (environ, start_response)")


def test_malformed_app_spec(project):
    assert_user_error(run(["webapp:create_app(os.getcwd())"], project),
                      "malformed app spec 'webapp:create_app(os.getcwd())': factory arguments "
                      "must be Python literals (strings, numbers, True/False/None, lists, "
                      "dicts...)")


def test_factory_that_raises_shows_its_own_traceback(project):
    result = run(["webapp:broken_factory()"], project)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ("greenserve: error: factory webapp:broken_factory() raised "
                         "RuntimeError: cannot reach the database")
    # The traceback shown is the factory's, starting in the app's file, not greenserve's.
    assert lines[0] == "Traceback (most recent call last):"
    assert 'webapp.py", line' in result.stderr
    assert "greenserve" not in "\n".join(lines[:-1])


def test_import_error_inside_the_app_shows_its_traceback(project):
    (project / "needsdep.py").write_text("import gs_not_installed_anywhere\napp = None\n")
    result = run(["needsdep:app"], project)
    assert result.returncode == 2
    assert 'needsdep.py", line 1' in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "greenserve: error: importing 'needsdep' failed: ModuleNotFoundError: No module named "
        "'gs_not_installed_anywhere'")


def test_bind_in_use(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert_user_error(run(["webapp:app", "-b", f"127.0.0.1:{port}"], project),
                          f"bind 127.0.0.1:{port}: address already in use")


def test_malformed_bind(project):
    assert_user_error(run(["webapp:app", "-b", "x:y"], project),
                      "malformed address 'x:y' (expected HOST:PORT, [IPv6]:PORT, unix:/path "
                      "or fd://N)")


def test_unknown_config_key(project):
    (project / "gs.toml").write_text("max-conections = 10\n")
    assert_user_error(run(["webapp:app", "-c", "gs.toml"], project),
                      "config file gs.toml: unknown option 'max-conections' (did you mean "
                      "'max-connections'?)")


def test_bad_config_value(project):
    (project / "gs.toml").write_text('backlog = "lots"\n')
    assert_user_error(run(["webapp:app", "-c", "gs.toml"], project),
                      "backlog: 'lots' from config file gs.toml is not a valid number")


def test_missing_config_file(project):
    assert_user_error(run(["webapp:app", "-c", "nope.toml"], project),
                      "config file nope.toml: No such file or directory")


def test_bad_env_value(project):
    result = run(["webapp:app"], project, env=environment(GREENSERVE_KEEP_ALIVE="soon"))
    assert_user_error(result, "keep-alive: 'soon' from env is not a valid number")


def test_bad_cli_value(project):
    assert_user_error(run(["webapp:app", "--log-level", "loud"], project),
                      "log-level: 'loud' from the command line must be one of debug, info, "
                      "warning, error, critical")


def test_missing_chdir(project):
    assert_user_error(run(["webapp:app", "--chdir", "nowhere"], project),
                      "chdir nowhere: no such file or directory")


def test_ctrl_c_while_the_app_loads(start, project):
    (project / "slowimport.py").write_text(
        "import sys, time\nsys.stderr.write('IMPORTING\\n')\nsys.stderr.flush()\n"
        "time.sleep(60)\napp = None\n")
    server = start("slowimport:app", "-b", "127.0.0.1:0")
    server.wait_for("IMPORTING")
    server.proc.send_signal(signal.SIGINT)
    assert server.exit_code() == 130
    server.wait_for("^greenserve: interrupted$")
    assert "Traceback" not in "".join(server.stderr)
