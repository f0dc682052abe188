"""Access-log formats: gunicorn's atoms, the json preset, escaping that no request breaks.

Units of ``greenserve.accessformat`` with hostile text, then a real server on 127.0.0.1:0
fed raw bytes, then the command line refusing a bad format (exit 2, one line).
"""

import base64
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from greenserve.accessformat import (ATOMS, JSON_FIELDS, REJECTED_LINE_LIMIT, compile_format,
                                     escape, json_string, rejected_environ)
from greenserve.config import load_config
from greenserve.errors import ConfigError
from greenserve.log import AccessLog, access_logger

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below

GUNICORN_DEFAULT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
# The Common Log Format line gunicorn's default produces; quoted fields hold no bare '"'.
GUNICORN_LINE = re.compile(r'(\S+) (\S+) (\S+) \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
                           r'"((?:[^"\\]|\\.)*)" (\d{3}) (\d+) "((?:[^"\\]|\\.)*)" '
                           r'"((?:[^"\\]|\\.)*)"')

# Everything str.splitlines() splits on, terminal controls, bidi and format characters.
HOSTILE = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
           "\u2029", "\x1b[31m", "\x9b31m", "\x00", "\x7f", "\x9f", "\u202e", "\u200b",
           "\ufeff", "\xa0", "\ud800", "\udfff", "\U000e0001", '"', "\\", '\\"', "\\x0a",
           "\\\\u2028", "\\\n"]


def unescape(text):
    """Undo ``escape``: its escapes are Python's, printable non-ASCII is left as it is."""
    return text.encode("ascii", "backslashreplace").decode("unicode_escape")


def environ(**extra):
    base = {"REMOTE_ADDR": "10.1.2.3", "REMOTE_PORT": "50123", "REQUEST_METHOD": "GET",
            "RAW_URI": "/a%20b?x=1", "PATH_INFO": "/a b", "QUERY_STRING": "x=1",
            "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_REFERER": "http://example.com/",
            "HTTP_USER_AGENT": "curl/8.0", "HTTP_X_REQUEST_ID": "req-7",
            "CONTENT_TYPE": "text/plain", "wsgi.url_scheme": "https"}
    base.update(extra)
    return base


RESPONSE_HEADERS = [("Content-Type", "text/html"), ("Set-Cookie", "a=1"),
                    ("X-Trace", "t-9"), ("set-cookie", "b=2")]


# -- escaping -----------------------------------------------------------------------------------

@pytest.mark.parametrize("hostile", HOSTILE)
def test_escape_leaves_one_printable_line(hostile):
    text = f"a{hostile}b"
    escaped = escape(text)
    assert escaped.isprintable() and len(escaped.splitlines()) == 1
    assert '"' not in escaped.replace('\\"', "")  # no bare quote closes a quoted field
    assert unescape(escaped) == text


def test_escape_names_each_code_point():
    assert escape("\n\x85\x9b\u2028\U000e0001\"\\") == \
        '\\x0a\\x85\\x9b\\u2028\\U000e0001\\"\\\\'
    # Printable text, including non-ASCII, is left alone (and not copied).
    plain = "caf\u00e9 \u65e5\u672c /a b"
    assert escape(plain) is plain


# Every code point of the BMP and every 7th beyond, surrogates included. The low surrogates
# come before the high ones: JSON reads an escaped high one followed by a low one as a pair.
EVERY_CODE_POINT = "".join(map(chr, [*range(0xd800), *range(0xdc00, 0xe000),
                                     *range(0xd800, 0xdc00), *range(0xe000, 0x10000),
                                     *range(0x10000, 0x110000, 7)]))


def test_escape_every_code_point():
    escaped = escape(EVERY_CODE_POINT)
    assert escaped.isprintable() and len(escaped.splitlines()) == 1
    assert unescape(escaped) == EVERY_CODE_POINT


def test_json_string_every_code_point():
    literal = json_string(EVERY_CODE_POINT)
    assert literal.isprintable() and len(literal.splitlines()) == 1
    assert json.loads(literal) == EVERY_CODE_POINT


@pytest.mark.parametrize("hostile", HOSTILE)
def test_json_string_hostile(hostile):
    literal = json_string(f"a{hostile}b")
    assert literal.isprintable() and len(literal.splitlines()) == 1
    assert json.loads(literal) == f"a{hostile}b"


def test_json_string_outside_the_bmp_is_a_surrogate_pair():
    assert json_string("\U000e0001") == '"\\udb40\\udc01"'
    assert json_string("\U0001f600") == '"\U0001f600"'  # printable: kept as it is


# -- every atom -----------------------------------------------------------------------------------

