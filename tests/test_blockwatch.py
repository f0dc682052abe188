"""--block-warning: a real gevent server process whose app blocks the hub with a C-level
sleep (the unpatched ``time.sleep``) or a call that holds the interpreter lock; the error
log must name the worker, the request and the stack, and the metric must count it."""

import http.client
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from procs import StderrLines

from greenserve.blockwatch import BlockWatch
from greenserve.config import load_config
from greenserve.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below

PROGRAM = '''
import logging
import signal
import socket
import sys
import time

from gevent import monkey
monkey.patch_all()

import gevent
from gevent.event import Event
from gevent.monkey import get_original
from wsgiref.validate import validator

from greenserve import metrics
from greenserve.admin import AdminRoutes, Health, local_collector, serve_in_process
from greenserve.blockwatch import BlockWatch
from greenserve.log import ERROR_FORMAT
from greenserve.server import Server

block_sleep = get_original("time", "sleep")  # blocks the whole hub


def blocking_call(seconds):
    block_sleep(seconds)


def hold_the_lock(seconds):
    # sum() over a range runs in C without releasing the interpreter lock. Sized by the
    # fastest of a few short timings: one slowed by a loaded machine would make the spin
    # too short to be seen at all.
    n = 10 ** 5
    fastest = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(range(n))
        fastest = min(fastest, time.perf_counter() - started)
    sum(range(int(seconds / fastest * n)))


def _app(environ, start_response):
    path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
    if path.startswith("/block"):
        blocking_call(float(query.split("=")[1]))
    elif path == "/spin":
        hold_the_lock(float(query.split("=")[1]))
    elif path == "/nap":
        gevent.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter(ERROR_FORMAT))
error_log = logging.getLogger("greenserve.error")
error_log.addHandler(handler)
error_log.setLevel(logging.INFO)

_, stats = metrics.private_stats()
server = Server(validator(_app), bind="127.0.0.1:0")
server.start()
admin_sock = socket.socket()
admin_sock.bind(("127.0.0.1", 0))
admin_sock.listen(8)
serve_in_process(admin_sock, AdminRoutes(Health(), local_collector(stats, server)),
                 server.config)
watch = BlockWatch(0.1, on_block=stats.hub_blocked)
watch.start()
stop = Event()
gevent.signal_handler(signal.SIGTERM, stop.set)
error_log.info("app %d admin %d", server.address[1], admin_sock.getsockname()[1])
stop.wait()
watch.stop()
'''


class Program(StderrLines):
    """The program above in a subprocess; its stderr collected by a thread."""

    def __init__(self, tmp_path):
        script = tmp_path / "blocking_server.py"
        script.write_text(textwrap.dedent(PROGRAM))
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(script)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._collect_stderr()
        app, admin = self.wait_for(r"app (\d+) admin (\d+)")[0]
        self.app, self.admin = ("127.0.0.1", int(app)), ("127.0.0.1", int(admin))

    def get(self, path, address=None):
        conn = http.client.HTTPConnection(*(address or self.app), timeout=WAIT)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def blocked_count(self):
        _, body = self.get("/metrics", self.admin)
        return int(re.search(rb"^greenserve_hub_blocked_total (\d+)", body, re.M).group(1))

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(WAIT)


@pytest.fixture
def program(tmp_path):
    started = Program(tmp_path)
    yield started
    started.stop()


WARNING = r"\[WARNING\] worker \(pid (\d+)\): (.*) for ([0-9.]+) s \(--block-warning 100 ms\)"


def test_a_blocking_c_sleep_is_reported_with_the_request_and_its_stack(program):
    assert program.get("/block?seconds=0.5") == (200, b"ok")
    [(pid, where, seconds)] = program.wait_for(WARNING)
    assert int(pid) == program.proc.pid
    assert where == "GET /block?seconds=0.5 blocked the hub"
    # The thread measures from its first unanswered ping: a quarter threshold late at most.
    assert 0.5 - 0.1 <= float(seconds) < 5
    text = program.text
    stack = text[text.index("the stack of the code that blocked"):]
    assert 'in blocking_call\n    block_sleep(seconds)' in stack
    assert "in _app\n" in stack
    assert program.blocked_count() == 1


def test_a_call_holding_the_interpreter_lock_is_reported(program):
    assert program.get("/spin?seconds=0.6") == (200, b"ok")
    [(pid, where, seconds)] = program.wait_for(WARNING)
    assert where == "GET /spin?seconds=0.6 blocked the hub"
    # At least the threshold (0.1 s), and in practice about the 0.6 s asked for; not
    # asserted closer, as a loaded machine stretches and squeezes timings both ways.
    assert float(seconds) >= 0.1
    # Seen while it runs (a ping was pending), the stack is the call's; seen only after
    # (this thread could not run either), the warning says so and the stack is later.
    text = program.text
    assert "in hold_the_lock\n" in text or "held the interpreter lock" in text
    assert program.blocked_count() == 1


