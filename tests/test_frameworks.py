"""Real framework apps (Flask, Django, Bottle) served by greenserve, driven by real clients.

Each example app is started through the real command line (``python -m greenserve APP -b
127.0.0.1:0``) in a subprocess, exactly as a user would run it, and exercised with
requests/urllib3, http.client and curl. A second, in-process test per framework runs the
same app under ``wsgiref.validate`` (the ``serve`` fixture), which catches PEP 3333
violations on either side of the WSGI boundary.
"""

import hashlib
import http.client
import importlib
import json
import random
import signal
import socket
import subprocess
import time

import pytest
import requests
from conftest import read_head, read_response

import procs
from procs import WAIT

CURL = "/usr/bin/curl"

# framework -> (module to import to know it is installed, APP argument for greenserve)
FRAMEWORKS = {
    "flask": ("flask", "examples.flask_app:app"),
    "django": ("django", "examples.django_site.wsgi:application"),
    "bottle": ("bottle", "examples.bottle_app:app"),
}


def require(framework):
    """Skip (with the reason) when the framework is not installed."""
    pytest.importorskip(FRAMEWORKS[framework][0],
                        reason=f"{framework} is not installed (pip install -e '.[test]')")


class LiveServer:
    """A greenserve subprocess serving one example app."""

    def __init__(self, framework, process):
        self.framework = framework
        self.process = process
        self.host, self.port = process.address()
        self.url = f"http://{self.host}:{self.port}"


# The Django example refuses to start without a key (a deployment sets its own).
TEST_SECRET_KEY = "test-only-not-a-secret"


def start_greenserve(processes, framework):
    """``python -m greenserve APP -b 127.0.0.1:0`` for the framework's example app."""
    require(framework)
    process = processes.greenserve(FRAMEWORKS[framework][1], "-b", "127.0.0.1:0",
                                   env=procs.environment(DJANGO_SECRET_KEY=TEST_SECRET_KEY))
    return LiveServer(framework, process)


def assert_clean_stop(live):
    """SIGTERM stops the server gracefully: exit status 0 and no traceback in its log."""
    live.process.signal(signal.SIGTERM)
    code = live.process.exit_code()
    log = live.process.text()
    assert code == 0, f"greenserve exited with {code} after SIGTERM:\n{log}"
    assert "Traceback" not in log, f"the server logged a traceback:\n{log}"


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def live(request):
    """One greenserve process per framework, shared by that framework's tests.

    Teardown is part of the test: SIGTERM must stop it gracefully with exit code 0.
    """
    with procs.Processes() as processes:
        server = start_greenserve(processes, request.param)
        yield server
        assert_clean_stop(server)


def payload(size=300_000):
    """Deterministic binary content that is hard for a multipart parser: every byte value,
    CRLFs and things that look like boundaries, at unaligned offsets."""
    rng = random.Random(size)
    data = bytearray(rng.randbytes(size))
    marker = b"\r\n--\r\n\r\n------WebKitFormBoundary\r\n\x00\xff"
    for offset in range(1000, size - 100, 37_003):
        data[offset:offset + len(marker)] = marker
    return bytes(data)


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory):
    data = payload()
    path = tmp_path_factory.mktemp("upload") / "data file.bin"
    path.write_bytes(data)
    return path, data


def curl(*args):
    """Run curl (silent, errors shown, bounded); return the CompletedProcess."""
    result = subprocess.run([CURL, "-sS", "--max-time", str(WAIT), *args],
                            capture_output=True, timeout=WAIT + 5)
    assert result.returncode == 0, f"curl failed ({result.returncode}): {result.stderr!r}"
    return result


def check_upload(answer, framework, data, filename, fields=None):
    assert answer["framework"] == framework
    assert answer["filename"] == filename
    assert answer["size"] == len(data)
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["fields"] == (fields or {})


def produced_times(lines):
    """The production timestamps the /stream endpoint puts in each line."""
    return [float(line.split()[2]) for line in lines]


STREAM_COUNT, STREAM_DELAY = 4, 0.5  # lines, seconds between them


def check_live_stream(lines, arrivals, count, delay):
    """The lines are the app's, in order, and each arrived as soon as it was produced."""
    assert [line.split()[:2] for line in lines] == [["chunk", str(i)] for i in range(count)]
    produced = produced_times(lines)
    # The first line reached the client long before the app produced the last one: the
    # server did not buffer the response (with delay 0.5 and 4 lines, 1.5 s apart).
    assert arrivals[0] < produced[-1] - 2 * delay, (arrivals, produced)
    # And each line came on its own: no earlier than it was produced (the 0.05 s allow for
    # the clocks' resolution), and before the app made the next one (delivery takes
    # milliseconds; the delay is 0.5 s).
    for arrived, made in zip(arrivals, produced):
        assert made - 0.05 <= arrived < made + delay, (arrivals, produced)


