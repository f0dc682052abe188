"""Start, watch and stop the servers under test: greenserve and its peers.

Each server runs in its own session (process group), pinned with taskset to the server core(s),
so that stopping it (SIGTERM, then SIGKILL after a bound) reaches every process it forked and
nothing is left behind, also when the harness is interrupted. Unless given a port, a server
binds 127.0.0.1:0 and the harness finds the port the kernel chose among its listening sockets
(there is no moment where another program could take a port we picked).
"""

import http.client
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from loadtests.errors import ServerError

HOST = "127.0.0.1"
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_APP = "loadtests.apps:app"


def _greenserve(app, port):
    # Access log stays off (greenserve's default); -w 1 and the graceful bound are explicit so a
    # GREENSERVE_* variable in the environment cannot turn this into a different benchmark.
    return [sys.executable, "-m", "greenserve", app, "-b", f"{HOST}:{port}",
            "-w", "1", "--graceful-timeout", "5"]


def _gunicorn(app, port):
    return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
            "--worker-connections", "10000", "--keep-alive", "30",
            "--graceful-timeout", "5", "--log-level", "warning",
            "-b", f"{HOST}:{port}", app]


def _pywsgi(app, port):
    return [sys.executable, "-m", "loadtests.pywsgi_server", app, "--bind", f"{HOST}:{port}"]


def _pywsgi_nodelay(app, port):
    return _pywsgi(app, port) + ["--nodelay"]


# name -> (argv builder, module that must be importable for it to run)
SERVERS = {
    "greenserve": (_greenserve, "greenserve"),
    "gunicorn-gevent": (_gunicorn, "gunicorn"),
    "gevent-pywsgi": (_pywsgi, "gevent"),
    "gevent-pywsgi-nodelay": (_pywsgi_nodelay, "gevent"),
}


def child_env():
    """Environment for every child: the harness and the cwd importable, output unbuffered."""
    env = dict(os.environ)
    paths = [PACKAGE_ROOT, os.getcwd()] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p
    ]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cpu_plan(pin=True):
    """Split the CPUs we may use: (server cpus, load-generator cpus); None means unpinned.

    One core for the server and the rest for the load side, as the wrk method measures; with a
    single CPU or no taskset both sides share everything and the summary says so.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or not shutil.which("taskset"):
        return None, None
    return cpus[:1], cpus[1:]


def pinned(argv, cpus):
    if not cpus:
        return list(argv)
    return ["taskset", "-c", ",".join(map(str, cpus))] + list(argv)


def raise_nofile(need=65536):
    """Raise our open-file limit (children inherit it) towards ``need``, as far as allowed.

    Thousands of connections (sleep-c1000, many long-poll users) need a descriptor each on
    both sides; the usual soft limit of 1024 would turn that into accept errors.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def free_port():
    """A port that was free a moment ago. Racy (someone may take it before it is used): only
    for programs that cannot bind port 0 and report what they got."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port):
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def _proc_stat(pid, own_only=False):
    """(ppid, pgid, cpu seconds incl. reaped children) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()  # the command name may contain spaces
    ticks = sum(int(x) for x in fields[11 : 13 if own_only else 15])  # utime stime [cutime cstime]
    return int(fields[1]), int(fields[2]), ticks / os.sysconf("SC_CLK_TCK")


def _all_stats():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st:
                out[int(name)] = st
    return out


