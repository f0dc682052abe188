"""A master's graceful stop refuses new connections at once; a reload refuses none.

Real processes (``python -m greenserve ... -w 2``), real signals and clients. A connection
that arrives while the workers drain must be refused (a load balancer retries a refused
connect elsewhere), not queued by the kernel for nobody and reset when the master exits.
The app's slow request waits for a file the test creates, so no wait here is a sleep.
"""

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from procs import StderrLines

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below

APP = '''
import os
import sys
import time
from wsgiref.validate import validator

RELEASE = os.environ["GS_TEST_RELEASE"]


def _app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        sys.stderr.write(f"SLOW REQUEST STARTED in {os.getpid()}\\n")
        sys.stderr.flush()
        deadline = time.monotonic() + 60  # a bound, should the test never release it
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.02)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
'''

BOOTED = r"worker \d+ \(pid (\d+)\) booted"
DRAINING = r"worker \(pid (\d+)\) stopping gracefully"


class Master(StderrLines):
    """``python -m greenserve`` in its own process group; stderr collected by a thread."""

    def __init__(self, directory, *args):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("GREENSERVE_", "LISTEN_")) and k != "WEB_CONCURRENCY"}
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
                   GS_TEST_RELEASE=str(directory / "release"))
        self.directory = directory
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "greenserve", *args], cwd=directory, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        self._collect_stderr()

    def address(self):
        port = self.wait_for(r"Listening at http://127\.0\.0\.1:(\d+) \(pid \d+\)")[0]
        return "127.0.0.1", int(port)

    def release(self):
        """Let the slow requests answer."""
        (self.directory / "release").touch()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the master and any worker left
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=WAIT)


@pytest.fixture
def start(tmp_path):
    (tmp_path / "drainapp.py").write_text(textwrap.dedent(APP))
    started = []

    def start(*args):
        master = Master(tmp_path, "drainapp:app", "-b", "127.0.0.1:0", *args)
        started.append(master)
        return master

    yield start
    for master in started:
        master.kill()


def get(address, path="/"):
    """(status, body, Connection header) of one GET on a new connection."""
    conn = http.client.HTTPConnection(*address, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(), response.getheader("Connection")
    finally:
        conn.close()


class SlowRequest:
    """``GET /slow`` in a thread; waits until the app has started it."""

    def __init__(self, master, address):
        self.outcome = {}
        self.thread = threading.Thread(target=self._run, args=(address,), daemon=True)
        self.thread.start()
        self.pid = int(master.wait_for(r"SLOW REQUEST STARTED in (\d+)")[0])

    def _run(self, address):
        try:
            self.outcome["response"] = get(address, "/slow")
        except Exception as exc:  # reported by result()
            self.outcome["error"] = exc

    def result(self):
        self.thread.join(WAIT)
        assert "error" not in self.outcome, self.outcome["error"]
        return self.outcome["response"]


@pytest.mark.parametrize("options", [[], ["--reuse-port"]], ids=["shared", "reuse-port"])
def test_graceful_stop_refuses_new_connections_and_finishes_the_running_one(start, options):
    master = start("-w", "2", "--graceful-timeout", "30", *options)
    address = master.address()
    workers = {int(pid) for pid in master.wait_for(BOOTED, 2)}
    slow = SlowRequest(master, address)
    master.proc.send_signal(signal.SIGTERM)
    master.wait_for(r"master \(pid \d+\) closed its \d+ listening socket\(s\)")
    # Both workers log this line after closing their own copies of the listeners.
    assert {int(pid) for pid in master.wait_for(DRAINING, 2)} == workers
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=WAIT).close()
    assert master.proc.poll() is None  # still draining the slow request
    master.release()
    status, body, connection = slow.result()
    assert (status, int(body), connection) == (200, slow.pid, "close")
    assert master.proc.wait(timeout=WAIT) == 0


def test_reload_keeps_listening_while_the_old_worker_drains(start):
    master = start("-w", "2", "--graceful-timeout", "30")
    address = master.address()
    old = {int(pid) for pid in master.wait_for(BOOTED, 2)}
    slow = SlowRequest(master, address)
    master.proc.send_signal(signal.SIGHUP)
    new = {int(pid) for pid in master.wait_for(BOOTED, 4)[2:]}
    assert str(slow.pid) in master.wait_for(DRAINING, 2)
    # The old workers closed their copies; the master's keep the address served.
    for _ in range(10):
        status, body, _ = get(address)
        assert status == 200 and int(body) in new
    assert "listening socket" not in master.text
    master.release()
    status, body, connection = slow.result()
    assert (status, int(body), connection) == (200, slow.pid, "close")
    assert slow.pid in old
    master.wait_for(rf"worker \(pid {slow.pid}\) exited with status 0")
    master.proc.send_signal(signal.SIGTERM)
    assert master.proc.wait(timeout=WAIT) == 0
