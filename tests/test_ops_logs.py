"""Logs an operator relies on, through the real command line: gunicorn's default access-log
format, header atoms, the JSON preset under hostile input, a line for requests the parser
refused, and app tracebacks and wsgi.errors in the --error-log file."""

import json
import socket

import pytest

import procs
from conftest import recv_until_closed

GUNICORN_DEFAULT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


@pytest.fixture
def run(tmp_path):
    with procs.Processes() as started:
        def run(*args):
            access = tmp_path / "access.log"
            error = tmp_path / "error.log"
            server = started.greenserve("logging_app:app", "-b", "127.0.0.1:0",
                                        "--access-log", access, "--error-log", error, *args)
            procs.wait_until(lambda: error.exists() and "Listening at" in error.read_text(),
                             what="the start-up line")
            match = procs.LISTENING.search(error.read_text())
            return server, (match["host"], int(match["port"])), access, error
        yield run


def send(address, raw):
    with socket.create_connection(address, timeout=procs.WAIT) as sock:
        sock.sendall(raw)
        return recv_until_closed(sock, procs.WAIT)


def lines_of(path, count):
    procs.wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= count,
                     what=f"{count} line(s) in {path.name}")
    return path.read_text().splitlines()


def test_gunicorn_default_format_and_header_atoms(run):
    _, address, access, _ = run("--access-log-format",
                                GUNICORN_DEFAULT + ' %({x-request-id}i)s %({X-Request-Id}o)s')
    send(address, b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nUser-Agent: tester\r\n"
                  b"X-Request-Id: r-42\r\nConnection: close\r\n\r\n")
    (line,) = lines_of(access, 1)
    assert line.startswith("127.0.0.1 - - [")
    assert line.endswith('"GET /a?b=1 HTTP/1.1" 200 2 "-" "tester" r-42 r-42')


def test_json_preset_survives_hostile_paths_and_headers(run):
    _, address, access, _ = run("--access-log-format", "json")
    # NEL, CSI, LINE SEPARATOR as UTF-8 (obs-text the parser lets through), quote, backslash.
    hostile = "\u0085\u009b[31m\u2028\"\\"
    send(address, b"GET /%0Aforged%20line HTTP/1.1\r\nHost: x\r\nUser-Agent: " +
         hostile.encode("utf-8") + b"\r\nConnection: close\r\n\r\n")
    (line,) = lines_of(access, 1)
    assert len(access.read_text().splitlines()) == 1  # str.splitlines() splits on NEL and U+2028 too
    entry = json.loads(line)
    assert entry["status"] == 200
    assert "forged" in entry["request"]


def test_requests_the_parser_refuses_are_logged(run):
    _, address, access, _ = run()
    assert send(address, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n").startswith(
        b"HTTP/1.1 400 ")
    assert send(address, b"GET / HTTP/3.0\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 505 ")
    lines = lines_of(access, 2)
    assert '" 400 ' in lines[0] and '" 505 ' in lines[1]


def test_app_traceback_and_wsgi_errors_reach_the_error_log_file(run):
    _, address, _, error = run()
    assert send(address, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                ).startswith(b"HTTP/1.1 500 ")
    assert send(address, b"GET /errors HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                ).startswith(b"HTTP/1.1 200 ")
    procs.wait_until(lambda: "a line the app wrote to wsgi.errors" in error.read_text(),
                     what="the wsgi.errors line")
    text = error.read_text()
    assert "Traceback (most recent call last)" in text
    assert "Boom: the app failed on purpose" in text
