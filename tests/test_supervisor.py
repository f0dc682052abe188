"""The pre-fork master and its workers, as real processes receiving real signals.

Every server is ``python -m greenserve`` in a subprocess on 127.0.0.1; every wait is bounded
and every process is killed (with its workers, by process group) when the test ends.
"""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below

APP = '''
import os
import sys
import time
from wsgiref.validate import validator

VERSION = "one"


def spin_forever():
    while True:
        pass


def _app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/slow":
        sys.stderr.write("SLOW REQUEST STARTED\\n")
        sys.stderr.flush()
        time.sleep(float(environ["QUERY_STRING"] or "1"))
    elif path == "/spin":
        spin_forever()
    body = f"{VERSION} {os.getpid()} {environ['wsgi.multiprocess']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


app = validator(_app)
'''

STARTED = r"started worker \d+ \(pid (\d+)\)"
BOOTED = r"worker \d+ \(pid (\d+)\) booted"


@pytest.fixture
def project(tmp_path):
    (tmp_path / "webapp.py").write_text(textwrap.dedent(APP))
    return tmp_path


def environment(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GREENSERVE_", "LISTEN_")) and k != "WEB_CONCURRENCY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Master:
    """A greenserve process in its own process group; stderr collected by a thread."""

    def __init__(self, args, cwd, env=None, command=None, **popen):
        command = command or [sys.executable, "-m", "greenserve"]
        self.proc = subprocess.Popen([*command, *args], cwd=cwd, env=env or environment(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True,
                                     start_new_session=True, **popen)
        self.lines = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    @property
    def text(self):
        with self.changed:
            return "".join(self.lines)

    def matches(self, pattern):
        return re.findall(pattern, self.text, re.MULTILINE)

    def wait_for(self, pattern, count=1, timeout=WAIT):
        """Wait until ``pattern`` has matched ``count`` times; the matches."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = re.findall(pattern, "".join(self.lines), re.MULTILINE)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{pattern!r} x{count} not seen within {timeout}s; "
                                f"exit={self.proc.poll()}; stderr:\n{''.join(self.lines)}")
                self.changed.wait(min(left, 0.2))

    def address(self):
        port = self.wait_for(r"Listening at http://127\.0\.0\.1:(\d+) \(pid \d+\)")[0]
        return "127.0.0.1", int(port)

    def signal(self, signum):
        self.proc.send_signal(signum)

    def exit_code(self, timeout=WAIT):
        return self.proc.wait(timeout=timeout)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the master and any worker left
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=WAIT)


@pytest.fixture
def start(project):
    started = []

    def start(*args, cwd=None, **kwargs):
        master = Master(list(args), cwd or project, **kwargs)
        started.append(master)
        return master

    yield start
    for master in started:
        master.kill()


def get(address, path="/", timeout=WAIT):
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(), response.getheader("Connection")
    finally:
        conn.close()


def pids_seen(address, want, limit=400):
    """Distinct worker pids answering new connections, until ``want`` are seen."""
    pids = set()
    for _ in range(limit):
        status, body, _ = get(address)
        assert status == 200
        pids.add(int(body.split()[1]))
        if len(pids) >= want:
            break
    return pids


def booted_pids(master, count):
    return [int(pid) for pid in master.wait_for(BOOTED, count)]


class Load:
    """Client threads sending GETs until stopped: new connections and keep-alive both.

    A keep-alive client retries once when a reused connection is closed before any byte
    of the response arrives, as RFC 9112 section 9.3.1 allows for idempotent requests and
    real clients (browsers, urllib3) do; such retries are counted apart, never as failures.
    """

    def __init__(self, address, threads=2, max_seconds=30):
        self.address = address
        self.bodies, self.failures = [], []
        self.retries = 0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, args=(keep,), daemon=True)
                        for keep in (False, True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, keep_alive):
        conn = None
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection(*self.address, timeout=10)
            try:
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read().decode()
                assert response.status == 200, response.status
                with self.lock:
                    self.bodies.append(body)
                if not keep_alive or response.getheader("Connection") == "close":
                    conn.close()
                    conn = None
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as exc:
                conn.close()
                conn = None
                with self.lock:
                    if reused:
                        self.retries += 1  # stale keep-alive connection: send again
                    else:
                        self.failures.append(repr(exc))
            except Exception as exc:
                if conn is not None:
                    conn.close()
                conn = None
                with self.lock:
                    self.failures.append(repr(exc))
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def stop(self):
        self.stopped.set()
        for thread in self.threads:
            thread.join(WAIT)
        return self


# -- workers ------------------------------------------------------------------------------------

def test_workers_serve_concurrently_with_web_concurrency(start):
    master = start("webapp:app", "-b", "127.0.0.1:0",
                   env=environment(WEB_CONCURRENCY="3"))
    address = master.address()
    workers = booted_pids(master, 3)
    pids = pids_seen(address, 3)
    assert len(pids) >= 2 and pids <= set(workers)
    assert master.proc.pid not in pids
    assert get(address)[1].endswith(" True")  # wsgi.multiprocess
    master.signal(signal.SIGTERM)
    assert master.exit_code() == 0


def test_reuse_port_gives_each_worker_its_own_socket(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--reuse-port")
    address = master.address()
    workers = booted_pids(master, 2)
    assert pids_seen(address, 2) == set(workers)  # the kernel hashes over both sockets
    master.signal(signal.SIGTTOU)  # a slot's own socket goes with its worker
    master.wait_for(r"worker \(pid \d+\) exited with status 0")
    assert len({int(get(address)[1].split()[1]) for _ in range(20)}) == 1
    master.signal(signal.SIGTERM)
    assert master.exit_code() == 0


def test_killed_worker_is_replaced_while_the_other_serves(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2")
    address = master.address()
    victim, survivor = booted_pids(master, 2)
    os.kill(victim, signal.SIGKILL)
    load = Load(address, threads=1)
    master.wait_for(rf"worker \(pid {victim}\) was killed by SIGKILL")
    replacement = int(master.wait_for(BOOTED, 3)[2])
    assert replacement not in (victim, survivor)
    time.sleep(0.3)
    load.stop()
    assert load.failures == [] and load.bodies
    assert pids_seen(address, 2) == {survivor, replacement}


def test_unloadable_app_exits_with_one_clear_line(start, project):
    (project / "broken.py").write_text("import gs_not_installed_anywhere\napp = None\n")
    master = start("broken:app", "-b", "127.0.0.1:0", "-w", "2")
    assert master.exit_code(timeout=10) == 2
    master.wait_for("greenserve: error:")
    last = master.text.strip().splitlines()[-1]
    assert last == ("greenserve: error: importing 'broken' failed: ModuleNotFoundError: No "
                    "module named 'gs_not_installed_anywhere'")
    assert len(master.matches(STARTED)) == 2  # no fork loop


def test_blocked_worker_has_its_stacks_logged_and_is_replaced(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--timeout", "2")
    address = master.address()
    first = booted_pids(master, 2)
    spinner = threading.Thread(target=lambda: _swallow(get, address, "/spin", 15),
                               daemon=True)
    spinner.start()
    blocked = int(master.wait_for(r"worker \(pid (\d+)\): its hub has been blocked for "
                                  r"[\d.]+s \(--timeout 2\)")[0])
    assert blocked in first
    master.wait_for(r"\[CRITICAL\] worker \(pid \d+\): the hub was blocked")
    master.wait_for(r'webapp\.py", line \d+, in spin_forever')
    master.wait_for(rf"worker \(pid {blocked}\) was killed by SIGKILL after its hub was "
                    r"blocked")
    master.wait_for(BOOTED, 3)
    assert get(address)[0] == 200


# -- signals -------------------------------------------------------------------------------------

def test_hup_under_load_drops_nothing_and_loads_new_code(start, project):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2")
    address = master.address()
    old = set(booted_pids(master, 2))
    load = Load(address, threads=2)
    time.sleep(0.5)
    # A different length too: a .pyc is trusted when the source's mtime and size match.
    source = (project / "webapp.py").read_text()
    (project / "webapp.py").write_text(source.replace('VERSION = "one"',
                                                      'VERSION = "second"'))
    master.signal(signal.SIGHUP)
    master.wait_for(r"worker \(pid \d+\) exited with status 0", 2)
    time.sleep(0.5)
    load.stop()
    assert load.failures == [], load.failures
    assert any(body.startswith("one ") for body in load.bodies)
    assert load.bodies[-1].startswith("second ")
    status, body, _ = get(address)
    assert body.startswith("second ") and int(body.split()[1]) not in old
    print(f"HUP under load: {len(load.bodies)} requests, 0 failed, "
          f"{load.retries} stale keep-alive retries")


def test_failed_reload_keeps_the_old_workers(start, project):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2")
    address = master.address()
    old = set(booted_pids(master, 2))
    (project / "webapp.py").write_text("def broken(:\n")
    master.signal(signal.SIGHUP)
    master.wait_for(r"cannot load the app: .*SyntaxError.*; the previous worker keeps "
                    r"serving", 2)
    assert pids_seen(address, 2) <= old
    assert master.proc.poll() is None


def test_sigterm_lets_a_slow_request_finish(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--graceful-timeout", "10")
    address = master.address()
    booted_pids(master, 2)
    outcome = {}
    client = threading.Thread(target=lambda: outcome.update(r=get(address, "/slow?2")),
                              daemon=True)
    client.start()
    master.wait_for("SLOW REQUEST STARTED")
    started = time.monotonic()
    master.signal(signal.SIGTERM)
    assert master.exit_code() == 0
    assert time.monotonic() - started < 10
    client.join(WAIT)
    status, body, connection = outcome["r"]
    assert status == 200 and connection == "close"


def test_ctrl_c_reaches_the_group_but_only_the_master_acts(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--graceful-timeout", "10")
    address = master.address()
    booted_pids(master, 2)
    outcome = {}
    client = threading.Thread(target=lambda: outcome.update(r=get(address, "/slow?1.5")),
                              daemon=True)
    client.start()
    master.wait_for("SLOW REQUEST STARTED")
    os.killpg(master.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert master.exit_code() == 0
    client.join(WAIT)
    assert outcome["r"][0] == 200


def test_sigquit_stops_at_once(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--graceful-timeout", "30")
    address = master.address()
    booted_pids(master, 2)
    client = threading.Thread(target=lambda: _swallow(get, address, "/slow?30"), daemon=True)
    client.start()
    master.wait_for("SLOW REQUEST STARTED")
    started = time.monotonic()
    master.signal(signal.SIGQUIT)
    assert master.exit_code() == 0
    assert time.monotonic() - started < 3
    client.join(WAIT)
    assert not client.is_alive()  # its connection was cut


def test_ttin_and_ttou_change_the_worker_count(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "--supervise")
    address = master.address()
    first = booted_pids(master, 1)
    assert get(address)[1].endswith(" False")  # one worker: not multiprocess
    master.signal(signal.SIGTTIN)
    master.wait_for(r"SIGTTIN received; 2 worker\(s\) now")
    second = booted_pids(master, 2)[1]
    assert pids_seen(address, 2) == {first[0], second}
    master.signal(signal.SIGTTOU)
    master.wait_for(rf"stopping worker \(pid {second}\): one worker fewer")
    master.wait_for(rf"worker \(pid {second}\) exited with status 0")
    assert {int(get(address)[1].split()[1]) for _ in range(10)} == {first[0]}


def test_max_requests_recycles_without_failures(start):
    master = start("webapp:app", "-b", "127.0.0.1:0", "--supervise", "--max-requests", "10",
                   "--max-requests-jitter", "5")
    address = master.address()
    booted_pids(master, 1)
    pids, failures = [], []
    deadline = time.monotonic() + 15
    while len(set(pids)) < 3 and time.monotonic() < deadline:
        try:
            pids.append(int(get(address, timeout=10)[1].split()[1]))
        except OSError as exc:
            failures.append(repr(exc))
        time.sleep(0.01)
    assert failures == []
    assert len(set(pids)) >= 3, master.text
    master.wait_for(r"served its --max-requests; starting its replacement", 2)


# -- inherited listeners --------------------------------------------------------------------------

def _listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def test_systemd_socket_activation(start):
    sock = _listening_socket()
    try:
        # Set LISTEN_PID to the pid that execs greenserve, as systemd does, and put the
        # socket at descriptor 3.
        launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                    "os.environ['LISTEN_PID'] = str(os.getpid()); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'greenserve', "
                    "*sys.argv[2:]])")
        master = start(str(sock.fileno()), "webapp:app", "-w", "2",
                       command=[sys.executable, "-c", launcher],
                       env=environment(LISTEN_FDS="1"), pass_fds=[sock.fileno()])
        port = sock.getsockname()[1]
        assert master.address() == ("127.0.0.1", port)
        booted_pids(master, 2)
        assert get(("127.0.0.1", port))[0] == 200
        assert "127.0.0.1:8000" not in master.text  # the default bind is not used
        master.signal(signal.SIGTERM)
        assert master.exit_code() == 0
    finally:
        sock.close()


def test_bind_inherited_fd(start):
    sock = _listening_socket()
    try:
        master = start("webapp:app", "-b", f"fd://{sock.fileno()}", "-w", "2",
                       pass_fds=[sock.fileno()])
        port = sock.getsockname()[1]
        assert master.address() == ("127.0.0.1", port)
        booted_pids(master, 2)
        assert get(("127.0.0.1", port))[0] == 200
    finally:
        sock.close()


def _swallow(function, *args):
    try:
        function(*args)
    except OSError:
        pass  # the server cut the request, which is the point
