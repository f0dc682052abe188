"""The master on its own (greenserve.supervisor), with workers that serve nothing.

Each test runs this file as a script (``python test_supervisor_unit.py DIR ...``): a real
master whose workers run ``idle_worker`` below instead of an HTTP server. An idle worker
reports booted and heartbeats over the real pipe (``greenserve.ipc``); on SIGTERM it
closes its listening sockets, as a draining worker stops accepting, and waits until the
test releases it (a file appears), standing in for requests still running; on SIGQUIT it
exits at once. Real processes and signals; every wait is on a line the processes print.
"""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from procs import StderrLines

from greenserve import ipc
from greenserve.config import Config
from greenserve.errors import AppLoadError
from greenserve.log import setup_logging
from greenserve.supervisor import BOOT_ERROR, Supervisor

REPO = Path(__file__).resolve().parent.parent  # on PYTHONPATH when run as the script

WAIT = 20          # seconds: the bound on every wait in the tests
BEAT_EVERY = 0.1   # an idle worker's heartbeat; the master's --timeout is 100x that

# The master's line: a worker counts as booted once the master has read its BOOTED.
BOOTED = r"worker (\d+) \(pid (\d+)\) booted"
DRAINING = r"worker \(pid (\d+)\) draining on SIGTERM"


# -- the script: a master and its idle workers ------------------------------------------------

def say(line):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def idle_worker(directory):
    """A ``boot`` function for the Supervisor: see the module docstring."""
    def boot(sockets, info):
        stops = {signal.SIGTERM, signal.SIGQUIT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # taken by sigtimedwait below
        info.channel.send(ipc.BOOTED)
        pid = os.getpid()
        received = None
        while received is None:
            received = signal.sigtimedwait(stops, BEAT_EVERY)
            info.channel.send(ipc.BEAT)
        if received.si_signo == signal.SIGQUIT:
            say(f"worker (pid {pid}) quits on SIGQUIT")
            return 0
        for sock in sockets:
            sock.close()  # as a draining worker stops accepting
        say(f"worker (pid {pid}) draining on SIGTERM")
        releases = [directory / f"release-{pid}", directory / "release-all"]
        while not any(path.exists() for path in releases):
            # Waits for the test's file, beating; SIGQUIT cuts the drain short.
            if signal.sigtimedwait({signal.SIGQUIT}, 0.02) is not None:
                say(f"worker (pid {pid}) quits on SIGQUIT")
                return 0
            info.channel.send(ipc.BEAT)
        say(f"worker (pid {pid}) finished")
        return 0
    return boot


def unloadable_worker(sockets, info):
    """A ``boot`` function whose app cannot be loaded: it says why, as worker.run does."""
    info.channel.send(ipc.ERROR, "importing 'shop' failed:\nModuleNotFoundError: no 'café'")
    return BOOT_ERROR


def main(directory, workers, unloadable=False):
    """A master on two listeners; the second stands for systemd's, kept until exit."""
    config = Config(workers=workers, timeout=100 * BEAT_EVERY, graceful_timeout=WAIT)
    setup_logging(config)
    listeners = []
    for name in ("closing", "kept"):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listeners.append(sock)
        say(f"{name} listener on port {sock.getsockname()[1]}")
    boot = unloadable_worker if unloadable else idle_worker(directory)
    try:
        return Supervisor(config, listeners, boot, keep_listening=listeners[1:]).run()
    except AppLoadError as exc:
        say(f"master: {exc}")
        return 2


# -- the tests' side ----------------------------------------------------------------------------

class Master(StderrLines):
    """This file run as a master in its own process group; stderr collected by a thread."""

    def __init__(self, directory, workers, *extra):
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.directory = directory
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(directory), str(workers), *extra],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._collect_stderr()

    def port(self, name):
        return int(self.wait_for(rf"{name} listener on port (\d+)")[0])

    def booted(self, count):
        """(slot, pid) of the first ``count`` workers that booted, in order."""
        return [(int(slot), int(pid)) for slot, pid in self.wait_for(BOOTED, count)]

    def signal(self, signum):
        self.proc.send_signal(signum)

    def release(self, pid=None):
        (self.directory / (f"release-{pid}" if pid else "release-all")).touch()

    def exit_code(self):
        return self.proc.wait(timeout=WAIT)

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the master and any worker left
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=WAIT)


@pytest.fixture
def start(tmp_path):
    started = []

    def start(workers, *extra):
        master = Master(tmp_path, workers, *extra)
        started.append(master)
        return master

    yield start
    for master in started:
        master.kill()


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def position(master, pattern):
    """Where ``pattern`` first matches in the master's output (for ordering)."""
    found = re.search(pattern, master.text, re.MULTILINE)
    assert found, pattern
    return found.start()


def test_a_killed_worker_is_replaced_in_its_slot(start):
    master = start(2)
    workers = dict(master.booted(2))
    assert sorted(workers) == [0, 1]
    os.kill(workers[0], signal.SIGKILL)
    master.wait_for(rf"worker \(pid {workers[0]}\) was killed by SIGKILL")
    slot, replacement = master.booted(3)[2]
    assert slot == 0 and replacement != workers[0]
    assert alive(workers[1]) and alive(replacement)
    master.signal(signal.SIGTERM)
    master.wait_for(DRAINING, 2)
    master.release()
    assert master.exit_code() == 0


