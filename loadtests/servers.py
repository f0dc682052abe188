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


def _greenserve(app, port, workers=1):
    # Access log stays off (greenserve's default); -w and the graceful bound are explicit so a
    # GREENSERVE_* variable in the environment cannot turn this into a different benchmark.
    # Keep-alive 30 s, as gunicorn and meinheld get here (the default 5 s would close the
    # idle-rss row's connections while it measures).
    return [sys.executable, "-m", "greenserve", app, "-b", f"{HOST}:{port}",
            "-w", str(workers), "--graceful-timeout", "5", "--keep-alive", "30"]


def _gunicorn(app, port, workers=1):
    return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", str(workers),
            "--worker-connections", "10000", "--keep-alive", "30",
            "--graceful-timeout", "5", "--log-level", "warning",
            "-b", f"{HOST}:{port}", app]


def _pywsgi(app, port, workers=1):
    return [sys.executable, "-m", "loadtests.pywsgi_server", app, "--bind", f"{HOST}:{port}"]


def _pywsgi_nodelay(app, port, workers=1):
    return _pywsgi(app, port) + ["--nodelay"]


def _meinheld(app, port, workers=1):
    return [sys.executable, "-m", "loadtests.meinheld_server", app, "--bind", f"{HOST}:{port}"]


# granian runs a WSGI app in a pool of Python threads. Its own default (2.8) is half of its
# per-worker backpressure, that is (1024 // workers) // 2: 512 threads with one worker. The
# same figure is passed explicitly, so a GRANIAN_BLOCKING_THREADS variable cannot change the
# benchmark and the comparison is granian as shipped. It also bounds the sleep row: 512 threads
# x 20 sleeps/s each = at most ~10,240 req/s out of the ideal 20,000.
GRANIAN_BACKLOG = 1024


def granian_blocking_threads(workers):
    return max(1, (GRANIAN_BACKLOG // workers) // 2)


def _granian(app, port, workers=1):
    return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", HOST,
            "--port", str(port), "--workers", str(workers),
            "--backlog", str(GRANIAN_BACKLOG),
            "--blocking-threads", str(granian_blocking_threads(workers)),
            "--no-access-log", "--log-level", "warning", app]


def _waitress(app, port, workers=1):
    # Its 4 threads as shipped; the connection cap raised from 100, as the other peers get
    # 10,000 (the idle-rss and sleep-c1000 rows open 1,000).
    return [sys.executable, "-m", "waitress", f"--listen={HOST}:{port}",
            "--connection-limit=10000", app]


# name -> (argv builder, module that must import for it to run)
SERVERS = {
    "greenserve": (_greenserve, "greenserve"),
    "gunicorn-gevent": (_gunicorn, "gunicorn"),
    "gevent-pywsgi": (_pywsgi, "gevent"),
    "gevent-pywsgi-nodelay": (_pywsgi_nodelay, "gevent"),
    "meinheld": (_meinheld, "meinheld.server"),
    "granian": (_granian, "granian"),
    "waitress": (_waitress, "waitress"),
}
# Servers with a worker-process count; the others always run as one process.
MULTI_WORKER = ("greenserve", "gunicorn-gevent", "granian")
INSTALL_HINTS = {
    "greenserve": "pip install -e .",
    "gunicorn-gevent": "pip install 'greenserve[load]'",
    "gevent-pywsgi": "pip install gevent",
    "gevent-pywsgi-nodelay": "pip install gevent",
    # meinheld 1.0.2 pins greenlet<0.5, which does not build on current Python; it runs on
    # greenlet 3, so it is installed without its pinned dependencies.
    "meinheld": "pip install --no-deps meinheld",
    "granian": "pip install 'greenserve[bench]'",
    "waitress": "pip install 'greenserve[bench]'",
}


def unavailable(name, timeout=60):
    """None if server ``name`` can run here, else why not (one line, with how to install it).

    The import is tried in a child interpreter (with the children's environment): a compiled
    peer may be installed and still fail to load, and the harness itself imports no server.
    """
    module, hint = SERVERS[name][1], INSTALL_HINTS[name]
    if _missing(module.split(".")[0]):
        return f"not installed ({hint})"
    try:
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], env=child_env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"importing {module} took over {timeout} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"cannot import {module}: {last} ({hint})"
    return None


