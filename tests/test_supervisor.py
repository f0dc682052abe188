"""The pre-fork master and its workers, as real processes receiving real signals.

Every server is ``python -m greenserve`` in a subprocess on 127.0.0.1; every wait is bounded
and every process is killed (with its workers, by process group) when the test ends.
"""

import http.client
import os
import shutil
import signal
import socket
import sys
import threading
import time

import pytest

import procs
from procs import FIXTURE_APPS, WAIT, HeldRequest, environment, get, wait_until

STARTED = r"started worker \d+ \(pid (\d+)\)"
BOOTED = r"worker \d+ \(pid (\d+)\) booted"


@pytest.fixture
def project(tmp_path):
    """The working directory of the command; the app is tests/fixtureapps/webapp.py."""
    return tmp_path


@pytest.fixture
def reloadable(project):
    """A copy of webapp.py in the working directory (which comes first on sys.path), for
    tests that change the app's code and reload it."""
    shutil.copy(FIXTURE_APPS / "webapp.py", project / "webapp.py")
    return project / "webapp.py"


@pytest.fixture
def processes(project):
    """Starts greenserve masters; each is killed with its workers when the test ends."""
    with procs.Processes(cwd=project) as started:
        yield started


def who(address, timeout=WAIT):
    """(VERSION, pid, multiprocess) of the worker answering a new connection."""
    status, body, _ = get(address, "/who", timeout)
    assert status == 200
    version, pid, multiprocess = body.split()
    return version, int(pid), multiprocess


@pytest.mark.parametrize("workers", [[], ["-w", "1"]], ids=["one process", "a worker"])
def test_objects_alive_at_start_up_are_frozen_out_of_the_collector(processes, workers):
    # A full collection then scans only what requests made, so its pause does not grow with
    # the app (13 ms -> 0.3 ms for the load-test app).
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", *workers)
    status, body, _ = get(server.address(), "/frozen")
    assert status == 200 and int(body) > 1000  # the modules, the app and greenserve


def pids_seen(address, want, limit=400):
    """Distinct worker pids answering new connections, until ``want`` are seen."""
    pids = set()
    for _ in range(limit):
        pids.add(who(address)[1])
        if len(pids) >= want:
            break
    return pids


def booted_pids(master, count):
    """The pids of the first ``count`` workers to boot (waiting for them)."""
    master.wait_for(BOOTED, count=count)
    return [int(match[1]) for match in master.matches(BOOTED)[:count]]


class Load:
    """Client threads sending GET /who until stopped: new connections and keep-alive both.

    A keep-alive client retries once when a reused connection is closed before any byte
    of the response arrives, as RFC 9112 section 9.3.1 allows for idempotent requests and
    real clients (browsers, urllib3) do; such retries are counted apart, never as failures.
    """

    def __init__(self, address, threads=2, max_seconds=60):
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
                conn = http.client.HTTPConnection(*self.address, timeout=WAIT)
            try:
                conn.request("GET", "/who")
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
            time.sleep(0.002)  # pacing, so the load leaves the workers some CPU
        if conn is not None:
            conn.close()

    def answered(self, predicate):
        """How many responses so far have a body for which ``predicate(body)`` holds."""
        with self.lock:
            return sum(1 for body in self.bodies if predicate(body))

    def stop(self):
        self.stopped.set()
        for thread in self.threads:
            thread.join(WAIT)
        return self


# -- workers ------------------------------------------------------------------------------------

def test_workers_serve_concurrently_with_web_concurrency(processes):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0",
                                  env=environment(WEB_CONCURRENCY="3"))
    address = master.address()
    workers = booted_pids(master, 3)
    pids = pids_seen(address, 3)
    assert len(pids) >= 2 and pids <= set(workers)
    assert master.pid not in pids
    assert who(address)[2] == "True"  # wsgi.multiprocess
    master.signal(signal.SIGTERM)
    assert master.exit_code() == 0


def test_reuse_port_gives_each_worker_its_own_socket(processes):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--reuse-port")
    address = master.address()
    workers = booted_pids(master, 2)
    assert pids_seen(address, 2) == set(workers)  # the kernel hashes over both sockets
    master.signal(signal.SIGTTOU)  # a slot's own socket goes with its worker
    master.wait_for(r"worker \(pid \d+\) exited with status 0")
    assert len({who(address)[1] for _ in range(20)}) == 1
    master.signal(signal.SIGTERM)
    assert master.exit_code() == 0


