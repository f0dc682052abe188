"""The ``greenserve`` command, run for real in subprocesses (``python -m greenserve``)."""

import base64
import http.client
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

import greenserve
import procs
from greenserve.config import SETTINGS
from procs import FIXTURE_APPS, WAIT, HeldRequest, environment

PACKAGE = Path(greenserve.__file__).resolve().parent


@pytest.fixture
def project(tmp_path):
    """A working directory for the command (config files, extra modules); the test app
    (``tests/fixtureapps/webapp.py``) is importable through PYTHONPATH."""
    return tmp_path


def run(args, cwd, env=None):
    """Run greenserve to completion (for the cases that must fail fast)."""
    return procs.run(procs.greenserve_command(*args), cwd=cwd, env=env)


@pytest.fixture
def processes(project):
    """Starts processes in ``project``; every one is killed when the test ends."""
    with procs.Processes(cwd=project) as started:
        yield started


def get(address, path="/"):
    """(status, body) of one GET."""
    return procs.get(address, path)[:2]


def assert_user_error(result, message):
    """Exit 2, ``message`` on the last stderr line, and no traceback at all."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"greenserve: error: {message}"
    return result


# -- a good app -------------------------------------------------------------------------------

def test_serves_a_request_and_stops_on_sigterm(processes):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--access-log", "-")
    address = server.address()
    assert server.listening()["pid"] == str(server.pid)  # one process: it serves itself
    status, body = get(address, "/hello?x=1")
    assert (status, body) == (200, f"hello /hello from {server.pid}")
    # %(b)s is the body's length, headers not counted (as in gunicorn).
    length = len(body.encode())
    server.wait_for(r'^127\.0\.0\.1 - - \[.*\] "GET /hello\?x=1 HTTP/1\.1" 200 '
                    + str(length) + r' "-" "-" \d+$', stream="stdout")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert "Traceback" not in server.text()


def test_default_access_log_line_is_gunicorns(processes):
    # gunicorn, for `curl -u bob:pw http://.../private`: 127.0.0.1 - bob [...] "GET ..."
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--access-log", "-")
    conn = http.client.HTTPConnection(*server.address(), timeout=WAIT)
    try:
        conn.request("GET", "/private", headers={
            "Authorization": "Basic " + base64.b64encode(b"bob:pw").decode()})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    server.wait_for(r'^127\.0\.0\.1 - bob \[.*\] "GET /private HTTP/1\.1" 200 \d+ "-" "-" \d+$',
                    stream="stdout")


def test_pid_and_empty_query_atoms_as_gunicorn_writes_them(processes):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--access-log", "-",
                                  "--access-log-format", "%(p)s [%(q)s] %(U)s")
    address = server.address()
    get(address, "/no-query")
    get(address, "/with?x=1")
    server.wait_for(rf"^<{server.pid}> \[\] /no-query$", stream="stdout")
    server.wait_for(rf"^<{server.pid}> \[x=1\] /with$", stream="stdout")


@pytest.mark.parametrize("spec", ["webapp", "webapp:create_app()", "webapp:create_app('hey')",
                                  "webapp:create_app(greeting='hey')"])
def test_app_spec_forms(processes, spec):
    server = processes.greenserve(spec, "-b", "127.0.0.1:0")
    assert get(server.address(), "/x")[0] == 200


def test_bind_from_environment_and_config_file(processes, project):
    # Env beats the file: the file's port is taken, so starting at all proves the order.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    with blocker:
        (project / "gs.toml").write_text(
            f'bind = ["127.0.0.1:{blocker.getsockname()[1]}"]\nlog-level = "debug"\n')
        server = processes.greenserve("webapp:app", "-c", "gs.toml",
                                      env=environment(GREENSERVE_BIND="127.0.0.1:0"))
        assert get(server.address())[0] == 200


def test_unix_socket_bind(processes, project):
    path = project / "gs.sock"
    server = processes.greenserve("webapp:app", "-b", f"unix:{path}", "-b", "127.0.0.1:0")
    server.wait_for(re.escape(f"Listening at unix:{path} (pid {server.pid})"))
    server.address()
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(WAIT)
        client.connect(str(path))
        client.sendall(b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"hello /u from %d"
                                                                   % server.pid)
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert not path.exists()  # the socket file is removed on a clean stop


def test_chdir_and_pythonpath(processes, project):
    (project / "site").mkdir()
    (project / "site" / "inner.py").write_text("from webapp import app\n")
    (project / "libs").mkdir()
    (project / "libs" / "outer.py").write_text("from inner import app\n")
    server = processes.greenserve("outer:app", "--chdir", "site",
                                  "--pythonpath", project / "libs", "--pythonpath", project,
                                  "-b", "127.0.0.1:0", cwd=project)
    assert get(server.address())[0] == 200


def test_monkey_patching_on_and_off(processes):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0")
    assert get(server.address(), "/patched") == (200, "True")
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--no-monkey-patch")
    assert get(server.address(), "/patched") == (200, "False")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0


def test_warns_about_modules_imported_before_patching(processes, project):
    # Imitate a wrapper script that imported ssl before handing over to greenserve.
    code = "import ssl, sys; from greenserve.cli import main; sys.exit(main())"
    server = processes.start([sys.executable, "-c", code, "webapp:app", "-b", "127.0.0.1:0"])
    warning = server.wait_for(r"\[WARNING\] imported before gevent monkey-patching.*")
    assert "ssl" in warning.group(0)
    assert get(server.address())[0] == 200


# -- graceful stop ------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_the_request_in_flight_finish(processes, project, signum):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "60")
    held = HeldRequest(server, server.address(), project)
    server.signal(signum)
    server.wait_for("stopping gracefully")
    assert server.running() and not held.done()  # the stop waits for the request
    held.release()
    assert held.response()[0] == 200
    # Well inside the 60 s graceful timeout: it waited for the request, not the timeout.
    assert server.exit_code(timeout=WAIT) == 0
    assert "Traceback" not in server.text()


def test_graceful_timeout_bounds_the_wait(processes, project):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "1")
    held = HeldRequest(server, server.address(), project)  # never released
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.exit_code(timeout=WAIT) == 0
    assert time.monotonic() - started >= 0.9  # it did wait for the request, the timeout long
    assert held.cut()


def test_second_signal_stops_at_once(processes, project):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--graceful-timeout", "60")
    held = HeldRequest(server, server.address(), project)  # never released
    server.signal(signal.SIGTERM)
    server.wait_for("stopping gracefully")
    server.signal(signal.SIGINT)
    assert server.exit_code(timeout=WAIT) == 1  # long before the 60 s graceful timeout
    server.wait_for("second signal received; exiting without waiting")
    assert held.cut()


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

def assert_one_line(result, message):
    """A usage error: exit 2 and ``message`` as the only stderr line (no usage text)."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"greenserve: error: {message}"]


