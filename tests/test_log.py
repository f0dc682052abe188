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
    assert values["p"] == str(os.getpid())


def test_missing_values_are_dashes(lines):
    logger, out = lines
    bare = {"REQUEST_METHOD": "HEAD", "PATH_INFO": "/x", "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.0"}
    AccessLog('%(h)s "%(r)s" %(q)s "%(f)s" "%(a)s"', logger)(bare, 204, 0, 0.0)
    # Without RAW_URI the request line is rebuilt from PATH_INFO and QUERY_STRING.
    assert out == ['- "HEAD /x HTTP/1.0" - "-" "-"']


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