def render(spec, env=None, status=200, sent=1234, seconds=1.5, headers=RESPONSE_HEADERS):
    return compile_format(spec)(env or environ(), status, sent, seconds, headers)


def test_every_atom():
    keys = list(ATOMS)
    line = render("|".join(f"%({key})s" for key in keys),
                  environ(REMOTE_USER="alice"), status=404, sent=0, seconds=2.25)
    values = dict(zip(keys, line.split("|")))
    assert re.fullmatch(r"\[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", values.pop("t"))
    assert values == {
        "h": "10.1.2.3", "l": "-", "u": "alice", "r": "GET /a%20b?x=1 HTTP/1.1", "m": "GET",
        "U": "/a b", "q": "x=1", "H": "HTTP/1.1", "s": "404", "B": "0", "b": "0",
        "f": "http://example.com/", "a": "curl/8.0", "T": "2", "D": "2250000", "M": "2250",
        "L": "2.250000", "p": f"<{os.getpid()}>"}


def test_number_atoms_take_number_conversions():
    assert render("%(s)d %(B)05d %(D)x %(T).1f", seconds=0.000255) == "200 01234 ff 0.0"


def test_keyed_atoms_request_response_environ():
    line = render("%({X-Request-Id}i)s|%({x-request-id}i)s|%({Content-Type}i)s|"
                  "%({content-type}o)s|%({SET-COOKIE}o)s|%({X-Missing}o)s|"
                  "%({wsgi.url_scheme}e)s|%({remote_port}e)s|%({REMOTE_PORT}e)s|"
                  "%({NOPE}e)s|%({X-Missing}i)s")
    assert line.split("|") == ["req-7", "req-7", "text/plain", "text/html", "a=1, b=2", "-",
                               "https", "50123", "50123", "-", "-"]


def test_environ_atom_of_a_non_text_value():
    assert render("%({wsgi.version}e)s %({n}e)s", environ(n=7, **{"wsgi.version": (1, 0)})) \
        == "(1, 0) 7"


def test_response_headers_default_to_none_given():
    assert compile_format("%({X-Trace}o)s")(environ(), 200, 0, 0.0) == "-"


@pytest.mark.parametrize("value, user", [
    ("Basic " + base64.b64encode(b"bob:secret").decode(), "bob"),
    ("basic " + base64.b64encode(b"b\xc3\xb6b:x:y").decode(), "b\u00f6b"),
    ("Basic " + base64.b64encode(b"nocolon").decode(), "nocolon"),
    ("Basic !!!not-base64", "-"),
    ("Basic " + base64.b64encode(b"\xff:x").decode(), "-"),  # not UTF-8
    ("Bearer abc", "-"),
])
def test_user_from_basic_auth(value, user):
    # RFC 7617 §2 user-id; like gunicorn, an unverified name (the app decides who it is).
    assert render("%(u)s", environ(HTTP_AUTHORIZATION=value)) == user


def test_remote_user_wins_over_basic_auth():
    auth = "Basic " + base64.b64encode(b"bob:x").decode()
    assert render("%(u)s", environ(HTTP_AUTHORIZATION=auth, REMOTE_USER="carol")) == "carol"


def test_gunicorn_default_format_unchanged():
    line = render(GUNICORN_DEFAULT, environ(REMOTE_USER="alice"), status=201, sent=5)
    match = GUNICORN_LINE.fullmatch(line)
    assert match, line
    assert match.group(1, 2, 3, 5, 6, 7, 8, 9) == (
        "10.1.2.3", "-", "alice", "GET /a%20b?x=1 HTTP/1.1", "201", "5",
        "http://example.com/", "curl/8.0")


def test_missing_values_are_dashes():
    bare = {"REQUEST_METHOD": "HEAD", "PATH_INFO": "/x", "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.0"}
    # An empty query is written empty, as gunicorn does; '-' only when it is not known.
    assert render('%(h)s %(u)s "%(r)s" [%(q)s] "%(f)s" "%(a)s" %({X}i)s', bare) == \
        '- - "HEAD /x HTTP/1.0" [] "-" "-" -'
    assert render("[%(q)s]", {"REMOTE_ADDR": "::1"}) == "[-]"


# -- hostile text in every request-controlled atom -----------------------------------------------

def hostile_environ(hostile):
    return environ(PATH_INFO=f"/p{hostile}", RAW_URI=f"/p{hostile}?q{hostile}",
                   QUERY_STRING=f"q{hostile}", HTTP_USER_AGENT=f"ua{hostile}",
                   HTTP_REFERER=f"ref{hostile}", HTTP_X_REQUEST_ID=f"id{hostile}",
                   REQUEST_METHOD=f"GE{hostile}T", REMOTE_USER=f"u{hostile}",
                   custom=f"e{hostile}")


