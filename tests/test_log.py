"""Access-log lines and logging setup."""

import logging
import os
import re
import sys

import pytest

from greenserve.config import Config, load_config
from greenserve.errors import ConfigError
from greenserve.log import AccessLog, access_logger, error_log, make_access_log, setup_logging

DEFAULT_FORMAT = Config().access_log_format


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    """Captures what AccessLog writes, on a private logger."""
    logger = logging.getLogger("greenserve.test-access")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    yield logger, handler.lines
    logger.removeHandler(handler)


def environ(**extra):
    base = {"REMOTE_ADDR": "10.1.2.3", "REQUEST_METHOD": "GET", "RAW_URI": "/a%20b?x=1",
            "PATH_INFO": "/a b", "QUERY_STRING": "x=1", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_REFERER": "http://example.com/", "HTTP_USER_AGENT": "curl/8.0"}
    base.update(extra)
    return base


def test_default_format_is_gunicorns_with_the_duration():
    assert DEFAULT_FORMAT == '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'


def test_default_format(lines):
    logger, out = lines
    AccessLog(DEFAULT_FORMAT, logger)(environ(), 200, 1234, 0.0125)
    (line,) = out
    match = re.fullmatch(r'10\.1\.2\.3 - - \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
                         r'"GET /a%20b\?x=1 HTTP/1\.1" 200 1234 "http://example\.com/" '
                         r'"curl/8\.0" 12500', line)
    assert match, line


def test_every_key(lines):
    logger, out = lines
    keys = "h t r m U q H s b f a D L p".split()
    AccessLog("|".join(f"%({key})s" for key in keys), logger)(environ(), 404, 0, 1.5)
    values = dict(zip(keys, out[0].split("|")))
    assert values["h"] == "10.1.2.3"
    assert values["t"].startswith("[") and values["t"].endswith("]")
    assert values["r"] == "GET /a%20b?x=1 HTTP/1.1"
    assert (values["m"], values["U"], values["q"], values["H"]) == ("GET", "/a b", "x=1",
                                                                    "HTTP/1.1")
    assert (values["s"], values["b"]) == ("404", "0")
    assert (values["f"], values["a"]) == ("http://example.com/", "curl/8.0")
    assert (values["D"], values["L"]) == ("1500000", "1.500000")
    assert values["p"] == f"<{os.getpid()}>"  # as gunicorn writes it


def test_missing_values_are_dashes(lines):
    logger, out = lines
    bare = {"REQUEST_METHOD": "HEAD", "PATH_INFO": "/x", "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.0"}
    AccessLog('%(h)s "%(r)s" [%(q)s] "%(f)s" "%(a)s"', logger)(bare, 204, 0, 0.0)
    # Without RAW_URI the request line is rebuilt from PATH_INFO and QUERY_STRING.
    assert out == ['- "HEAD /x HTTP/1.0" [] "-" "-"']


def test_client_text_cannot_forge_lines(lines):
    logger, out = lines
    AccessLog('"%(a)s" "%(f)s"', logger)(
        environ(HTTP_USER_AGENT='evil"\n1.2.3.4 - - fake', HTTP_REFERER="a\\b\x1b[31m"),
        200, 0, 0.0)
    assert out == ['"evil\\"\\x0a1.2.3.4 - - fake" "a\\\\b\\x1b[31m"']


def test_literal_percent_and_plain_text(lines):
    logger, out = lines
    AccessLog("100%% %(s)s done", logger)(environ(), 500, 0, 0.0)
    assert out == ["100% 500 done"]


@pytest.mark.parametrize("fmt, message", [
    ("%(x)s", "access-log-format: unknown key 'x'"),
    ("%(h)s %(zz)d", "access-log-format: unknown key 'zz'"),
    ("%(h)", "access-log-format: '%(h)' is not a valid format"),
])
def test_bad_formats(fmt, message):
    with pytest.raises(ConfigError) as caught:
        AccessLog(fmt)
    assert str(caught.value).startswith(message)


def test_make_access_log_is_none_when_off():
    assert make_access_log(Config()) is None
    made = make_access_log(load_config(cli={"access_log": "-", "access_log_format": "%(s)s"}))
    assert isinstance(made, AccessLog) and made.format == "%(s)s"


@pytest.fixture
def restore_loggers():
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate) for lg in (error_log, access_logger)]
    yield
    for logger, handlers, level, propagate in saved:
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.propagate = propagate


def test_setup_logging_to_files(tmp_path, restore_loggers):
    errors, access = tmp_path / "error.log", tmp_path / "access.log"
    config = load_config(cli={"error_log": str(errors), "access_log": str(access),
                              "log_level": "warning", "access_log_format": "%(m)s %(s)s"})
    setup_logging(config)
    error_log.info("not shown at warning level")
    error_log.warning("shown")
    make_access_log(config)(environ(), 201, 0, 0.0)
    for handler in error_log.handlers + access_logger.handlers:
        handler.flush()
    assert re.fullmatch(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[WARNING\] "
                        r"shown\n", errors.read_text())
    assert access.read_text() == "GET 201\n"
    assert not error_log.propagate and not access_logger.propagate


