"""The compiled speed-ups and the pure-Python switch, in real processes.

``GREENSERVE_PURE=1`` loads every module from its source; without it the compiled modules an
install built beside the sources load instead. Both paths must answer every request with the
same bytes. CI sets ``GREENSERVE_EXPECT_COMPILED=1`` so that a skipped or failed compile fails
the run instead of leaving the compiled path untested.
"""

import importlib.machinery
import json
import os
import re
import socket
import textwrap

import pytest

import greenserve
import procs
from greenserve.speedups import HOT_MODULES

SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)

# Prints, for each hot module, the file it was loaded from, greenserve.compiled(), and the
# compiled modules older than their source.
PROBE = f"""
import importlib, json, greenserve, greenserve.speedups
files = {{name: importlib.import_module(name).__file__ for name in {list(HOT_MODULES)!r}}}
print(json.dumps({{"files": files, "compiled": greenserve.compiled(),
                  "stale": greenserve.speedups.stale()}}))
"""


def probe(pure):
    """What a fresh interpreter (the one subprocess tests run) loads, pure or by default."""
    extra = {"GREENSERVE_PURE": "1"} if pure else {}
    result = procs.run([procs.sys.executable, "-c", PROBE], env=procs.environment(**extra))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def built():
    """The hot modules that load compiled by default here (empty: nothing was built)."""
    return probe(pure=False)["compiled"]


def needs_build(built):
    if not built:
        pytest.skip("nothing compiled here (no C compiler or Python headers at install, or "
                    "GREENSERVE_NO_COMPILE): the compiled path cannot be checked")


def test_ci_expects_every_hot_module_compiled(built):
    if not os.environ.get("GREENSERVE_EXPECT_COMPILED"):
        pytest.skip("GREENSERVE_EXPECT_COMPILED is not set (CI sets it)")
    missing = [name for name in HOT_MODULES if name not in built]
    assert not missing, (f"GREENSERVE_EXPECT_COMPILED is set but these modules run pure "
                         f"Python: {missing}; the install skipped or failed their compile "
                         f"(see pip's output: a C compiler and Python.h are needed)")
    # And nothing else runs compiled (a compiled file an older build left behind).
    assert built == list(HOT_MODULES)


def test_this_process_runs_the_path_asked_for():
    # For CI, which runs some test files both ways: did this run load what it asked for?
    if os.environ.get("GREENSERVE_PURE", "") not in ("", "0"):
        assert greenserve.compiled() == []
    elif os.environ.get("GREENSERVE_EXPECT_COMPILED"):
        assert greenserve.compiled() == list(HOT_MODULES)
    else:
        pytest.skip("neither GREENSERVE_PURE nor GREENSERVE_EXPECT_COMPILED is set")


def test_pure_switch_loads_every_module_from_source():
    loaded = probe(pure=True)
    assert loaded["compiled"] == []
    for name, path in loaded["files"].items():
        assert path.endswith(".py"), (name, path)


def test_compiled_modules_load_by_default(built):
    needs_build(built)
    files = probe(pure=False)["files"]
    sources = probe(pure=True)["files"]
    for name, path in files.items():
        # compiled() tells the truth, and the switch picks the source beside the compiled file.
        assert path.endswith(SUFFIXES) == (name in built), (name, path)
        assert os.path.dirname(path) == os.path.dirname(sources[name]), (path, sources[name])


def test_no_compiled_module_is_older_than_its_source(built):
    # An editable install keeps running the compiled old code after its source is edited:
    # the tests would then test that old code.
    needs_build(built)
    assert probe(pure=False)["stale"] == [], (
        "these compiled modules are older than their source: run `pip install -e .` again "
        "(or test the source with GREENSERVE_PURE=1)")


# -- the same bytes on both paths ------------------------------------------------------------

