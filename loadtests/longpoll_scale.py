"""Scale benchmark: one worker holding 10,000 waiting long polls (memory and wake-up time).

    python -m loadtests.longpoll_scale [-n 10000] [--rounds 1] [--servers greenserve,...]
    python -m loadtests.longpoll_scale --profile      # where greenserve's bytes go

For each server (greenserve, gevent.pywsgi, gunicorn -k gevent; one worker each, pinned to
core 0; ``greenserve-later`` is greenserve with the app waiting through
``greenserve.respond_later`` instead of ``event.wait()``, which holds no greenlet) and the same wait/fire app (this module's ``app``): read the server's RSS (VmRSS summed
over its process tree), let a client process pinned to core 1 park N requests on one
``gevent.event.Event`` (``GET /wait``), read the RSS again -> KiB per waiting request; time a
fresh request while the N wait; then ``POST /fire`` and time until all N clients have their
answer. ``send-floor`` (not run by default) is no server at all, only the sends: the floor
under every wake-up time on the machine at hand. Prints a markdown table.

Every server is given N + HEADROOM connections (greenserve --max-connections, pywsgi's Pool,
gunicorn --worker-connections): with exactly N, the fresh request and the fire request could
not even be accepted while N requests wait. The client is a plain epoll loop rather than
greenlets so that reading 10,000 answers costs the client as little as possible.
"""

import os
import sys
import time

HOST = "127.0.0.1"
MODULE = "loadtests.longpoll_scale"  # not __name__: that is "__main__" under python -m
HEADROOM = 64
SERVERS = ("greenserve", "greenserve-later", "gevent-pywsgi", "gunicorn-gevent")
# greenserve's targets (the wake-up figure is for a machine of about 40k hello req/s a core).
TARGETS = {"kib": 8.0, "all_ms": 250.0, "fresh_ms": 100.0}

# -- the app every server runs ----------------------------------------------------------------

_state = {"event": None, "waiting": 0}


def _event():
    if _state["event"] is None:
        from gevent.event import Event  # imported late: the servers patch before loading us
        _state["event"] = Event()
    return _state["event"]


def app(environ, start_response):
    """``GET /wait`` parks until ``POST /fire``; ``GET /stats`` says how many wait."""
    path = environ["PATH_INFO"]
    if path == "/wait-later":
        return _wait_later(environ, start_response)
    if path == "/wait":
        event = _event()
        _state["waiting"] += 1
        try:
            # No timeout: a gevent Timeout would add ~0.5 KiB per request to every server's
            # figure. The harness stops each server in a finally, so nothing waits forever.
            event.wait()
        finally:
            _state["waiting"] -= 1
        body = b"fired"
    elif path == "/fire":
        # Swap in a fresh event first, so the next round's waiters park again.
        event = _event()
        _state["event"] = None
        event.set()
        body = b"ok"
    elif path == "/stats":
        body = b"%d" % _state["waiting"]
    elif path.startswith("/tracemalloc/"):
        body = _tracemalloc(path)
    else:
        body = b"pong"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _wait_later(environ, start_response):
    """``/wait`` without a greenlet while it waits (greenserve's respond_later)."""
    from greenserve import respond_later

    _state["waiting"] += 1

    def respond(ready):
        _state["waiting"] -= 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"fired"]

    return respond_later(environ, _event(), respond)