def test_setup_logging_is_idempotent(tmp_path, restore_loggers):
    config = load_config(cli={"access_log": "-"})
    before = len(error_log.handlers), len(access_logger.handlers)
    setup_logging(config)
    setup_logging(config)
    assert len(error_log.handlers) == before[0] + 1
    assert len(access_logger.handlers) == before[1] + 1
    assert access_logger.handlers[-1].stream is sys.stdout
    assert error_log.handlers[-1].stream is sys.stderr
    # Turning the access log off removes our handler again.
    setup_logging(Config())
    assert len(access_logger.handlers) == before[1]


def test_setup_logging_bad_path(tmp_path, restore_loggers):
    config = load_config(cli={"access_log": str(tmp_path / "missing" / "a.log")})
    with pytest.raises(ConfigError, match=r"^access-log: cannot open .*a\.log: no such file"):
        setup_logging(config)


# == wsgi.errors, --log-config, --capture-output, reopening log files ========================
# (this block: ErrorStream, load_log_config, setup_logging with a log config or captured
# output, reopen_log_files; processes where logging or file descriptors are process-wide)

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from greenserve.log import ErrorStream, load_log_config, reopen_log_files  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


@pytest.fixture
def records():
    logger = logging.getLogger("greenserve.test-errors")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = Records()
    logger.addHandler(handler)
    yield logger, handler.records
    logger.removeHandler(handler)


def test_error_stream_sends_lines_to_the_error_log(records):
    logger, out = records
    stream = ErrorStream(logger)
    print("one", "two", file=stream)           # four writes, one line
    stream.write("Traceback (most recent call last):\n  File \"x\"\nValueError: boom\n")
    stream.write("unfinished ")
    stream.writelines(["line\n", "a\nb"])
    assert out == [("ERROR", "one two"),
                   ("ERROR", "Traceback (most recent call last):\n  File \"x\"\nValueError: boom"),
                   ("ERROR", "unfinished line"), ("ERROR", "a")]
    stream.flush()
    assert out[-1] == ("ERROR", "b")
    stream.flush()
    stream.write("\n\n")  # blank lines and empty flushes log nothing
    assert len(out) == 5


def test_error_stream_is_text_only_and_bounded(records):
    logger, out = records
    stream = ErrorStream(logger, level=logging.WARNING)
    with pytest.raises(TypeError, match="takes str, not bytes"):
        stream.write(b"bytes\n")
    stream.write("x" * (ErrorStream.MAX_PARTIAL + 1))  # no newline ever: not kept forever
    assert out == [("WARNING", "x" * (ErrorStream.MAX_PARTIAL + 1))]


def test_error_stream_default_logger_is_the_error_log():
    handler = Records()
    error_log.addHandler(handler)
    try:
        ErrorStream().write("from the app\n")
    finally:
        error_log.removeHandler(handler)
    assert handler.records == [("ERROR", "from the app")]


def write_config(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_load_log_config_toml_and_json(tmp_path):
    toml = write_config(tmp_path, "log.toml", """
        [handlers.out]
        class = "logging.StreamHandler"
        [loggers."greenserve.access"]
        handlers = ["out"]
        """)
    assert load_log_config(toml) == {
        "version": 1, "disable_existing_loggers": False,
        "handlers": {"out": {"class": "logging.StreamHandler"}},
        "loggers": {"greenserve.access": {"handlers": ["out"]}}}
    as_json = write_config(tmp_path, "log.JSON", '{"version": 1, "disable_existing_loggers": true}')
    assert load_log_config(as_json) == {"version": 1, "disable_existing_loggers": True}


@pytest.mark.parametrize("name, text, message", [
    ("log.ini", "[loggers]\n", r"log-config: .*log\.ini must be a \.toml or \.json file$"),
    ("log.json", "{nope", r"log-config: .*log\.json is not valid JSON: Expecting"),
    ("log.json", "[1, 2]", r"log-config: .*log\.json must hold a table of dictConfig"),
    ("log.json", b"\xff\xfe{", r"log-config: .*log\.json is not valid JSON"),
    ("log.toml", "version = ", r"log-config: .*log\.toml is not valid TOML: "),
])
def test_load_log_config_bad_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message) as caught:
        load_log_config(str(path))
    assert "\n" not in str(caught.value)


def test_load_log_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^log-config: cannot read .*gone\.toml: no such file"):
        load_log_config(str(tmp_path / "gone.toml"))