HOSTILE_FORMAT = (GUNICORN_DEFAULT + ' %(m)s %(U)s %(q)s "%({X-Request-Id}i)s" '
                  '"%({X-Out}o)s" "%({custom}e)s"')


@pytest.mark.parametrize("hostile", HOSTILE)
def test_text_format_cannot_be_split_or_forged(hostile):
    line = render(HOSTILE_FORMAT, hostile_environ(hostile),
                  headers=[("X-Out", f"o{hostile}")])
    assert len(line.splitlines()) == 1 and line.isprintable()
    match = GUNICORN_LINE.match(line)  # the quoted fields still parse as such
    assert match, line
    assert unescape(match.group(9)) == f"ua{hostile}"
    assert unescape(match.group(5)) == f"GE{hostile}T /p{hostile}?q{hostile} HTTP/1.1"


@pytest.mark.parametrize("hostile", HOSTILE)
def test_json_preset_cannot_be_split_or_forged(hostile):
    line = render("json", hostile_environ(hostile))
    assert len(line.splitlines()) == 1 and line.isprintable()
    entry = json.loads(line)
    assert entry["user_agent"] == f"ua{hostile}"
    assert entry["path"] == f"/p{hostile}"
    assert entry["request"] == f"GE{hostile}T /p{hostile}?q{hostile} HTTP/1.1"
    assert entry["remote_user"] == f"u{hostile}"


def test_json_preset_has_every_field():
    line = render("json", environ(HTTP_AUTHORIZATION="Basic " +
                                  base64.b64encode(b"bob:pw").decode()),
                  status=503, sent=17, seconds=0.25)
    entry = json.loads(line)
    assert list(entry) == list(JSON_FIELDS)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", entry.pop("time"))
    assert entry == {
        "remote_addr": "10.1.2.3", "remote_user": "bob", "request": "GET /a%20b?x=1 HTTP/1.1",
        "method": "GET", "path": "/a b", "query": "x=1", "protocol": "HTTP/1.1",
        "status": 503, "bytes": 17, "referer": "http://example.com/",
        "user_agent": "curl/8.0", "duration_us": 250000, "pid": os.getpid()}


def test_json_preset_unknown_values_are_null():
    entry = json.loads(compile_format("json")({"REMOTE_ADDR": "::1"}, 400, 0, 0.0))
    assert entry["remote_addr"] == "::1" and entry["status"] == 400
    assert entry["user_agent"] is None and entry["request"] is None
    assert entry["remote_user"] is None


# -- bad formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, message", [
    ("%(x)s", "access-log-format: unknown key 'x' (known: h l u t r m U q H s B b f a T "),
    ("%(h)s %(zz)d", "access-log-format: unknown key 'zz'"),
    ("%({}i)s", "access-log-format: unknown key '{}i'"),
    ("%({X-Id}z)s", "access-log-format: unknown key '{X-Id}z'"),
    ("%(h)", "access-log-format: '%(h)' is not a valid format: incomplete format"),
    ("%(h)d", "access-log-format: '%(h)d' is not a valid format: %d format: a real number"),
    ("%(a)c", "access-log-format: '%(a)c' is not a valid format: %c requires"),
    ("%(h)s %s", "access-log-format: '%(h)s %s' has a '%' without an atom name"),
    ("100% %(s)s", "access-log-format: '100% %(s)s' has a '%' without an atom name"),
    ("%(s)s 100%", "access-log-format: '%(s)s 100%' has a '%' without an atom name"),
    ("", "access-log-format: is empty"),
    ("%(s)*d", "access-log-format: '%(s)*d' is not a valid format"),
    ("jsonl", "access-log-format: 'jsonl' has no atom"),
    ("100%% done", "access-log-format: '100%% done' has no atom"),
])
def test_bad_formats_name_the_problem(fmt, message):
    with pytest.raises(ConfigError) as caught:
        compile_format(fmt)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_literal_percent():
    assert render("100%% %(s)s done, %%(h)s stays") == "100% 200 done, %(h)s stays"


@pytest.mark.parametrize("preset", ["json", "JSON", " Json "])
def test_json_preset_name(preset):
    json.loads(render(preset))