def _tracemalloc(path):
    """Profiling hooks (only with tracemalloc on): take a baseline, or report growth since it."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return b"tracemalloc is off (set PYTHONTRACEMALLOC)"
    if path == "/tracemalloc/baseline":
        _state["snapshot"] = tracemalloc.take_snapshot()
        return b"ok"
    n = max(_state["waiting"], 1)
    now = tracemalloc.take_snapshot()
    lines = [f"traced growth with {n} waiting, per waiting request:"]
    for key in ("lineno", "traceback"):
        stats = now.compare_to(_state["snapshot"], key)[:15 if key == "lineno" else 6]
        total = sum(s.size_diff for s in now.compare_to(_state["snapshot"], "filename"))
        if key == "lineno":
            lines.append(f"total traced: {total / n:.0f} B")
        for stat in stats:
            frames = stat.traceback.format()[-(2 if key == "lineno" else 12):]
            lines.append(f"{stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f} blocks  "
                         + " | ".join(f.strip() for f in frames if f.strip()))
        lines.append("")
    return "\n".join(lines).encode()


# -- servers ----------------------------------------------------------------------------------

def _server_argv(name, port, capacity):
    py = sys.executable
    if name in ("greenserve", "greenserve-later"):
        return [py, "-m", "greenserve", f"{MODULE}:app", "-b", f"{HOST}:{port}", "-w", "1",
                "--max-connections", str(capacity), "--graceful-timeout", "2"]
    if name == "gunicorn-gevent":
        return [py, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                "--worker-connections", str(capacity), "--graceful-timeout", "2",
                "--log-level", "warning", "-b", f"{HOST}:{port}", f"{MODULE}:app"]
    if name in ("gevent-pywsgi", "gevent-floor", "send-floor"):
        return [py, "-m", MODULE, "serve-" + name, str(port), str(capacity)]
    raise SystemExit(f"unknown server {name!r}")


def _serve_pywsgi(port, capacity):
    """gevent.pywsgi as loadtests/README.md describes it (patched first, Pool, no access log)."""
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import signal
    from gevent.pool import Pool
    from gevent.pywsgi import WSGIServer
    server = WSGIServer((HOST, port), app, spawn=Pool(capacity), log=None)
    gevent.signal_handler(signal.SIGTERM, server.stop, 2)
    server.serve_forever()


def _serve_floor(port, capacity):
    """The floor for any gevent server: a greenlet and a socket per request, no HTTP or WSGI.

    Only for --profile: the difference between it and greenserve is what greenserve adds.
    """
    from gevent import monkey
    monkey.patch_all()
    import gevent
    import signal
    from gevent.pool import Pool
    from gevent.server import StreamServer

    def handle(sock, _address):
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = sock.recv(8192)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            body = app({"PATH_INFO": path}, lambda status, headers: None)[0]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    server = StreamServer((HOST, port), handle, spawn=Pool(capacity))
    gevent.signal_handler(signal.SIGTERM, server.stop, 2)
    server.serve_forever()


def _serve_send_floor(port, capacity):
    """The floor of the wake-up itself: no gevent, no HTTP parser, no WSGI. One epoll loop
    parks each ``/wait`` connection and, on ``/fire``, writes the canned answer to every one
    of them in a tight loop. Its "all answered" time is what the kernel's loopback sends
    (and the client's reading of them) cost on this machine: no Python server can answer
    faster, so compare greenserve's wake-up with it rather than with a fixed figure.
    """
    import selectors
    import socket

    _raise_nofile()
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
    listener = socket.create_server((HOST, port), backlog=min(capacity, 65535))
    listener.setblocking(False)
    selector = selectors.EpollSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffers, parked = {}, []

    def reply(sock, body):
        sock.sendall(answer % (len(body), body))  # blocking: a few bytes, the buffer is empty

    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if sock is listener:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                selector.register(conn, selectors.EVENT_READ)
                buffers[conn] = b""
                continue
            data = sock.recv(4096)
            if not data:
                selector.unregister(sock)
                buffers.pop(sock, None)
                sock.close()
                continue
            buffers[sock] += data
            if b"\r\n\r\n" not in buffers[sock]:
                continue
            path = buffers[sock].split(b" ", 2)[1]
            buffers[sock] = b""
            if path == b"/wait":
                parked.append(sock)
            elif path == b"/fire":
                fired = answer % (5, b"fired")
                for waiter in parked:
                    waiter.sendall(fired)
                parked.clear()
                reply(sock, b"ok")
            elif path == b"/stats":
                reply(sock, b"%d" % len(parked))
            else:
                reply(sock, b"pong")


class ServerProcess:
    def __init__(self, name, capacity, cpu):
        import subprocess
        self.name = name
        self.port = _free_port()
        argv = _server_argv(name, self.port, capacity)
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + argv
        env = dict(os.environ, PYTHONPATH=_pythonpath())
        if name.startswith("greenserve") and os.environ.get("LONGPOLL_TRACEMALLOC"):
            env["PYTHONTRACEMALLOC"] = os.environ["LONGPOLL_TRACEMALLOC"]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while not _get(self.port, "/ping", quiet=True):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start: {self.proc.stderr.read()[-2000:]!r}")
            time.sleep(0.1)

    def rss_kib(self):
        return sum(_vmrss_kib(pid) for pid in _tree(self.proc.pid))

    def stop(self):
        import signal
        import subprocess
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue


def _pythonpath():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def _vmrss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _get(port, path, method="GET", quiet=False, timeout=5):
    """The body of one request on a fresh connection (None on failure if ``quiet``)."""
    import http.client
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path)
        return conn.getresponse().read()
    except (OSError, http.client.HTTPException):
        if quiet:
            return None
        raise
    finally:
        conn.close()


def _wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def _waiting(port):
    body = _get(port, "/stats", quiet=True)
    return int(body) if body else -1


# -- the client process ------------------------------------------------------------------------

REQUEST = b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n"


def _wait_request(name):
    return REQUEST % (b"/wait-later" if name == "greenserve-later" else b"/wait")
FIRE = b"POST /fire HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n"


def _client(port, n, request):
    """Driven over stdin/stdout: opens N waiting requests, then fires and times the answers.

    An epoll loop, not greenlets: reading 10,000 answers must cost the client little, so
    that the time measured is the server's.
    """
    import selectors
    import socket

    _raise_nofile()
    out = sys.stdout
    socks = []
    started = time.monotonic()
    for _ in range(n):
        if time.monotonic() - started > 60:
            raise SystemExit("client: opening connections took over 60 s")
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.sendall(request)
        socks.append(sock)
    print(f"opened {time.monotonic() - started:.2f}", file=out, flush=True)

    assert sys.stdin.readline().strip() == "fire"
    selector = selectors.EpollSelector()
    buffers = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    fire = socket.create_connection((HOST, port), timeout=10)
    t0 = time.perf_counter()
    fire.sendall(FIRE)
    done, last, errors = 0, t0, 0
    deadline = time.monotonic() + 30
    while done < n and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                errors += 1
                selector.unregister(sock)
                continue
            buffers[sock] += data
            if buffers[sock].endswith(b"fired"):
                last = time.perf_counter()
                done += 1
                selector.unregister(sock)
    fire.settimeout(5)
    fire.recv(4096)
    print(f"answered {done} {errors} {(last - t0) * 1000:.1f}", file=out, flush=True)
    sys.stdin.readline()  # "close": keep the sockets until the parent has read what it needs
    for sock in socks:
        sock.close()
    fire.close()


def _raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- one measurement ---------------------------------------------------------------------------

def measure(name, n, server_cpu, client_cpu, profile=False):
    import statistics
    import subprocess

    server = ServerProcess(name, n + HEADROOM, server_cpu)
    client = None
    try:
        _warm_up(server.port, _wait_request(name))
        time.sleep(0.5)
        before = server.rss_kib()
        if profile:
            _get(server.port, "/tracemalloc/baseline", timeout=120)
        argv = [sys.executable, "-m", MODULE, "client", str(server.port), str(n),
                _wait_request(name).decode()]
        if client_cpu is not None:
            argv = ["taskset", "-c", str(client_cpu)] + argv
        client = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=dict(os.environ, PYTHONPATH=_pythonpath()))
        opened = client.stdout.readline().split()
        if not opened or opened[0] != "opened":
            raise SystemExit(f"{name}: the client could not open {n} requests")
        _wait_until(lambda: _waiting(server.port) == n, 60, f"{n} waiting requests on {name}")
        time.sleep(1.0)  # let the allocator and the kernel settle
        after = server.rss_kib()
        report = _get(server.port, "/tracemalloc/report", timeout=300).decode() if profile else None
        fresh = []
        for _ in range(5):
            t = time.perf_counter()
            assert _get(server.port, "/ping") == b"pong"
            fresh.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)
        client.stdin.write("fire\n")
        client.stdin.flush()
        answered = client.stdout.readline().split()
        if not answered or answered[0] != "answered":
            raise SystemExit(f"{name}: the client did not report its answers")
        done, errors, all_ms = int(answered[1]), int(answered[2]), float(answered[3])
        client.stdin.write("close\n")
        client.stdin.flush()
        client.wait(30)
        return {"server": name, "n": n, "waiting": n, "kib": (after - before) / n,
                "before_mib": before / 1024, "after_mib": after / 1024,
                "fresh_ms": statistics.median(fresh), "fresh_max_ms": max(fresh),
                "answered": done, "errors": errors, "all_ms": all_ms, "report": report}
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait(10)
        server.stop()


def _warm_up(port, request):
    """A few requests and one small wait/fire round, so lazy imports and caches are paid
    for before the 'before' RSS reading."""
    import socket
    for _ in range(20):
        _get(port, "/ping")
    socks = [socket.create_connection((HOST, port), timeout=5) for _ in range(20)]
    for sock in socks:
        sock.sendall(request)
    _wait_until(lambda: _waiting(port) == 20, 10, "warm-up waiters")
    _get(port, "/fire", method="POST")
    for sock in socks:
        data = b""
        while not data.endswith(b"fired"):
            piece = sock.recv(4096)
            assert piece, "warm-up request lost"
            data += piece
        sock.close()


# -- the report ---------------------------------------------------------------------------------

def table(rows):
    lines = ["| server | waiting requests | RSS before -> after (MiB) | KiB per waiting request "
             "| fresh request ms (median / max of 5) | all answered after fire (ms) | answered |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['n']} | {r['before_mib']:.1f} -> {r['after_mib']:.1f} "
                     f"| {r['kib']:.1f} | {r['fresh_ms']:.1f} / {r['fresh_max_ms']:.1f} "
                     f"| {r['all_ms']:.0f} | {r['answered']}"
                     + (f" ({r['errors']} errors)" if r["errors"] else "") + " |")
    return "\n".join(lines)


def _verdict(row):
    checks = [("memory", row["kib"] <= TARGETS["kib"],
               f"{row['kib']:.1f} KiB <= {TARGETS['kib']:g}"),
              ("wake-up", row["all_ms"] <= TARGETS["all_ms"] and row["answered"] == row["n"],
               f"{row['all_ms']:.0f} ms <= {TARGETS['all_ms']:g}"),
              ("fresh", row["fresh_max_ms"] < TARGETS["fresh_ms"],
               f"{row['fresh_max_ms']:.1f} ms < {TARGETS['fresh_ms']:g}")]
    return "; ".join(f"{what} {'ok' if ok else 'MISSED'} ({text})" for what, ok, text in checks)


def main(argv=None):
    import argparse
    import shutil
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000, help="waiting requests (default 10000)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per server, alternating servers; the median run is shown")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="comma-separated: greenserve, greenserve-later, gevent-pywsgi, "
                             "gunicorn-gevent, gevent-floor (a bare gevent StreamServer), "
                             "send-floor (no server at all: the sends alone)")
    parser.add_argument("--profile", action="store_true",
                        help="run greenserve under tracemalloc and the bare gevent floor, and "
                             "print where the bytes of a waiting request go")
    args = parser.parse_args(argv)

    hard = _raise_nofile()
    if hard < args.n + HEADROOM + 100:
        raise SystemExit(f"the open-file limit ({hard}) is too low for {args.n} connections")
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 and shutil.which("taskset") \
        else (None, None)
    if args.profile:
        return _profile(args.n, server_cpu, client_cpu)
    names = [s.strip() for s in args.servers.split(",") if s.strip()]
    results = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name in names:
            row = measure(name, args.n, server_cpu, client_cpu)
            print(f"round {round_no + 1} {name}: {row['kib']:.1f} KiB/request, "
                  f"all answered in {row['all_ms']:.0f} ms, fresh {row['fresh_ms']:.1f} ms",
                  file=sys.stderr, flush=True)
            results[name].append(row)
    rows = []
    for name in names:
        runs = sorted(results[name], key=lambda r: r["all_ms"])
        row = runs[len(runs) // 2]
        if len(runs) > 1:
            row = dict(row, kib=statistics.median(r["kib"] for r in runs))
        rows.append(row)
    print(f"\n{args.n} waiting long polls, one worker pinned to CPU {server_cpu}, client on CPU "
          f"{client_cpu}; median of {args.rounds} round(s)\n")
    print(table(rows))
    for row in rows:
        if row["server"].startswith("greenserve"):
            print(f"\n{row['server']} targets: {_verdict(row)}")
    return 0


def _profile(n, server_cpu, client_cpu):
    os.environ.setdefault("LONGPOLL_TRACEMALLOC", "12")
    rows = [measure("gevent-floor", n, server_cpu, client_cpu),
            measure("greenserve", n, server_cpu, client_cpu, profile=True)]
    print(table(rows))
    print("\n(greenserve runs under tracemalloc here, so its RSS includes tracing overhead)\n")
    print(rows[1]["report"])
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        _client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode())
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-gevent-pywsgi":
        _serve_pywsgi(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-gevent-floor":
        _serve_floor(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "serve-send-floor":
        _serve_send_floor(int(sys.argv[2]), int(sys.argv[3]))
    else:
        sys.exit(main())