def test_log_config_and_capture_output_settings(tmp_path):
    config = load_config(cli={"log_config": "x.TOML", "capture_output": True})
    assert (config.log_config, config.capture_output) == ("x.TOML", True)
    assert Config().log_config is None and Config().capture_output is False
    with pytest.raises(ConfigError, match=r"^log-config: 'x\.yaml' from Server\(\) options "
                                          r"must be a \.toml or \.json file$"):
        load_config(cli={"log_config": "x.yaml"})


def test_capture_output_needs_an_error_log_file(restore_loggers):
    with pytest.raises(ConfigError, match=r"^capture-output: needs --error-log FILE"):
        setup_logging(load_config(cli={"capture_output": True}))


def test_reopen_log_files_after_they_moved(tmp_path, restore_loggers):
    errors, access, other = (tmp_path / n for n in ("error.log", "access.log", "other.log"))
    setup_logging(load_config(cli={"error_log": str(errors), "access_log": str(access),
                                   "access_log_format": "%(s)s"}))
    # A plain FileHandler (as a --log-config file makes) does not notice a move by itself.
    plain_logger = logging.getLogger("greenserve.test-plain")
    plain = logging.FileHandler(other, mode="w", encoding="utf-8")
    plain_logger.addHandler(plain)
    plain_logger.propagate = False
    try:
        error_log.warning("before")
        make_access_log(load_config(cli={"access_log": "-", "access_log_format": "%(s)s"}))(
            environ(), 200, 0, 0.0)
        plain_logger.warning("before")
        for path in (errors, access, other):
            path.rename(path.with_suffix(".log.1"))
        assert reopen_log_files() == []
        error_log.warning("after")
        make_access_log(load_config(cli={"access_log": "-", "access_log_format": "%(s)s"}))(
            environ(), 201, 0, 0.0)
        plain_logger.warning("after")
        assert reopen_log_files() == []  # a second reopen of unmoved files truncates nothing
        plain_logger.warning("again")
        for handler in error_log.handlers + access_logger.handlers + [plain]:
            handler.flush()
        assert access.read_text() == "201\n"
        assert tmp_path.joinpath("access.log.1").read_text() == "200\n"
        assert errors.read_text().endswith("[WARNING] after\n")
        assert "after" not in tmp_path.joinpath("error.log.1").read_text()
        assert other.read_text() == "after\nagain\n"
        assert tmp_path.joinpath("other.log.1").read_text() == "before\n"
    finally:
        plain_logger.removeHandler(plain)
        plain.close()


def test_reopen_log_files_reports_a_file_it_cannot_open(tmp_path, restore_loggers):
    folder = tmp_path / "logs"
    folder.mkdir()
    errors = folder / "error.log"
    setup_logging(load_config(cli={"error_log": str(errors)}))
    errors.rename(tmp_path / "error.log.1")
    folder.rmdir()
    problems = reopen_log_files()
    assert problems == [f"cannot reopen {errors}: no such file or directory; still writing "
                        f"to the old file"]
    error_log.warning("still logged")  # into the old (moved) file, nothing raised
    for handler in error_log.handlers:
        handler.flush()
    assert "still logged" in (tmp_path / "error.log.1").read_text()


# -- real processes: the command, and scripts for process-wide logging state -----------------