def test_killed_worker_is_replaced_while_the_other_serves(processes):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2")
    address = master.address()
    victim, survivor = booted_pids(master, 2)
    os.kill(victim, signal.SIGKILL)
    load = Load(address, threads=1)
    master.wait_for(rf"worker \(pid {victim}\) was killed by SIGKILL")
    replacement = int(master.wait_for(BOOTED, count=3)[1])
    assert replacement not in (victim, survivor)
    wait_until(lambda: load.answered(lambda body: int(body.split()[1]) == replacement),
               what="the load to reach the replacement worker")
    load.stop()
    assert load.failures == [] and load.bodies
    assert pids_seen(address, 2) == {survivor, replacement}


def test_worker_that_loads_after_its_master_died_stops_with_one_line(processes, project):
    # The master dies (SIGKILL, the OOM killer) while a worker still imports the app. Once
    # loaded, the worker finds no master to report to: it must say so and stop, not crash.
    release = project / "release"
    os.mkfifo(release)
    master = processes.greenserve("waits_at_import:app", "-b", "127.0.0.1:0", "--supervise",
                                  env=environment(GS_TEST_RELEASE=str(release)))
    worker = int(master.wait_for(STARTED)[1])
    master.wait_for("IMPORTING")
    master.signal(signal.SIGKILL)
    assert master.exit_code() == -signal.SIGKILL
    with open(release, "wb"):
        pass  # the worker's import now ends
    # The worker holds the master's stderr: the stream ends when the worker has exited.
    output = master.output()
    assert f"worker (pid {worker}): the master (pid {master.pid}) is gone; stopping" in output
    assert "Traceback" not in output
    wait_until(lambda: not running(worker), what=f"worker {worker} to exit")


def running(pid):
    """True while ``pid`` exists and is not a zombie (an orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def release_importers(fifo):
    """Let every waits_at_import worker that has the FIFO open finish importing; False if
    none has it open yet."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: no reader yet
        return False
    os.close(fd)  # the readers' read() now ends
    return True


