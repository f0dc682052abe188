"""The examples take only bounded work from anonymous clients: each limit proven through the real
command line (``python -m greenserve APP -b 127.0.0.1:0``) with real clients.

Framework examples (Flask, Django, Bottle): request bodies have ceilings (413, and the worker's
peak memory stays flat under a 300 MB body), /stream refuses numbers it cannot bound (400), and
a chunked body sent to a page that does not take one is never read. files.py: uploads are
limited in size and in total, never replace a file unless allowed, never follow a symlink
(not even one swapped in while downloads run), live in a private directory, and partial
uploads of a killed server are removed at the next start.
"""

import fcntl
import hashlib
import http.client
import json
import os
import queue
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import read_response

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
WAIT = 15  # seconds: the bound on every wait for the server or a client

FRAMEWORKS = {
    "flask": ("flask", "examples.flask_app:app"),
    "django": ("django", "examples.django_site.wsgi:application"),
    "bottle": ("bottle", "examples.bottle_app:app"),
}
JSON_LIMIT = 1 << 20  # examples/limits.py: MAX_JSON_BODY
UPLOAD_LIMIT = 10 << 20  # and MAX_UPLOAD_BODY


# -- a greenserve child process ------------------------------------------------------------------

class Served:
    """A greenserve process serving one example on 127.0.0.1 (port read from its log)."""

    def __init__(self, proc, port, lines):
        self.proc = proc
        self.port = port
        self.lines = lines

    def request(self, method, path, body=None, headers=None):
        """(status, headers, body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=WAIT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def connect(self):
        return socket.create_connection((HOST, self.port), timeout=WAIT)

    def peak_rss_kib(self):
        """VmHWM: the most memory the server process (the worker, without -w) ever held."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _environment(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GREENSERVE_", "DJANGO_", "EXAMPLE_FILES_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def _launch(app, env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "greenserve", app, "-b", f"{HOST}:0", "--graceful-timeout", "3"],
        cwd=ROOT, env=_environment(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    lines, ports = [], queue.Queue()

    def drain():  # also keeps the child from ever blocking on a full stderr pipe
        for line in proc.stderr:
            lines.append(line)
            match = re.search(r"Listening at http://127\.0\.0\.1:(\d+)", line)
            if match:
                ports.put(int(match.group(1)))
        ports.put(None)

    threading.Thread(target=drain, daemon=True).start()
    return proc, lines, ports


@contextmanager
def serving(app, env=None):
    """Serve ``app`` for the block; unless the test killed it, SIGTERM must end it with 0."""
    proc, lines, ports = _launch(app, env)
    try:
        try:
            port = ports.get(timeout=WAIT)
        except queue.Empty:
            port = None
        if port is None:
            pytest.fail(f"greenserve {app} did not start:\n{''.join(lines)}")
        yield Served(proc, port, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(WAIT)
                code = "no exit after SIGTERM"
            log = "".join(lines)
            assert code == 0, f"greenserve exited with {code}:\n{log}"
            assert "Traceback" not in log, f"the server logged a traceback:\n{log}"


def refused_start(app, env):
    """(exit status, stderr) of a server that must stop before it listens."""
    proc, lines, ports = _launch(app, env)
    try:
        code = proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(WAIT)
        pytest.fail(f"greenserve {app} kept running:\n{''.join(lines)}")
    ports.get(timeout=WAIT)  # the drain thread has read everything
    return code, "".join(lines)


def require(framework):
    pytest.importorskip(FRAMEWORKS[framework][0], reason=f"{framework} is not installed")


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def framework(request):
    """(name, running server) for each framework example, one process per module."""
    require(request.param)
    with serving(FRAMEWORKS[request.param][1], FRAMEWORK_ENV.get(request.param)) as served:
        yield request.param, served


# The Django example refuses to start without a key (a deployment sets its own).
FRAMEWORK_ENV = {"django": {"DJANGO_SECRET_KEY": "test-only-not-a-secret"}}


def test_django_example_refuses_to_start_without_a_secret_key():
    require("django")
    code, log = refused_start(FRAMEWORKS["django"][1], {})
    assert code == 2, log
    assert log.strip().splitlines()[-1].startswith(
        "greenserve: error: importing 'examples.django_site.wsgi' failed: ImproperlyConfigured: "
        "DJANGO_SECRET_KEY is not set")


def test_django_example_random_key_is_an_explicit_opt_in():
    require("django")
    with serving(FRAMEWORKS["django"][1], {"DJANGO_RANDOM_SECRET_KEY": "1"}) as served:
        assert served.request("GET", "/")[0] == 200
        assert any("using a random SECRET_KEY for this process only" in line
                   for line in served.lines)


def send_head(sock, target, *fields):
    head = [f"POST {target} HTTP/1.1", f"Host: {HOST}", *fields, "", ""]
    sock.sendall("\r\n".join(head).encode())


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


# -- framework examples: body limits -------------------------------------------------------------

def test_json_body_at_the_limit_is_accepted(framework):
    name, served = framework
    document = b'{"numbers": [1, 2]}'
    body = b" " * (JSON_LIMIT - len(document)) + document
    status, _, answer = served.request("POST", "/json", body=body,
                                       headers={"Content-Type": "application/json"})
    assert status == 200, answer[:300]
    assert json.loads(answer)["sum"] == 3


def test_oversized_json_gets_413_and_the_worker_stays_small(framework):
    """300 MB of spaces, announced by Content-Length and then sent chunked: 413 both times,
    and the worker's peak memory barely moves (it once grew to 962 MB and stayed there)."""
    name, served = framework
    status, _, _ = served.request("POST", "/json", body=b'{"numbers": [1]}',
                                  headers={"Content-Type": "application/json"})
    assert status == 200
    baseline = served.peak_rss_kib()
    total = 300_000_000

    # Announced: refused from the head alone, before a byte of the body is sent.
    with served.connect() as sock:
        send_head(sock, "/json", "Content-Type: application/json", f"Content-Length: {total}")
        status, _, body, _ = read_response(sock, timeout=WAIT)
    assert status == 413, body[:300]

    # Chunked: the client keeps sending until the server stops taking it.
    sent = [0]
    with served.connect() as sock:
        send_head(sock, "/json", "Content-Type: application/json",
                  "Transfer-Encoding: chunked")
        piece = chunk(b" " * (1 << 20))

        def flood():
            try:
                while sent[0] < total:
                    sock.sendall(piece)
                    sent[0] += 1 << 20
            except OSError:
                pass  # the server closed the connection: what we want

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        status, _, body, _ = read_response(sock, timeout=WAIT)
        sock.shutdown(socket.SHUT_RDWR)
        sender.join(WAIT)
    assert status == 413, body[:300]
    assert not sender.is_alive()
    grown_mib = (served.peak_rss_kib() - baseline) / 1024
    assert grown_mib < 48, (f"{name}: peak memory grew {grown_mib:.0f} MiB while "
                            f"{sent[0] >> 20} MiB of an oversized body were sent")


def test_chunked_body_over_the_limit_is_refused_before_it_ends(framework):
    """The 413 comes as soon as the limit is passed: the client never finishes the body."""
    name, served = framework
    with served.connect() as sock:
        send_head(sock, "/json", "Content-Type: application/json",
                  "Transfer-Encoding: chunked")
        sock.sendall(chunk(b" " * (JSON_LIMIT + 1)))
        status, _, body, _ = read_response(sock, timeout=WAIT)
    assert status == 413, body[:300]


def test_upload_over_the_limit_gets_413(framework):
    """A multipart upload over 10 MiB: refused from its Content-Length, and when chunked as
    soon as it passes the limit (the client never ends it)."""
    name, served = framework
    multipart = "Content-Type: multipart/form-data; boundary=b0undary"
    with served.connect() as sock:
        send_head(sock, "/upload", multipart, f"Content-Length: {UPLOAD_LIMIT + 1000}")
        status, _, body, _ = read_response(sock, timeout=WAIT)
    assert status == 413, body[:300]

    with served.connect() as sock:
        send_head(sock, "/upload", multipart, "Transfer-Encoding: chunked")
        sock.sendall(chunk(b'--b0undary\r\nContent-Disposition: form-data; name="file"; '
                           b'filename="big.bin"\r\n\r\n'))
        # With the part's head, 10 MiB of content is just over the limit; sending no more
        # than the server reads keeps the client's own sends from failing.
        for _ in range(UPLOAD_LIMIT >> 20):
            sock.sendall(chunk(b"z" * (1 << 20)))
        status, _, body, _ = read_response(sock, timeout=WAIT)
    assert status == 413, body[:300]


def test_chunked_body_to_a_missing_page_is_not_read(framework):
    """A body sent to a page that takes none is not read (nor spooled) before routing: the
    404 arrives while the client has sent one chunk and not ended the body."""
    name, served = framework
    with served.connect() as sock:
        send_head(sock, "/no/such/page", "Content-Type: application/json",
                  "Transfer-Encoding: chunked")
        sock.sendall(chunk(b"x" * 1024))
        status, _, _, _ = read_response(sock, timeout=WAIT)
    assert status == 404


# -- framework examples: /stream parameters ------------------------------------------------------

@pytest.mark.parametrize("query", [
    "delay=nan", "delay=NaN", "delay=inf", "delay=-inf", "delay=1e9", "delay=-1", "delay=1.5",
    "delay=0x1", "delay=1_0", "delay=", "delay=%200.1", "n=-1", "n=101", "n=1e3", "n=abc",
    "n=99999999999999999999", "n=%EF%BC%91", "tag=" + "x" * 65,
])
def test_stream_refuses_parameters_it_cannot_bound(framework, query):
    name, served = framework
    started = time.monotonic()
    status, headers, body = served.request("GET", f"/stream?{query}")
    assert status == 400, (query, body[:300])
    assert headers["Content-Type"].startswith("text/plain")
    # The reason names the parameter.
    assert body.decode().split()[0] == query.split("=")[0], body
    assert time.monotonic() - started < WAIT / 3


def test_stream_takes_parameters_within_range(framework):
    name, served = framework
    status, _, body = served.request("GET", "/stream?n=3&delay=0.05&tag=ok")
    assert status == 200
    assert [line.split()[::3] for line in body.decode().splitlines()] == [["chunk", "ok"]] * 3


def test_bad_json_documents_get_400(framework):
    name, served = framework
    for body in [b"[1, 2]", b'{"numbers": "12"}', b'{"numbers": [true]}', b"{not json",
                 b'{"numbers": [NaN]}', b'{"numbers": [1e400]}', b"[" * 100_000,
                 b'{"numbers": [1e308, 1e308]}', b"\xff"]:
        status, _, answer = served.request("POST", "/json", body=body,
                                           headers={"Content-Type": "application/json"})
        assert status == 400, (body[:20], answer[:300])


# -- files.py ------------------------------------------------------------------------------------

def files_env(store, **settings):
    return {"EXAMPLE_FILES_DIR": str(store),
            **{f"EXAMPLE_FILES_{key.upper()}": str(value) for key, value in settings.items()}}


def partials(store):
    return sorted(p.name for p in store.iterdir() if p.name.startswith(".partial-"))


def wait_for(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT} s waiting for {what}")
        time.sleep(0.02)


def test_files_default_directory_is_private_and_refuses_10_gib(tmp_path):
    """With no settings: a 0700 directory of its own, and a 10 GiB upload refused from its
    head, before a byte of the body."""
    with serving("examples.files:app", {"TMPDIR": str(tmp_path)}) as files:
        store = tmp_path / f"greenserve-files-{os.geteuid()}"
        assert stat.S_IMODE(store.stat().st_mode) == 0o700
        with files.connect() as sock:
            send_head(sock, "/upload/huge.iso", f"Content-Length: {10 << 30}")
            status, _, body, _ = read_response(sock, timeout=WAIT)
        assert status == 413, body
        assert "268435456" in json.loads(body)["error"]  # the 256 MiB default
        assert list(store.iterdir()) == []


def test_files_upload_limit_stops_a_chunked_body_midway(tmp_path):
    store = tmp_path / "store"
    with serving("examples.files:app", files_env(store, max_upload=100_000)) as files:
        with files.connect() as sock:
            send_head(sock, "/upload/big.bin", "Transfer-Encoding: chunked")
            # 192 KiB: whole 64 KiB reads take it past the limit. The body never ends.
            sock.sendall(chunk(b"y" * (64 << 10)) * 3)
            status, _, body, _ = read_response(sock, timeout=WAIT)
        assert status == 413, body
        wait_for(lambda: not partials(store), "the partial upload to be removed")
        assert list(store.iterdir()) == []


def test_files_total_limit_gets_507(tmp_path):
    store = tmp_path / "store"
    with serving("examples.files:app", files_env(store, max_total=100_000)) as files:
        assert files.request("POST", "/upload/one.bin", body=b"1" * 60_000)[0] == 201
        status, _, body = files.request("POST", "/upload/two.bin", body=b"2" * 60_000)
        assert status == 507, body
        status, _, body = files.request("POST", "/upload/three.bin",
                                        body=iter([b"3" * 30_000, b"3" * 30_000]))
        assert status == 507, body
        assert sorted(p.name for p in store.iterdir()) == ["one.bin"]


def test_files_uploads_never_replace_a_file(tmp_path):
    store = tmp_path / "store"
    with serving("examples.files:app", files_env(store)) as files:
        assert files.request("POST", "/upload/a.txt", body=b"first")[0] == 201
        # Refused from the head alone: the body is never sent.
        with files.connect() as sock:
            send_head(sock, "/upload/a.txt", "Content-Length: 6")
            status, _, body, _ = read_response(sock, timeout=WAIT)
        assert status == 409, body
        assert files.request("PUT", "/upload/a.txt", body=b"second")[0] == 409
        assert (store / "a.txt").read_bytes() == b"first"

        # Two uploads of one new name at once: the first to finish wins, the other gets 409
        # when it ends (link() refuses where a rename would have replaced the file).
        with files.connect() as slow:
            send_head(slow, "/upload/b.txt", "Content-Length: 10")
            slow.sendall(b"slow-")
            wait_for(lambda: partials(store), "the slow upload to start")
            assert files.request("POST", "/upload/b.txt", body=b"quick")[0] == 201
            slow.sendall(b"12345")
            status, _, body, _ = read_response(slow, timeout=WAIT)
        assert status == 409, body
        assert (store / "b.txt").read_bytes() == b"quick"
        assert partials(store) == []


def test_files_overwrite_when_allowed(tmp_path):
    store = tmp_path / "store"
    with serving("examples.files:app", files_env(store, overwrite=1)) as files:
        assert files.request("POST", "/upload/a.txt", body=b"first")[0] == 201
        status, _, body = files.request("PUT", "/upload/a.txt", body=b"second")
        assert status == 201 and json.loads(body)["size"] == 6
        assert (store / "a.txt").read_bytes() == b"second"


def test_files_never_follow_symlinks_or_serve_what_is_not_a_file(tmp_path):
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET outside the store")
    secret.chmod(0o600)
    (store / "link.txt").symlink_to(secret)
    (store / "dirlink").symlink_to(tmp_path)
    os.mkfifo(store / "fifo")
    (store / "sub").mkdir()
    (store / "plain.txt").write_bytes(b"public")
    with serving("examples.files:app", files_env(store)) as files:
        for name in ["link.txt", "dirlink", "fifo", "sub"]:
            status, _, body = files.request("GET", f"/download/{name}")
            assert status == 404 and b"SECRET" not in body, (name, status)
        assert files.request("GET", "/download/plain.txt")[2] == b"public"
        page = files.request("GET", "/")[2]
        assert b"plain.txt" in page and b"link.txt" not in page and b"fifo" not in page
        # Uploading over a symlink's name neither writes through it nor replaces it.
        assert files.request("POST", "/upload/link.txt", body=b"overwritten")[0] == 409
        assert secret.read_bytes() == b"SECRET outside the store"


def test_files_symlink_swapped_in_during_downloads_is_never_followed(tmp_path):
    """One name flips between a regular file and a symlink to a file outside, while a client
    downloads it over and over: every answer is the file or a 404, never the outside file."""
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET")
    stop = threading.Event()

    def swap():
        while not stop.is_set():
            (store / ".swap-file").write_bytes(b"public")
            os.replace(store / ".swap-file", store / "x")
            os.symlink(secret, store / ".swap-link")
            os.replace(store / ".swap-link", store / "x")

    with serving("examples.files:app", files_env(store)) as files:
        swapper = threading.Thread(target=swap, daemon=True)
        swapper.start()
        seen = {}
        conn = http.client.HTTPConnection(HOST, files.port, timeout=WAIT)
        try:
            for _ in range(1500):
                conn.request("GET", "/download/x")
                response = conn.getresponse()
                body = response.read()
                seen[response.status, body[:6]] = seen.get((response.status, body[:6]), 0) + 1
        finally:
            conn.close()
            stop.set()
            swapper.join(WAIT)
        assert set(seen) <= {(200, b"public"), (404, b'{"erro')}, seen
        assert len(seen) == 2, f"the race never ran both ways: {seen}"


@pytest.mark.parametrize("make", ["world-writable", "group-writable", "someone else's",
                                  "a symlink", "a file"])
def test_files_refuses_a_directory_others_control(tmp_path, make):
    store = tmp_path / "store"
    if make == "a symlink":
        (tmp_path / "real").mkdir(mode=0o700)
        store.symlink_to(tmp_path / "real")
    elif make == "a file":
        store.write_bytes(b"")
    else:
        store.mkdir()
        if make == "world-writable":
            store.chmod(0o777 | stat.S_ISVTX)  # sticky, like /tmp: still not ours alone
        elif make == "group-writable":
            store.chmod(0o770)
        else:
            if os.geteuid() != 0:
                pytest.skip("only root can give a directory to another user")
            os.chown(store, 65534, 65534)
    code, log = refused_start("examples.files:app", files_env(store))
    assert code != 0
    assert f"refusing {store}" in log, log
    assert "Listening at" not in log
    if store.is_dir():
        assert list(store.iterdir()) == []


def test_files_accepts_its_own_readable_directory(tmp_path):
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    with serving("examples.files:app", files_env(store)) as files:
        assert files.request("POST", "/upload/ok.txt", body=b"ok")[0] == 201
    assert (store / "ok.txt").read_bytes() == b"ok"


def test_files_removes_stale_partial_uploads_at_start_but_not_live_ones(tmp_path):
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / ".partial-stale").write_bytes(b"left by a killed server")
    # A partial file locked by a live upload in another process (a second worker, say).
    busy = open(store / ".partial-busy", "wb")
    fcntl.flock(busy, fcntl.LOCK_EX)
    try:
        with serving("examples.files:app", files_env(store)):
            assert partials(store) == [".partial-busy"]
    finally:
        busy.close()


def test_files_upload_cut_by_a_kill_is_cleaned_at_the_next_start(tmp_path):
    store = tmp_path / "store"
    env = files_env(store)
    data = os.urandom(200_000)
    with serving("examples.files:app", env) as files:
        with files.connect() as sock:
            send_head(sock, "/upload/cut.bin", f"Content-Length: {len(data)}")
            sock.sendall(data[:100_000])
            wait_for(lambda: partials(store) and (store / partials(store)[0]).stat().st_size,
                     "the upload to reach its partial file")
            files.proc.kill()
            files.proc.wait(WAIT)
    assert len(partials(store)) == 1 and not (store / "cut.bin").exists()
    with serving("examples.files:app", env) as files:
        assert partials(store) == []
        status, _, body = files.request("POST", "/upload/cut.bin", body=data)
        assert status == 201 and json.loads(body)["sha256"] == hashlib.sha256(data).hexdigest()
    assert partials(store) == []