APP = textwrap.dedent('''
    """A few routes for the byte comparison; ``app`` is validated, ``broken`` is not (its
    mistakes are greenserve's to catch, and wsgiref.validate would catch them first)."""
    from wsgiref.validate import validator

    def routes(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/echo":
            body = b"".join(iter(lambda: environ["wsgi.input"].read(7), b""))
            start_response("201 Created", [("Content-Type", "application/octet-stream"),
                                           ("Content-Length", str(len(body)))])
            return [body]
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (part for part in [b"one ", b"", b"two ", b"three"])
        if path == "/environ":
            keys = ("REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
                    "CONTENT_LENGTH", "HTTP_X_FOLDED", "HTTP_HOST", "HTTP_ACCEPT")
            body = repr([(key, environ.get(key)) for key in keys]).encode()
            start_response("200 OK", [("Content-Length", str(len(body)))])
            return [body]
        body = b"Hello, World!"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    app = validator(routes)

    def broken(environ, start_response):
        if environ["PATH_INFO"] == "/bad-status":
            start_response("2000 OK", [])
        elif environ["PATH_INFO"] == "/bad-field":
            start_response("200 OK", [("X-Split", "a\\r\\nInjected: yes")])
        else:
            start_response("200 OK", [("Content-Length", "5")])
            return [b"too long"]
        return [b""]
''')

GOOD = [
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /environ?a=1&b=%20 HTTP/1.0\r\nAccept: */*\r\n\r\n",
    b"GET http://example.com/environ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n"
    b"Connection: close\r\n\r\nabc",
    b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /stream HTTP/1.0\r\n\r\n",
    b"BREW /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # any token method
    # Pipelined: two answers in order, then the close the second one asks for.
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /environ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]

BAD = [
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                      # two Host fields
    b"GET / HTTP/1.1\r\n\r\n",                                            # no Host
    b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # TE in 1.0
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",                       # both framings
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",   # signed length
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # chunk size
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",            # obs-fold
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n",                  # space in a name
    b"GET / HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",                     # NUL in a value
    b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",                             # control in target
    b"GET / HTTP/1.1\nHost: x\n\n",                                       # bare LF
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",                                 # version: 505
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",  # head too large
    b"GET\r\nHost: x\r\n\r\n",                                               # no target
]

BROKEN = [b"GET /bad-status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
          b"GET /bad-field HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
          b"GET /short HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]

DATE = re.compile(rb"\r\nDate: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


def exchange(address, data):
    """Send ``data`` on a fresh connection; everything received until the server closes,
    with each Date value (the clock, not the path) replaced by a fixed mark."""
    with socket.create_connection(address, timeout=procs.WAIT) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:  # an error answer, then a close with bytes unread
                break
            if not chunk:
                break
            chunks.append(chunk)
    received = b"".join(chunks)
    marked, dates = DATE.subn(b"\r\nDate: (pinned)\r\n", received)
    assert dates >= 1, received
    return marked


@pytest.fixture(scope="module")
def servers(tmp_path_factory, built):
    """Two greenserve processes serving ``app`` and two ``broken``: pure and default."""
    needs_build(built)
    folder = tmp_path_factory.mktemp("compiled_app")
    (folder / "compared_app.py").write_text(APP)
    found = {}
    with procs.Processes() as started:
        for pure in (True, False):
            env = procs.environment([folder], **({"GREENSERVE_PURE": "1"} if pure else {}))
            for app in ("app", "broken"):
                server = started.greenserve(f"compared_app:{app}", "-b", "127.0.0.1:0",
                                            "--keep-alive", "2", env=env)
                found[pure, app] = server
        for (pure, app), server in found.items():
            banner = server.wait_for(r"greenserve \S+ \(([^)]*)\) serving")
            assert (banner[1] == "pure Python") == pure, banner[0]
        yield {key: server.address() for key, server in found.items()}


@pytest.mark.parametrize("data", GOOD + BAD, ids=lambda data: repr(data[:40]))
def test_same_bytes_on_both_paths(servers, data):
    pure = exchange(servers[True, "app"], data)
    compiled = exchange(servers[False, "app"], data)
    assert pure.startswith(b"HTTP/1.")
    assert compiled == pure


@pytest.mark.parametrize("data", BROKEN, ids=lambda data: repr(data[:24]))
def test_same_bytes_for_app_mistakes(servers, data):
    pure = exchange(servers[True, "broken"], data)
    assert exchange(servers[False, "broken"], data) == pure


def test_bad_requests_are_refused(servers):
    # The comparison above means something only if the bad requests really are refused.
    for data in BAD:
        status = exchange(servers[False, "app"], data).split(b" ", 2)[1]
        assert status.startswith(b"4") or status == b"505", data[:60]