# ---- GET, POST form, JSON ---------------------------------------------------------------


def test_get_html_and_text(live):
    page = requests.get(live.url + "/", timeout=WAIT)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    assert "<h1>Hello from" in page.text

    text = requests.get(live.url + "/text", timeout=WAIT)
    assert text.status_code == 200
    assert text.headers["Content-Type"].startswith("text/plain")
    assert text.text == f"hello from {live.framework}\n"
    assert text.headers["Server"].startswith("greenserve")


def test_post_form(live):
    form = {"name": "Ada Lovelace", "city": "Zürich & Genève", "empty": "", "eq": "a=b&c"}
    response = requests.post(live.url + "/form", data=form, timeout=WAIT)
    assert response.status_code == 200
    assert response.json() == {"framework": live.framework, "form": form}


def test_post_form_with_curl(live):
    result = curl("--data-urlencode", "name=Grace Hopper", "--data-urlencode", "lang=COBOL ✓",
                  live.url + "/form")
    assert json.loads(result.stdout)["form"] == {"name": "Grace Hopper", "lang": "COBOL ✓"}


DOCUMENT = {"numbers": [1, 2, 3.5, -4], "text": "snow ☃ and \"quotes\"\n",
            "nested": {"list": [None, True, False], "empty": {}}}


def test_json_round_trip_requests(live):
    response = requests.post(live.url + "/json", json=DOCUMENT, timeout=WAIT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {"framework": live.framework, "echo": DOCUMENT, "sum": 2.5}


def test_json_round_trip_http_client_chunked(live):
    """A JSON body sent with Transfer-Encoding: chunked, in uneven pieces."""
    raw = json.dumps(DOCUMENT).encode()
    pieces = [raw[:1], raw[1:10], raw[10:]]
    conn = http.client.HTTPConnection(live.host, live.port, timeout=WAIT)
    try:
        conn.request("POST", "/json", body=iter(pieces), encode_chunked=True,
                     headers={"Content-Type": "application/json",
                              "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body
    assert json.loads(body) == {"framework": live.framework, "echo": DOCUMENT, "sum": 2.5}


# ---- uploads ------------------------------------------------------------------------------


def test_multipart_upload_requests(live, upload_file):
    path, data = upload_file
    with open(path, "rb") as handle:
        response = requests.post(live.url + "/upload", timeout=WAIT,
                                 files={"file": (path.name, handle, "application/octet-stream")},
                                 data={"note": "from requests"})
    assert response.status_code == 200, response.text[:500]
    check_upload(response.json(), live.framework, data, path.name, {"note": "from requests"})


def test_multipart_upload_curl_expect_continue(live, upload_file):
    """curl waits for "100 Continue" before sending the body; the framework reads it."""
    path, data = upload_file
    result = curl("-v", "-H", "Expect: 100-continue", "-F", f"file=@{path}",
                  "-F", "note=from curl", live.url + "/upload")
    assert b"< HTTP/1.1 100 Continue" in result.stderr, result.stderr.decode("latin-1")
    check_upload(json.loads(result.stdout), live.framework, data, path.name,
                 {"note": "from curl"})


def test_chunked_multipart_upload_curl(live, upload_file):
    """A multipart upload with no Content-Length: the request body is chunked."""
    path, data = upload_file
    result = curl("-v", "-H", "Transfer-Encoding: chunked", "-F", f"file=@{path}",
                  live.url + "/upload")
    stderr = result.stderr.decode("latin-1")
    assert "> Transfer-Encoding: chunked" in stderr and "> Content-Length" not in stderr
    check_upload(json.loads(result.stdout), live.framework, data, path.name)


# ---- streaming responses ------------------------------------------------------------------


def test_streaming_response_requests(live):
    count, delay = STREAM_COUNT, STREAM_DELAY
    lines, arrivals = [], []
    with requests.get(f"{live.url}/stream?n={count}&delay={delay}", stream=True,
                      timeout=WAIT) as response:
        assert response.status_code == 200
        # Unknown length on HTTP/1.1: the server frames it with chunked encoding.
        assert response.headers["Transfer-Encoding"] == "chunked"
        for line in response.iter_lines():
            arrivals.append(time.time())
            lines.append(line.decode())
    check_live_stream(lines, arrivals, count, delay)


def test_streaming_response_curl(live):
    count, delay = STREAM_COUNT, STREAM_DELAY
    proc = subprocess.Popen([CURL, "-sSN", "--max-time", str(WAIT),
                             f"{live.url}/stream?n={count}&delay={delay}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, arrivals = [], []
    try:
        for line in proc.stdout:  # curl -N writes each piece as it arrives
            arrivals.append(time.time())
            lines.append(line)
        assert proc.wait(WAIT) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)
        proc.stdout.close()
        proc.stderr.close()
    check_live_stream(lines, arrivals, count, delay)


# ---- HEAD, keep-alive, redirect, 404 -----------------------------------------------------


def test_head(live):
    get = requests.get(live.url + "/text", timeout=WAIT)
    head = requests.head(live.url + "/text", timeout=WAIT)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    # RFC 9110 §9.3.2: HEAD reports the length a GET would have.
    assert head.headers.get("Content-Length", str(len(get.content))) == str(len(get.content))


def test_keep_alive_reuses_one_connection(live):
    """Several requests of every kind on one http.client connection, in turn.

    http.client drops its socket whenever a response says the connection will close, so the
    same socket object all along proves the server kept it open; and any framing mistake
    (a HEAD body, a short chunked body) would garble the responses that follow.
    """
    conn = http.client.HTTPConnection(live.host, live.port, timeout=WAIT)
    conn.connect()
    sock = conn.sock
    local = sock.getsockname()
    steps = [
        ("GET", "/text", None, {}, 200, f"hello from {live.framework}\n".encode()),
        ("HEAD", "/text", None, {}, 200, b""),
        ("POST", "/form", "a=1&b=two", {"Content-Type": "application/x-www-form-urlencoded"},
         200, None),
        ("GET", "/no/such/page", None, {}, 404, None),
        ("POST", "/json", json.dumps({"numbers": [40, 2]}),
         {"Content-Type": "application/json"}, 200, None),
        ("GET", "/stream?n=3&delay=0", None, {}, 200, None),
        ("GET", "/redirect", None, {}, 302, None),
        ("GET", "/text", None, {}, 200, f"hello from {live.framework}\n".encode()),
    ]
    try:
        for method, target, body, headers, status, expected in steps:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            assert response.status == status, (method, target, data[:300])
            if expected is not None:
                assert data == expected, (method, target)
            if target == "/form":
                assert json.loads(data)["form"] == {"a": "1", "b": "two"}
            if target == "/json":
                assert json.loads(data)["sum"] == 42
            if target.startswith("/stream"):
                assert [line.split()[1] for line in data.decode().splitlines()] == ["0", "1", "2"]
            assert conn.sock is sock, f"connection was closed after {method} {target}"
        assert sock.getsockname() == local
    finally:
        conn.close()


def test_pipelined_requests(live):
    """Four requests in one write, answered in order; the last asks to close."""
    host = f"Host: {live.host}\r\n"
    requests_bytes = (
        "POST /form HTTP/1.1\r\n" + host +
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=1&b=2"
        "GET /text HTTP/1.1\r\n" + host + "\r\n"
        "HEAD /text HTTP/1.1\r\n" + host + "\r\n"
        "GET /nowhere HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n").encode()
    with socket.create_connection((live.host, live.port), timeout=WAIT) as sock:
        sock.sendall(requests_bytes)
        reader = sock.makefile("rb")
        status, _, body, _ = read_response(reader)
        assert (status, json.loads(body)["form"]) == (200, {"a": "1", "b": "2"})
        status, _, text, _ = read_response(reader)
        assert (status, text) == (200, f"hello from {live.framework}\n".encode())
        status, headers, _ = read_head(reader)  # a HEAD response: a head and no body
        assert (status, headers["content-length"]) == (200, str(len(text)))
        status, headers, _, _ = read_response(reader)
        assert status == 404 and headers["connection"] == "close"
        assert reader.read() == b""  # and nothing after it: the server closed


def test_concurrent_streams_stay_separate(live):
    """Two slow streams and a quick request at once: gevent serves them side by side, and
    each stream's lines carry its own request's parameters (request state is per greenlet)."""
    count, delay = STREAM_COUNT, STREAM_DELAY
    tags = ("alpha", "beta")
    responses = {}
    try:
        received = {}
        for tag in tags:  # each returns with the stream's first line on its way
            responses[tag] = requests.get(f"{live.url}/stream?n={count}&delay={delay}&tag={tag}",
                                          stream=True, timeout=WAIT)
            received[tag] = responses[tag].iter_lines()
        results = {tag: [next(received[tag]).decode()] for tag in tags}
        quick = requests.get(live.url + "/text", timeout=WAIT)
        quick_at = time.time()
        for tag in tags:
            results[tag] += [line.decode() for line in received[tag]]
    finally:
        for response in responses.values():
            response.close()

    for tag in tags:
        assert [line.split()[::3] for line in results[tag]] == \
            [["chunk", tag]] * count, results
    made = {tag: produced_times(results[tag]) for tag in tags}
    # Served one after the other, beta would begin only after alpha's last line.
    assert made["beta"][0] < made["alpha"][-1], made
    # The quick request did not wait for the streams: both still had lines to make.
    assert quick.status_code == 200
    assert quick_at < min(made[tag][-1] for tag in tags), (quick_at, made)


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_sigterm_lets_a_stream_finish(framework):
    """SIGTERM in the middle of a streamed response: the response completes, then exit 0."""
    with procs.Processes() as processes:
        live = start_greenserve(processes, framework)
        with requests.get(f"{live.url}/stream?n={STREAM_COUNT}&delay={STREAM_DELAY}",
                          stream=True, timeout=WAIT) as response:
            received = response.iter_lines()
            first = next(received)
            live.process.signal(signal.SIGTERM)
            live.process.wait_for("stopping gracefully")
            stopping_at = time.time()
            rest = list(received)
        lines = [line.decode() for line in [first, *rest]]
        assert [line.split()[1] for line in lines] == [str(i) for i in range(STREAM_COUNT)]
        # The app went on making lines after the server had begun to stop.
        assert produced_times(lines)[-1] > stopping_at
        assert live.process.exit_code() == 0, live.process.text()


def test_redirect(live):
    response = requests.get(live.url + "/redirect", timeout=WAIT)
    assert [r.status_code for r in response.history] == [302]
    assert response.history[0].headers["Location"] in ("/text", live.url + "/text")
    assert response.url == live.url + "/text"
    assert response.text == f"hello from {live.framework}\n"


def test_not_found(live):
    response = requests.get(live.url + "/no/such/page", timeout=WAIT)
    assert response.status_code == 404
    result = curl("-o", "/dev/null", "-w", "%{http_code}", live.url + "/nothing-here")
    assert result.stdout == b"404"


# ---- in process, under wsgiref.validate ---------------------------------------------------


def load_app(framework):
    require(framework)
    module_name, _, attr = FRAMEWORKS[framework][1].partition(":")
    return getattr(importlib.import_module(module_name), attr)


class SizedReads:
    """A wsgi.input proxy that turns read() (to EOF) into read(size) calls.

    With wsgi.input_terminated set, werkzeug reads the body with a bare read(), as that
    extension allows; wsgiref.validate predates it and insists on read(size). This adapts
    only that call, so everything else the validator checks stays checked.
    """

    def __init__(self, stream):
        self._stream = stream

    def read(self, size=-1):
        if size is None or size < 0:
            return b"".join(iter(lambda: self._stream.read(65536), b""))
        return self._stream.read(size)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def sized_reads(app):
    def wrapper(environ, start_response):
        environ["wsgi.input"] = SizedReads(environ["wsgi.input"])
        return app(environ, start_response)
    return wrapper


@pytest.mark.parametrize("framework", list(FRAMEWORKS))
def test_in_process_under_validator(serve, framework, monkeypatch):
    """GET, POST form, JSON (also chunked), HEAD and a stream with the app wrapped in
    wsgiref.validate: an AssertionError from the validator would turn into a 500."""
    monkeypatch.setenv("DJANGO_SECRET_KEY", TEST_SECRET_KEY)  # read as the app is imported
    app = load_app(framework)
    if framework == "flask":
        app = sized_reads(app)
    with serve(app) as srv:  # serve() puts wsgiref.validate outermost, facing the server
        with requests.Session() as session:
            text = session.get(srv.url + "/text", timeout=WAIT)
            assert (text.status_code, text.text) == (200, f"hello from {framework}\n")

            form = session.post(srv.url + "/form", data={"name": "Ada", "x": "é"},
                                timeout=WAIT)
            assert form.status_code == 200, form.text[:500]
            assert form.json()["form"] == {"name": "Ada", "x": "é"}

            doc = session.post(srv.url + "/json", json=DOCUMENT, timeout=WAIT)
            assert doc.status_code == 200, doc.text[:500]
            assert doc.json()["echo"] == DOCUMENT

            chunked = session.post(srv.url + "/json", timeout=WAIT,
                                   data=iter([b'{"numbers": ', b"[1, 2]}"]),
                                   headers={"Content-Type": "application/json"})
            assert chunked.status_code == 200, chunked.text[:500]
            assert chunked.json()["sum"] == 3

            head = session.head(srv.url + "/text", timeout=WAIT)
            assert (head.status_code, head.content) == (200, b"")

            stream = session.get(srv.url + "/stream?n=3&delay=0", timeout=WAIT)
            assert stream.status_code == 200
            assert [line.split()[1] for line in stream.text.splitlines()] == ["0", "1", "2"]

            missing = session.get(srv.url + "/no/such/page", timeout=WAIT)
            assert missing.status_code == 404