@pytest.mark.parametrize("source", ["cli", "env", "file"])
def test_bad_format_is_refused_when_the_config_loads(tmp_path, source):
    cli, env = {}, {}
    if source == "cli":
        cli["access_log_format"] = "%(h)s %(nope)s"
    elif source == "env":
        env["GREENSERVE_ACCESS_LOG_FORMAT"] = "%(h)s %(nope)s"
    else:
        path = tmp_path / "g.toml"
        path.write_text("access-log-format = '%(h)s %(nope)s'\n")
        cli["config"] = str(path)
    with pytest.raises(ConfigError, match=r"^access-log-format: unknown key 'nope'"):
        load_config(cli=cli, environ=env)


def test_good_formats_load():
    assert load_config(cli={"access_log_format": "json"}).access_log_format == "json"
    assert load_config(cli={"access_log_format": GUNICORN_DEFAULT}).access_log_format == \
        GUNICORN_DEFAULT


# -- rejected requests ----------------------------------------------------------------------

@pytest.fixture
def lines():
    """What an AccessLog writes, captured on a private logger."""
    logger = logging.getLogger("greenserve.test-formats")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    captured = []
    handler = logging.Handler()
    handler.emit = lambda record: captured.append(record.getMessage())
    logger.addHandler(handler)
    yield logger, captured
    logger.removeHandler(handler)


def test_rejected_with_a_request_line(lines):
    logger, out = lines
    log = AccessLog('%(h)s "%(r)s" %(m)s %(U)s %(q)s %(H)s %(s)s %(b)s "%(a)s" '
                    '%({remote_port}e)s', logger)
    log.rejected("10.0.0.9", 431, 97, b"GET /a%2Fb\xe9?x=1 HTTP/1.1\r\nHost: x\r\n",
                 remote_port=4444)
    assert out == ['10.0.0.9 "GET /a%2Fb\xe9?x=1 HTTP/1.1" GET /a/b\xe9 x=1 HTTP/1.1 431 97 '
                   '"-" 4444']


@pytest.mark.parametrize("request_line, shown", [
    (None, "-"),
    (b"", "-"),
    (b"\x16\x03\x01\x02\x00\x01", "\\x16\\x03\\x01\\x02\\x00\\x01"),  # TLS to a plain port
    (b"GET /x\x85y HTTP/1.1", "GET /x\\x85y HTTP/1.1"),
    (b"GET  /two-spaces HTTP/1.1", "GET  /two-spaces HTTP/1.1"),
    (b"GET /\x1b[2J\"forged\" HTTP/1.1\r\n", 'GET /\\x1b[2J\\"forged\\" HTTP/1.1'),
    ("BREW /pot HTCPCP/1.0", "BREW /pot HTCPCP/1.0"),
])
def test_rejected_lines_are_escaped(lines, request_line, shown):
    logger, out = lines
    AccessLog('"%(r)s" %(s)s', logger).rejected("::1", 400, 0, request_line)
    assert out == [f'"{shown}" 400']


def test_rejected_long_line_is_cut(lines):
    logger, out = lines
    target = "/" + "a" * 100_000
    AccessLog("%(r)s|%(U)s", logger).rejected("::1", 414, 0, f"GET {target} HTTP/1.1".encode())
    (line,) = out
    assert line == ("GET " + target)[:REJECTED_LINE_LIMIT] + "...|-"


def test_rejected_json(lines):
    logger, out = lines
    AccessLog("json", logger).rejected("10.0.0.9", 505, 64, b"GET / HTTP/9.9\r\n",
                                       duration_seconds=0.5)
    entry = json.loads(out[0])
    assert (entry["request"], entry["status"], entry["bytes"], entry["protocol"]) == \
        ("GET / HTTP/9.9", 505, 64, "HTTP/9.9")
    assert entry["duration_us"] == 500000 and entry["user_agent"] is None


def test_rejected_environ_without_a_line():
    assert rejected_environ("1.2.3.4") == {"REMOTE_ADDR": "1.2.3.4"}


# -- a real server -------------------------------------------------------------------------

class WaitingLines(logging.Handler):
    """Collects log messages; ``wait(n)`` returns once n have arrived (or fails)."""

    def __init__(self):
        super().__init__()
        self.lines = []
        self.changed = threading.Condition()

    def emit(self, record):
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait(self, count, timeout=WAIT):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.lines) >= count, timeout), self.lines
            return list(self.lines)


@pytest.fixture
def access_lines():
    handler = WaitingLines()
    saved = access_logger.level, access_logger.propagate
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False
    yield handler
    access_logger.removeHandler(handler)
    access_logger.setLevel(saved[0])
    access_logger.propagate = saved[1]


def hello(environ, start_response):
    body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def exchange(srv, raw):
    with srv.connect() as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(WAIT)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