def test_no_app_given(tmp_path):
    assert_one_line(run([], tmp_path), "no application given: greenserve MODULE:APP [options] "
                                       "(see greenserve --help)")


@pytest.mark.parametrize("args, message", [
    (["--bakclog", "3"], "unrecognized option --bakclog (did you mean --backlog?) "
                         "(see greenserve --help)"),
    (["--bakclog=3"], "unrecognized option --bakclog (did you mean --backlog?) "
                      "(see greenserve --help)"),
    (["--frobnicate"], "unrecognized option --frobnicate (see greenserve --help)"),
    (["other:app"], "unexpected argument 'other:app': greenserve serves one APP "
                    "(see greenserve --help)"),
    (["-w"], "argument -w/--workers: expected one argument (see greenserve --help)"),
])
def test_usage_errors_are_one_line(tmp_path, args, message):
    assert_one_line(run(["webapp:app", *args], tmp_path), message)


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
    assert lines[1].startswith(f'  File "{FIXTURE_APPS / "webapp.py"}", line ')
    files = re.findall(r'^  File "(.*)", line \d+', result.stderr, re.MULTILINE)
    assert files and not [path for path in files if PACKAGE in Path(path).resolve().parents]


def test_import_error_inside_the_app_shows_its_traceback(project):
    result = run(["needsdep:app"], project)
    assert result.returncode == 2
    assert 'needsdep.py", line 3' in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "greenserve: error: importing 'needsdep' failed: ModuleNotFoundError: No module named "
        "'gs_not_installed_anywhere'")


@pytest.mark.parametrize("workers", [[], ["-w", "2"]])
def test_app_calling_sys_exit_at_import(project, workers):
    # Without a master the SystemExit used to end greenserve with status 1 and the bare text.
    result = run(["exits_at_import:app", "-b", "127.0.0.1:0", *workers], project)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "importing 'exits_at_import' failed: SystemExit: DATABASE_URL is not set")
    assert 'exits_at_import.py", line 5' in result.stderr


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


def test_bad_list_value_is_quoted_once(project):
    assert_user_error(run(["webapp:app", "--forwarded-allow-ips", "300.1.1.1"], project),
                      "forwarded-allow-ips: '300.1.1.1' from the command line is not an IP "
                      "address, a network like 10.0.0.0/8, '*' or 'unix'")


def test_bad_cli_value(project):
    assert_user_error(run(["webapp:app", "--log-level", "loud"], project),
                      "log-level: 'loud' from the command line must be one of debug, info, "
                      "warning, error, critical")


def test_url_scheme_other_than_http_or_https(project):
    assert_user_error(run(["webapp:app", "--url-scheme", "ftp"], project),
                      "url-scheme: 'ftp' from the command line must be http or https")


def test_missing_chdir(project):
    assert_user_error(run(["webapp:app", "--chdir", "nowhere"], project),
                      "chdir nowhere: no such file or directory")


@pytest.mark.parametrize("args, message", [
    (["--pythonpath", "nowhere"], "pythonpath nowhere: no such file or directory"),
    # Every entry is checked; a relative one is read after --chdir (from 'site', 'libs'
    # is not there).
    (["--pythonpath", "libs", "--pythonpath", "nowhere"],
     "pythonpath nowhere: no such file or directory"),
    (["--chdir", "site", "--pythonpath", "libs"], "pythonpath libs: no such file or directory"),
    (["--pythonpath", "libs,nowhere"], "pythonpath libs,nowhere: no such file or directory "
                                       "(give one directory per --pythonpath)"),
])
def test_missing_pythonpath(project, args, message):
    (project / "libs").mkdir()
    (project / "site").mkdir()
    assert_user_error(run(["webapp:app", *args], project), message)
    assert_user_error(run(["webapp:app", "--check-config", *args], project), message)


def test_ctrl_c_while_the_app_loads(processes):
    server = processes.greenserve("slow_to_import:app", "-b", "127.0.0.1:0")
    server.wait_for("IMPORTING")
    server.signal(signal.SIGINT)
    assert server.exit_code() == 130
    server.wait_for("^greenserve: interrupted$")
    assert "Traceback" not in server.text()