def test_ttin_adds_a_slot_and_ttou_drains_the_last_one(start):
    master = start(1)
    [(_, first)] = master.booted(1)
    master.signal(signal.SIGTTOU)
    master.wait_for(r"SIGTTOU ignored: one worker is the minimum")
    master.signal(signal.SIGTTIN)
    master.wait_for(r"SIGTTIN received; 2 worker\(s\) now")
    slot, second = master.booted(2)[1]
    assert slot == 1
    master.signal(signal.SIGTTOU)
    master.wait_for(rf"stopping worker \(pid {second}\): one worker fewer")
    assert master.wait_for(DRAINING) == [str(second)]  # gracefully, with SIGTERM
    master.release(second)
    master.wait_for(rf"worker \(pid {second}\) exited with status 0")
    # A barrier: the master logs this a loop turn later than any refill of slot 1.
    master.signal(signal.SIGUSR2)
    master.wait_for(r"SIGUSR2 ignored")
    assert alive(first) and re.findall(DRAINING, master.text) == [str(second)]
    assert len(re.findall(r"started worker", master.text)) == 2  # slot 1 stays empty


def test_graceful_term_waits_for_workers_and_refuses_new_connections(start):
    master = start(2)
    closing, kept = master.port("closing"), master.port("kept")
    pids = [pid for _, pid in master.booted(2)]
    master.signal(signal.SIGTERM)
    assert sorted(int(pid) for pid in master.wait_for(DRAINING, 2)) == sorted(pids)
    master.wait_for(r"closed its 1 listening socket\(s\)")
    # Every copy of the listener is closed: the kernel refuses, it does not queue.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", closing), timeout=WAIT).close()
    # The kept socket (systemd's) still takes connections into its queue.
    socket.create_connection(("127.0.0.1", kept), timeout=WAIT).close()
    # Signals that would start workers are refused while stopping.
    master.signal(signal.SIGHUP)
    master.wait_for(r"SIGHUP ignored: stopping")
    assert master.proc.poll() is None  # the master waits for its draining workers
    master.release(pids[0])
    master.wait_for(rf"worker \(pid {pids[0]}\) exited with status 0")
    assert master.proc.poll() is None
    master.release(pids[1])
    assert master.exit_code() == 0
    master.wait_for(r"master \(pid \d+\) stopped")
    assert "started worker" not in master.text.split("SIGTERM received")[1]


def test_a_second_term_stops_every_worker_at_once(start):
    master = start(2)
    master.booted(2)
    master.signal(signal.SIGTERM)
    master.wait_for(DRAINING, 2)
    master.signal(signal.SIGTERM)
    master.wait_for(r"second signal \(SIGTERM\) received; stopping every worker at once")
    master.wait_for(r"worker \(pid \d+\) quits on SIGQUIT", 2)
    assert master.exit_code() == 1


def test_hup_drains_each_old_worker_after_its_successor_booted(start):
    master = start(2)
    closing = master.port("closing")
    old = dict(master.booted(2))
    master.signal(signal.SIGHUP)
    new = dict(master.booted(4)[2:])
    assert sorted(new) == [0, 1] and not set(new.values()) & set(old.values())
    master.wait_for(DRAINING, 2)
    for slot, pid in old.items():
        # SIGTERM reaches an old worker only once its slot's successor has booted.
        booted = position(master, rf"worker {slot} \(pid {new[slot]}\) booted")
        assert position(master, rf"worker \(pid {pid}\) draining") > booted
    # A reload keeps the master's listeners: connections are queued for the new workers.
    socket.create_connection(("127.0.0.1", closing), timeout=WAIT).close()
    assert "listening socket" not in master.text
    master.release()
    master.wait_for(r"worker \(pid \d+\) exited with status 0", 2)
    assert all(alive(pid) for pid in new.values())


def test_a_worker_that_cannot_boot_stops_the_master_with_its_reason(start):
    master = start(2, "unloadable")
    assert master.exit_code() == 2
    assert master.text.rstrip().splitlines()[-1] == (
        "master: importing 'shop' failed: ModuleNotFoundError: no 'café'")
    assert len(re.findall(r"started worker \d+", master.text)) == 2  # no fork loop


FORBIDDEN_IN_MASTER = ("gevent", "greenlet", "greenserve.server", "greenserve.connection",
                       "greenserve.wsgi", "greenserve.acceptor", "greenserve.spawner",
                       "greenserve.protocol")


def test_the_master_imports_no_gevent_and_no_http_code():
    probe = "import sys, greenserve.supervisor, greenserve.ipc; print(*sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)),
                            check=True).stdout.split()
    assert "greenserve.supervisor" in loaded
    assert [name for name in loaded if name.startswith(FORBIDDEN_IN_MASTER)] == []


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), int(sys.argv[2]), unloadable="unloadable" in sys.argv))