APP = '''
import os
import sys


def app(environ, start_response):
    if environ["PATH_INFO"] == "/print":
        print("printed by the app")
        os.write(2, b"written to fd 2 by the app\\n")
        sys.stderr.write("written to sys.stderr by the app\\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''


def _environment():
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_for(read, pattern, what):
    """The first match of ``pattern`` in ``read()``, polled until WAIT has passed."""
    deadline = time.monotonic() + WAIT
    while True:
        match = re.search(pattern, read(), re.MULTILINE)
        if match:
            return match
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} in {what} within {WAIT}s:\n{read()}")
        time.sleep(0.05)


class Command:
    """``greenserve webapp:app`` in a subprocess, stdout and stderr to files."""

    def __init__(self, folder, *args):
        (folder / "webapp.py").write_text(textwrap.dedent(APP))
        self.out, self.err = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "greenserve", "webapp:app", "-b", "127.0.0.1:0", *args],
                cwd=folder, env=_environment(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=err)

    def wait_for(self, path, pattern):
        return _wait_for(lambda: Path(path).read_text(errors="replace")
                         if Path(path).exists() else "", pattern, path)

    def get(self, port, path):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        return self.proc.returncode


@pytest.fixture
def command(tmp_path):
    started = []

    def start(*args):
        started.append(Command(tmp_path, *args))
        return started[-1]
    yield start
    for cmd in started:
        cmd.stop()


LISTENING = r"Listening at http://127\.0\.0\.1:(\d+) "


def test_cli_log_config_routes_the_access_log(tmp_path, command):
    routed = tmp_path / "routed.log"
    config = write_config(tmp_path, "logging.json", json.dumps({
        "formatters": {"tagged": {"format": "ROUTED %(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(routed),
                              "formatter": "tagged"}},
        "loggers": {"greenserve.access": {"handlers": ["file"], "level": "INFO",
                                          "propagate": False}}}))
    # No --access-log: the file configures greenserve.access, so access lines are on.
    server = command("--log-config", config, "--access-log-format", "json")
    port = int(server.wait_for(server.err, LISTENING).group(1))  # error log: still stderr
    assert server.get(port, "/routed?x=1") == b"ok"
    line = server.wait_for(routed, r"^ROUTED greenserve\.access (.*)$").group(1)
    assert json.loads(line)["request"] == "GET /routed?x=1 HTTP/1.1"
    assert server.stop() == 0
    assert server.out.read_text() == ""  # nothing on stdout: the file routed it
    assert "Traceback" not in server.err.read_text()


def test_cli_log_config_in_toml_through_the_parent_logger(tmp_path, command):
    routed = tmp_path / "all.log"
    config = write_config(tmp_path, "logging.toml", f"""
        [formatters.plain]
        format = "ALL %(name)s %(levelname)s %(message)s"
        [handlers.file]
        class = "logging.FileHandler"
        filename = {json.dumps(str(routed))}
        formatter = "plain"
        [root]
        handlers = ["file"]
        level = "INFO"
        [loggers.greenserve]
        level = "INFO"
        """)
    server = command("--log-config", config, "--error-log", str(tmp_path / "unused.log"))
    port = int(server.wait_for(routed, r"^ALL greenserve\.error INFO " + LISTENING).group(1))
    assert server.get(port, "/p") == b"ok"
    server.wait_for(routed, r'^ALL greenserve\.access INFO 127\.0\.0\.1 - - \[.*\] "GET /p ')
    assert server.stop() == 0
    assert not (tmp_path / "unused.log").exists()  # greenserve.error followed the file


@pytest.mark.parametrize("name, text, message", [
    ("bad.json", "{", r"log-config: \S*bad\.json is not valid JSON: "),
    ("bad.json", '{"handlers": {"h": {"class": "no.such.Handler"}}}',
     r"log-config: \S*bad\.json: Unable to configure handler 'h'"),
    ("bad.toml", "[handlers.h]\nclass = 'logging.FileHandler'\nfilename = '/nonexistent/x'\n",
     r"log-config: \S*bad\.toml: Unable to configure handler 'h'.*No such file"),
    ("bad.toml", "version = 2\n", r"log-config: \S*bad\.toml: Unsupported version: 2"),
    ("bad.yaml", "", r"log-config: '\S*bad\.yaml' from the command line must be a \.toml or "),
])
def test_cli_bad_log_config_is_one_line_and_exit_2(tmp_path, name, text, message):
    (tmp_path / "webapp.py").write_text(textwrap.dedent(APP))
    path = tmp_path / name
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "greenserve", "webapp:app", "-b",
                             "127.0.0.1:0", "--log-config", str(path)], cwd=tmp_path,
                            env=_environment(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=WAIT)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert re.fullmatch(r"greenserve: error: " + message + ".*", line), line


def test_cli_capture_output(tmp_path, command):
    errors = tmp_path / "error.log"
    server = command("--error-log", str(errors), "--capture-output", "--access-log", "-",
                     "--access-log-format", "ACCESS %(U)s")
    port = int(server.wait_for(errors, LISTENING).group(1))
    assert server.get(port, "/print") == b"ok"
    for text in ("printed by the app", "written to fd 2 by the app",
                 "written to sys.stderr by the app"):
        server.wait_for(errors, "^" + text + "$")
    # The access log on '-' still goes to the real stdout, not into the error log.
    server.wait_for(server.out, r"^ACCESS /print$")
    assert server.stop() == 0
    assert "ACCESS" not in errors.read_text()
    assert server.err.read_text() == ""


SCRIPT = '''
import os, sys
from greenserve.config import load_config
from greenserve.log import error_log, reopen_log_files, setup_logging

error_log_path = sys.argv[1]
setup_logging(load_config(cli={"error_log": error_log_path, "capture_output": True}))
print("first print")
error_log.warning("first record")
os.rename(error_log_path, error_log_path + ".1")
problems = reopen_log_files()
print("second print")
os.write(2, b"second fd 2\\n")
error_log.warning("second record %s", problems)
'''


def test_reopen_log_files_moves_captured_output_too(tmp_path):
    errors = tmp_path / "error.log"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(errors)], env=_environment(),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=WAIT)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    old, new = (tmp_path / "error.log.1").read_text(), errors.read_text()
    assert "first print\n" in old and "first record" in old
    assert "second" not in old
    assert "second print\n" in new and "second fd 2\n" in new
    assert "[WARNING] second record []" in new