def children(pid):
    """The pids of ``pid``'s living children."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry))
    return found


def test_reloads_in_a_row_stop_the_workers_still_loading(processes, project):
    # Each SIGHUP (or --reload save) while the previous reload's workers still load the app
    # supersedes them: they are stopped, not left to load alongside the next set.
    release = project / "release"
    os.mkfifo(release)
    master = processes.greenserve("waits_at_import:app", "-b", "127.0.0.1:0", "-w", "2",
                                  env=environment(GS_TEST_RELEASE=str(release)))
    master.wait_for(STARTED, count=2)
    for reload in range(1, 4):
        master.signal(signal.SIGHUP)
        master.wait_for(STARTED, count=2 + 2 * reload)
    started = [int(match[1]) for match in master.matches(STARTED)]
    for pid in started[:-2]:
        master.wait_for(rf"worker \(pid {pid}\) was killed by SIGKILL")
    def released_and_booted():
        release_importers(release)  # again each time: a worker may open the FIFO later
        return len(master.matches(BOOTED)) >= 2

    wait_until(released_and_booted, what="the last two workers to boot")
    assert {int(match[1]) for match in master.matches(BOOTED)} == set(started[-2:])
    assert get(master.address(), "/")[:2] == (200, "loaded\n")
    assert children(master.pid) == set(started[-2:])


def test_unloadable_app_exits_with_one_clear_line(processes):
    master = processes.greenserve("needsdep:app", "-b", "127.0.0.1:0", "-w", "2")
    assert master.exit_code() == 2
    master.wait_for("greenserve: error:")
    last = master.text().strip().splitlines()[-1]
    assert last == ("greenserve: error: importing 'needsdep' failed: ModuleNotFoundError: No "
                    "module named 'gs_not_installed_anywhere'")
    assert len(master.matches(STARTED)) == 2  # no fork loop


def test_blocked_worker_has_its_stacks_logged_and_is_replaced(processes):
    # --timeout also bounds loading the app, which takes well under a second, unless the
    # machine is very busy: 5 s leaves room for that.
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "--timeout", "5")
    address = master.address()
    first = booted_pids(master, 2)
    spinner = threading.Thread(target=lambda: _swallow(get, address, "/spin"), daemon=True)
    spinner.start()
    blocked = int(master.wait_for(r"worker \(pid (\d+)\): its hub has been blocked for "
                                  r"[\d.]+s \(--timeout 5\)")[1])
    assert blocked in first
    master.wait_for(r"\[CRITICAL\] worker \(pid \d+\): the hub was blocked")
    master.wait_for(r'webapp\.py", line \d+, in spin_forever')
    master.wait_for(rf"worker \(pid {blocked}\) was killed by SIGKILL after its hub was "
                    r"blocked")
    master.wait_for(BOOTED, count=3)
    assert get(address)[0] == 200


# -- signals -------------------------------------------------------------------------------------

def test_hup_under_load_drops_nothing_and_loads_new_code(processes, reloadable):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2")
    address = master.address()
    old = set(booted_pids(master, 2))
    load = Load(address, threads=2)
    wait_until(lambda: load.answered(lambda body: body.startswith("one ")) >= 20,
               what="the load to be served by the first code")
    # A different length too: a .pyc is trusted when the source's mtime and size match.
    source = reloadable.read_text()
    reloadable.write_text(source.replace('VERSION = "one"', 'VERSION = "second"'))
    master.signal(signal.SIGHUP)
    master.wait_for(r"worker \(pid \d+\) exited with status 0", count=2)
    # The old workers are gone: every response from now on comes from the new code.
    seen = load.answered(lambda body: body.startswith("second "))
    wait_until(lambda: load.answered(lambda body: body.startswith("second ")) >= seen + 20,
               what="the load to be served by the new code")
    load.stop()
    assert load.failures == [], load.failures
    assert load.bodies[-1].startswith("second ")
    version, pid, _ = who(address)
    assert version == "second" and pid not in old
    print(f"HUP under load: {len(load.bodies)} requests, 0 failed, "
          f"{load.retries} stale keep-alive retries")


def test_failed_reload_keeps_the_old_workers(processes, reloadable):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "--metrics-bind", "127.0.0.1:0")
    address = master.address()
    admin = master.wait_for(r"Admin listener at http://127\.0\.0\.1:(\d+)")
    admin = ("127.0.0.1", int(admin[1]))
    old = set(booted_pids(master, 2))
    # (The master logs "booted" just before it marks itself ready.)
    wait_until(lambda: readiness(admin) == (200, "ready"), what="ready")
    reloadable.write_text("def broken(:\n")
    master.signal(signal.SIGHUP)
    master.wait_for(r"cannot load the app: .*SyntaxError.*; the previous worker keeps "
                    r"serving", count=2)
    assert pids_seen(address, 2) <= old
    assert master.running()
    # The old workers serve as before: a readiness probe must not take them out of service
    # (nor does the master retry the broken code until the next reload).
    wait_until(lambda: readiness(admin) == (200, "ready"), what="ready again")
    assert "next attempt" not in master.text()


def readiness(admin):
    conn = http.client.HTTPConnection(*admin, timeout=WAIT)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        return response.status, response.read().decode().strip()
    finally:
        conn.close()


def test_workers_dying_before_they_boot_stop_the_master(processes, project):
    # Not an exception greenserve could report: the process just ends at import.
    (project / "dies.py").write_text("import os\nos._exit(7)\n")
    master = processes.greenserve("dies:app", "-b", "127.0.0.1:0", "-w", "2")
    assert master.exit_code(timeout=WAIT * 3) == 2
    last = master.text().strip().splitlines()[-1]
    assert last.startswith("greenserve: error: ") and "exited with status 7" in last
    assert len(master.matches(STARTED)) < 10  # it gave up, not forked for ever


def test_a_booted_worker_exiting_with_status_3_is_a_crash_not_a_load_error(processes,
                                                                         project):
    (project / "exits3.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    if environ['PATH_INFO'] == '/bye':\n"
        "        os._exit(3)\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getpid()).encode()]\n")
    master = processes.greenserve("exits3:app", "-b", "127.0.0.1:0", "--supervise")
    address = master.address()
    [first] = booted_pids(master, 1)
    with pytest.raises((http.client.HTTPException, OSError)):
        get(address, "/bye")
    # "; starting a new one", or "while starting" when it lived under a second: a crash
    # either way, as for any other status.
    master.wait_for(rf"worker \(pid {first}\) exited with status 3[; ]")
    master.wait_for(BOOTED, count=2)
    assert "cannot load the app" not in master.text()
    status, body, _ = get(address)
    assert status == 200 and int(body) != first


def test_sigterm_lets_a_slow_request_finish(processes, project):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "--graceful-timeout", "60")
    address = master.address()
    booted_pids(master, 2)
    held = HeldRequest(master, address, project)
    master.signal(signal.SIGTERM)
    master.wait_for(r"SIGTERM received")
    # The other worker, idle, has nothing to wait for; the held request keeps its own alive.
    master.wait_for(r"worker \(pid \d+\) exited with status 0")
    assert master.running() and not held.done()
    held.release()
    status, body, connection = held.response()
    assert status == 200 and connection == "close"
    assert master.exit_code() == 0  # well inside the 60 s graceful timeout


def test_ctrl_c_reaches_the_group_but_only_the_master_acts(processes, project):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "--graceful-timeout", "60")
    address = master.address()
    booted_pids(master, 2)
    held = HeldRequest(master, address, project)
    master.signal_group(signal.SIGINT)  # what a terminal's Ctrl-C does
    master.wait_for(r"SIGINT received")
    master.wait_for(r"worker \(pid \d+\) exited with status 0")
    assert master.running() and not held.done()  # the workers ignored the SIGINT itself
    held.release()
    assert held.response()[0] == 200
    assert master.exit_code() == 0


def test_sigquit_stops_at_once(processes, project):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "--graceful-timeout", "60")
    address = master.address()
    booted_pids(master, 2)
    held = HeldRequest(master, address, project)  # never released
    master.signal(signal.SIGQUIT)
    assert master.exit_code(timeout=WAIT) == 0  # long before the 60 s graceful timeout
    assert held.cut()  # its connection was cut


def test_ttin_and_ttou_change_the_worker_count(processes):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--supervise")
    address = master.address()
    first = booted_pids(master, 1)
    assert who(address)[2] == "False"  # one worker: not multiprocess
    master.signal(signal.SIGTTIN)
    master.wait_for(r"SIGTTIN received; 2 worker\(s\) now")
    second = booted_pids(master, 2)[1]
    assert pids_seen(address, 2) == {first[0], second}
    master.signal(signal.SIGTTOU)
    master.wait_for(rf"stopping worker \(pid {second}\): one worker fewer")
    master.wait_for(rf"worker \(pid {second}\) exited with status 0")
    assert {who(address)[1] for _ in range(10)} == {first[0]}


def test_max_requests_recycles_without_failures(processes):
    master = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--supervise",
                                  "--max-requests", "10", "--max-requests-jitter", "5")
    address = master.address()
    booted_pids(master, 1)
    pids, failures = [], []
    deadline = time.monotonic() + 60  # about 40 requests, taking a second or two
    while len(set(pids)) < 3 and time.monotonic() < deadline:
        try:
            pids.append(who(address)[1])
        except OSError as exc:
            failures.append(repr(exc))
    assert failures == []
    assert len(set(pids)) >= 3, master.text()
    master.wait_for(r"served its --max-requests; starting its replacement", count=2)


# -- inherited listeners --------------------------------------------------------------------------

def _listening_socket():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def test_systemd_socket_activation(processes):
    sock = _listening_socket()
    try:
        # Set LISTEN_PID to the pid that execs greenserve, as systemd does, and put the
        # socket at descriptor 3.
        launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                    "os.environ['LISTEN_PID'] = str(os.getpid()); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'greenserve', "
                    "*sys.argv[2:]])")
        master = processes.start([sys.executable, "-c", launcher, sock.fileno(), "webapp:app",
                                  "-w", "2"],
                                 env=environment(LISTEN_FDS="1"), pass_fds=[sock.fileno()])
        port = sock.getsockname()[1]
        assert master.address() == ("127.0.0.1", port)
        booted_pids(master, 2)
        assert get(("127.0.0.1", port))[0] == 200
        assert "127.0.0.1:8000" not in master.text()  # the default bind is not used
        master.signal(signal.SIGTERM)
        assert master.exit_code() == 0
    finally:
        sock.close()


def test_bind_inherited_fd(processes):
    sock = _listening_socket()
    try:
        master = processes.greenserve("webapp:app", "-b", f"fd://{sock.fileno()}", "-w", "2",
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