def choose_servers(names, workers, reasons):
    """(servers to run, one 'skipping ...' line per server left out), in the order given.

    ``reasons`` maps a name to why it cannot run (None when it can); a server without a
    worker count is left out when ``workers`` > 1.
    """
    kept, skipped = [], []
    for name in names:
        if reasons.get(name):
            skipped.append(f"skipping {name}: {reasons[name]}")
        elif workers > 1 and name not in MULTI_WORKER:
            skipped.append(f"skipping {name}: it runs as one process and has no workers "
                           f"setting (--workers {workers})")
        else:
            kept.append(name)
    return kept, skipped


def usable_servers(names, workers=1):
    """choose_servers() with the reasons found on this machine."""
    wanted = [n for n in names if workers == 1 or n in MULTI_WORKER]
    return choose_servers(names, workers, {n: unavailable(n) for n in wanted})


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


TCP_ESTABLISHED, TCP_LISTEN = "01", "0A"  # the kernel's state numbers, as /proc/net/tcp prints them


def parse_tcp_table(text):
    """[(local address, local port, state, inode)] from the text of /proc/net/tcp (IPv4)."""
    rows = []
    for line in text.splitlines()[1:]:  # the first line is the header
        fields = line.split()
        if len(fields) < 10:
            continue
        address, port = fields[1].split(":")
        # The kernel prints the address as one 32-bit number in host byte order.
        host = socket.inet_ntoa(struct.pack("=I", int(address, 16)))
        rows.append((host, int(port, 16), fields[3], fields[9]))
    return rows


def _tcp_table():
    with open("/proc/net/tcp") as f:
        return parse_tcp_table(f.read())


def listening_ports(pid, host=HOST):
    """TCP ports on ``host`` (IPv4) where the process tree of ``pid`` listens (Linux /proc)."""
    inodes = set()
    for p in process_tree(pid):
        inodes |= _socket_inodes(p)
    return sorted({port for address, port, state, inode in _tcp_table()
                   if state == TCP_LISTEN and inode in inodes and address == host})


def worker_pids(pid, port):
    """The processes of the server ``pid`` that serve ``port``: the descendants holding its
    listening socket (a master's other helpers left out), or ``pid`` itself when it is alone."""
    below = [p for p in process_tree(pid) if p != pid]
    if not below:
        return [pid]
    listening = {inode for _, p, state, inode in _tcp_table() if p == port and state == TCP_LISTEN}
    serving = [p for p in below if _socket_inodes(p) & listening]
    return sorted(serving or below)


def connections_per_worker(pids, port):
    """(established TCP connections to ``port`` that each process in ``pids`` holds, in order;
    established connections no process has accepted yet, waiting in the listen queue)."""
    established = [inode for _, p, state, inode in _tcp_table()
                   if p == port and state == TCP_ESTABLISHED]
    held = [len(_socket_inodes(pid) & set(established)) for pid in pids]
    return held, established.count("0")  # a socket not accepted yet has no inode


def own_cpu_seconds(pids):
    """{pid: CPU seconds of that process alone (utime + stime)} for the pids still alive."""
    out = {}
    for p in pids:
        st = _proc_stat(p, own_only=True)
        if st:
            out[p] = st[2]
    return out


def percent_shares(values):
    """Each value's share of the total in whole percent; None when the total is 0."""
    total = sum(values)
    if not total:
        return None
    return [round(100 * v / total) for v in values]


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

    def __init__(self, name, app=DEFAULT_APP, port=0, cpus=None, log_path=None, workers=1):
        if name not in SERVERS:
            raise ServerError(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")
        if workers > 1 and name not in MULTI_WORKER:
            raise ServerError(f"server {name!r} runs as one process (no workers setting)")
        self.name, self.app, self.cpus, self.workers = name, app, cpus, workers
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
        if _missing(module.split(".")[0]):
            raise ServerError(
                f"server {self.name!r} needs the Python package {module.split('.')[0]!r}, "
                f"which is not installed ({INSTALL_HINTS[self.name]})"
            )
        if self.port and port_in_use(self.port):
            raise ServerError(f"port {self.port} on {HOST} is already in use")
        argv = pinned(builder(self.app, self.port, self.workers), self.cpus)
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