HOSTILE_REQUEST = (
    b"GET /p%0Aq%0d%C2%85%E2%80%A8%22?x=%1b[31m HTTP/1.1\r\nHost: example\r\n"
    b"User-Agent: ua\x85 127.0.0.1 - - [01/Jan/2000:00:00:00 +0000] \"GET /forged\"\x9b\r\n"
    b"Referer: \x9b2J\xc2\x9b31m\r\n"  # RFC 9110 §5.5 lets obs-text through, C0 not
    b"Authorization: Basic " + base64.b64encode(b"eve\n:pw") + b"\r\n"
    b"Connection: close\r\n\r\n")


def test_real_server_gunicorn_default_format(serve, access_lines):
    with serve(hello, access_log="-", access_log_format=GUNICORN_DEFAULT) as srv:
        assert exchange(srv, HOSTILE_REQUEST).startswith(b"HTTP/1.1 200 ")
        (line,) = access_lines.wait(1)
    assert len(line.splitlines()) == 1 and line.isprintable()
    match = GUNICORN_LINE.fullmatch(line)
    assert match, line
    host, ident, user, _, request, status, sent, referer, agent = match.groups()
    assert (host, ident, status, sent) == ("127.0.0.1", "-", "200", "5")
    assert unescape(user) == "eve\n"
    assert request == "GET /p%0Aq%0d%C2%85%E2%80%A8%22?x=%1b[31m HTTP/1.1"
    assert unescape(referer) == "\x9b2J\xc2\x9b31m"
    # Header bytes reach the environ as latin-1; \x85 and \x9b are C1 controls there.
    assert unescape(agent) == \
        'ua\x85 127.0.0.1 - - [01/Jan/2000:00:00:00 +0000] "GET /forged"\x9b'


@pytest.mark.parametrize("pieces", [1, 320], ids=["one piece", "streamed"])
def test_the_byte_count_of_a_response_cut_short_is_what_was_sent(serve, access_lines, pieces):
    # gunicorn's %(b)s is the response's length as sent: a client that stopped reading and was
    # dropped at the send timeout did not get the 20 MiB the app framed.
    size = 20 * 1024 * 1024

    def big(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return [b"x" * (size // pieces)] * pieces

    with serve(big, send_timeout=0.5, access_log="-", access_log_format="%(s)s %(b)s") as srv, \
            srv.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (line,) = access_lines.wait(1, timeout=10)  # the server gave up on the stalled reader
    status, sent = line.split()
    # What the kernel took: its send buffer (a few MiB at most), never the whole body.
    assert status == "200" and 0 < int(sent) < size // 2, line


def test_real_server_json(serve, access_lines):
    with serve(hello, access_log="-", access_log_format="json") as srv:
        assert exchange(srv, HOSTILE_REQUEST).startswith(b"HTTP/1.1 200 ")
        exchange(srv, b"GET /plain HTTP/1.0\r\n\r\n")
        first, second = access_lines.wait(2)
    for line in (first, second):
        assert len(line.splitlines()) == 1 and line.isprintable()
    entry = json.loads(first)
    assert entry["path"] == "/p\nq\r\xc2\x85\xe2\x80\xa8\""  # PATH_INFO: bytes as latin-1
    assert entry["query"] == "x=%1b[31m"
    assert entry["remote_user"] == "eve\n" and entry["status"] == 200
    assert entry["bytes"] == 5 and entry["remote_addr"] == "127.0.0.1"
    assert json.loads(second)["request"] == "GET /plain HTTP/1.0"


# -- the command line ---------------------------------------------------------------------

APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''


def greenserve(tmp_path, *args, env=None):
    (tmp_path / "webapp.py").write_text(textwrap.dedent(APP))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GREENSERVE_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                              environment.get("PYTHONPATH")]))
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "greenserve", "webapp:app", "-b",
                           "127.0.0.1:0", *args], cwd=tmp_path, env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=WAIT)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_unknown_atom_is_one_line_and_exit_2(tmp_path, workers):
    result = greenserve(tmp_path, "-w", workers, "--access-log", "-",
                        "--access-log-format", '%(h)s "%(r)s" %(x)s')
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "greenserve: error: access-log-format: unknown key 'x' (known: "
        + " ".join(ATOMS) + ", {Header}i, {Header}o, {VARIABLE}e, or the preset 'json')"]


def test_cli_bad_format_from_the_environment(tmp_path):
    result = greenserve(tmp_path, env={"GREENSERVE_ACCESS_LOG_FORMAT": "%(h)s %"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "greenserve: error: access-log-format: '%(h)s %' has a '%' without an atom name "
        "(write %(h)s for an atom, %% for a literal %)"]