def test_cooperative_waits_are_never_reported(program):
    def naps():
        for _ in range(20):
            assert program.get("/nap") == (200, b"ok")

    threads = [threading.Thread(target=naps) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    # A marker block after the naps: once its warning is there, any for the naps would be.
    assert program.get("/block?seconds=0.3") == (200, b"ok")
    program.wait_for(WARNING)
    assert len(re.findall(WARNING, program.text)) == 1
    assert "GET /block?seconds=0.3" in program.text
    assert program.blocked_count() == 1


def test_control_characters_in_the_target_cannot_forge_log_lines(program):
    # %0A is decoded into PATH_INFO, but the warning quotes the target as received.
    assert program.get("/block%0A[CRITICAL]%20forged?seconds=0.3")[0] == 200
    [(_, where, _)] = program.wait_for(WARNING)
    assert where == "GET /block%0A[CRITICAL]%20forged?seconds=0.3 blocked the hub"
    assert "[CRITICAL]" not in program.text.replace("%0A[CRITICAL]", "")


# -- in this process, on a hub of its own ---------------------------------------------------

class Recorder:
    """A logger stand-in that keeps the warnings."""

    def __init__(self):
        self.lines = []
        self.logged = threading.Event()

    def warning(self, message, *args):
        self.lines.append(message % args)
        self.logged.set()


def run_in_a_hub(body):
    """Run ``body()`` in a thread with its own gevent hub; re-raise what it raised."""
    box = {}

    def run():
        try:
            box["result"] = body()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    if "error" in box:
        raise box["error"]
    return box.get("result")


def watched(body, threshold=0.05, log=None, on_block=None):
    """Run ``body(watch)`` in a hub of its own with a BlockWatch, until ``log`` (a
    Recorder) has a line; returns the Recorder."""
    import gevent
    log = log or Recorder()

    def run():
        watch = BlockWatch(threshold, on_block=on_block, log=log)
        watch.start()
        try:
            body(watch)
            deadline = time.monotonic() + WAIT
            while not log.logged.is_set() and time.monotonic() < deadline:
                gevent.sleep(0.01)  # the hub logs at its next turn
        finally:
            watch.stop()

    run_in_a_hub(run)
    return log


def test_a_block_outside_any_request_is_reported_as_such():
    import gevent
    from gevent.monkey import get_original
    block_sleep = get_original("time", "sleep")
    counted = []

    def housekeeping():
        block_sleep(0.3)

    log = watched(lambda watch: gevent.spawn(housekeeping).join(),
                  on_block=lambda: counted.append(1))
    [line] = log.lines
    assert "the hub was blocked outside any request for" in line
    assert "(--block-warning 50 ms)" in line
    assert "in housekeeping\n    block_sleep(0.3)" in line
    assert counted == [1]


def test_a_c_function_run_as_a_greenlet_is_reported_without_a_stack():
    import gevent
    from gevent.monkey import get_original
    block_sleep = get_original("time", "sleep")
    log = watched(lambda watch: gevent.spawn(block_sleep, 0.3).join())
    [line] = log.lines
    assert "outside any request" in line and "(no Python code" in line


def test_a_call_holding_the_lock_right_after_the_hub_answered():
    """The watcher cannot run either while one C call holds the interpreter lock: it
    notices on waking far too late, and takes the stack where the call returned."""
    import gevent

    def body(watch):
        per_item = _seconds_per_sum_item()
        watch.interval = 0.2  # pings are rare: none is pending when the call starts
        while not (watch._asked and watch._answered == watch._asked):
            gevent.sleep(0.01)
        environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/sum"}  # noqa: F841 (found by name)
        sum(range(int(0.6 / per_item)))  # one call: sum() over a range never lets go

    log = watched(body)
    [line] = log.lines
    assert "GET /sum blocked the hub" in line
    assert "in one call that held the interpreter lock" in line
    assert "in body\n" in line


def _seconds_per_sum_item():
    n = 10 ** 6
    started = time.perf_counter()
    sum(range(n))
    return (time.perf_counter() - started) / n


def test_one_warning_per_greenlet_that_blocked():
    import gevent
    from gevent.monkey import get_original
    block_sleep = get_original("time", "sleep")
    log = Recorder()

    def handle(environ):  # the same shape as the server's call of the app
        block_sleep(0.3)

    def body():
        watch = BlockWatch(0.05, log=log)
        watch.start()
        try:
            # Two greenlets block one after the other, with no turn of the hub between.
            first = gevent.spawn(handle, {"REQUEST_METHOD": "GET", "RAW_URI": "/one"})
            second = gevent.spawn(handle, {"REQUEST_METHOD": "POST", "RAW_URI": "/two"})
            gevent.joinall([first, second])
            deadline = time.monotonic() + WAIT
            while len(log.lines) < 2 and time.monotonic() < deadline:
                gevent.sleep(0.01)
        finally:
            watch.stop()

    run_in_a_hub(body)
    assert [line.split(" for ")[0] for line in log.lines] == [
        f"worker (pid {os.getpid()}): GET /one blocked the hub",
        f"worker (pid {os.getpid()}): POST /two blocked the hub"]


def test_nothing_is_reported_while_the_hub_waits():
    import gevent
    log = Recorder()

    def body():
        watch = BlockWatch(0.02, log=log)
        watch.start()
        try:
            for _ in range(20):
                gevent.sleep(0.01)  # the hub waits: every ping is answered
        finally:
            watch.stop()
        return watch

    watch = run_in_a_hub(body)
    assert log.lines == []
    assert watch._asked > 0 and watch._answered == watch._asked  # pinged and answered


def test_the_threshold_must_be_positive():
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError):
            BlockWatch(bad)


def test_block_warning_setting():
    assert load_config().block_warning == 100
    assert load_config(cli={"block_warning": "0"}).block_warning == 0
    assert load_config(environ={"GREENSERVE_BLOCK_WARNING": "250"}).block_warning == 250
    for bad in ("-1", "0.5", "soon"):
        with pytest.raises(ConfigError):
            load_config(cli={"block_warning": bad})