def process_tree(pid):
    """pid and all its live descendants."""
    stats = _all_stats()
    children = {}
    for p, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    tree, todo = [], [pid] if pid in stats else []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def tree_rss_bytes(pid):
    """Sum of VmRSS over the process tree (shared pages counted once per process, like ps)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


def tree_cpu_seconds(pid):
    stats = _all_stats()
    return sum(stats[p][2] for p in process_tree(pid) if p in stats)


def tree_own_cpu(pid):
    """{pid: its own CPU seconds} over the tree, for processes whose parent may never reap them."""
    out = {}
    for p in process_tree(pid):
        st = _proc_stat(p, own_only=True)
        if st:
            out[p] = st[2]
    return out


def _socket_inodes(pid):
    """Inodes of the sockets the process ``pid`` has open."""
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def listening_ports(pid, host=HOST):
    """TCP ports on ``host`` (IPv4) where the process tree of ``pid`` listens (Linux /proc)."""
    inodes = set()
    for p in process_tree(pid):
        inodes |= _socket_inodes(p)
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for row in table:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: TCP_LISTEN
                continue
            address, port = local.split(":")
            # The kernel prints the address as one 32-bit number in host byte order.
            if socket.inet_ntoa(struct.pack("=I", int(address, 16))) == host:
                ports.add(int(port, 16))
    return sorted(ports)


def group_members(pgid):
    return [p for p, (_, g, _) in _all_stats().items() if g == pgid]


def kill_group(proc, grace=10.0):
    """SIGTERM the process group, wait up to ``grace`` s, then SIGKILL whatever is left."""
    if proc is None:
        return
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_members(pgid):
        proc.poll()  # reap the leader so it stops counting as a member
        time.sleep(0.05)
    for p in group_members(pgid):  # stragglers: forked workers that ignored SIGTERM
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def http_probe(port, timeout=2.0):
    """True once something answers HTTP on the port (any status: the app may not serve /)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class Server:
    """One server under test. Use as a context manager; ``stop()`` is safe to call twice."""

    def __init__(self, name, app=DEFAULT_APP, port=0, cpus=None, log_path=None):
        if name not in SERVERS:
            raise ServerError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
        self.name, self.app, self.cpus = name, app, cpus
        self.port = port  # 0: the server binds any free port; start() finds out which
        self.log_path = log_path
        self.proc = None
        self._log = None
        self.cpu_start = 0.0

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def start(self, ready_timeout=20.0):
        builder, module = SERVERS[self.name]
        if _missing(module):
            raise ServerError(
                f"server {self.name!r} needs the Python package {module!r}, which is not installed"
            )
        if self.port and port_in_use(self.port):
            raise ServerError(f"port {self.port} on {HOST} is already in use")
        argv = pinned(builder(self.app, self.port), self.cpus)
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=child_env(),
            start_new_session=True,
        )
        try:
            self._wait_ready(ready_timeout)
        except BaseException:  # also Ctrl-C while waiting: the caller never got a handle to stop
            self.stop()
            raise
        self.cpu_start = tree_cpu_seconds(self.proc.pid)
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status, last = self.proc.returncode, self._last_log_line()
                raise ServerError(f"{self.name} exited with status {status} at start: {last}")
            if not self.port:
                self.port = self._bound_port()
            if self.port and http_probe(self.port, timeout=1.0):
                return
            time.sleep(0.1)
        where = self.url if self.port else f"any port on {HOST}"
        raise ServerError(f"{self.name} did not answer on {where} within {timeout:.0f} s")

    def _bound_port(self):
        """The port the server chose (0 while it has not bound one yet)."""
        ports = listening_ports(self.proc.pid)
        if len(ports) > 1:
            listed = ", ".join(map(str, ports))
            raise ServerError(f"{self.name} listens on several ports ({listed}); give --port")
        return ports[0] if ports else 0

    def rss_bytes(self):
        return tree_rss_bytes(self.proc.pid) if self.proc else None

    def cpu_seconds(self):
        """CPU time the server tree used since it became ready."""
        return tree_cpu_seconds(self.proc.pid) - self.cpu_start if self.proc else None

    def stop(self, grace=10.0):
        kill_group(self.proc, grace)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
            self._log = None

    def _last_log_line(self):
        if not self.log_path:
            return "(no log kept)"
        if self._log not in (None, subprocess.DEVNULL):
            self._log.flush()
        with open(self.log_path, "rb") as f:
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1].strip() if lines else "(no output)"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _missing(module):
    import importlib.util

    return importlib.util.find_spec(module) is None
