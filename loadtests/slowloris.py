"""``python -m loadtests slowloris``: is a normal client still served while attackers hold
connections? greenserve and ``gunicorn -k gevent`` side by side, one attack at a time.

Method. Every server runs as a real process, one worker, pinned to the first CPU, bound to
127.0.0.1:0 (the port is read back from its log). Every client runs pinned to the second CPU:
the attackers, the pooled clients and the downloader in a child process (``slowclients.py``:
one epoll loop, or a thread per pooled client), the normal client as ``wrk -t1``. For each
attack and server:

* held attacks (``slow-bodies``, ``slow-heads``, ``slow-readers``): the server is started with
  its connection cap (greenserve ``--max-connections``, gunicorn ``--worker-connections``) equal
  to the number of attackers K. wrk measures the normal client (``--normal-connections``
  connections, each request on a new connection unless ``--normal-keepalive``) for
  ``--baseline`` seconds; then K attackers connect, and once the server holds them (its
  descriptor count says so) wrk measures again for ``--duration`` seconds. wrk's p99 covers
  the requests answered within its 5 s timeout; the others are counted as timeouts. Attackers
  keep K connections open: when the server drops one, it reconnects 50 ms later, as
  slowhttptest does (a slow reader sees the close only once the server's FIN arrives, which
  waits behind the unsent response, so readers rarely reconnect).
  Shapes: a slow body (a POST head with ``Content-Length``, then one body byte every
  ``--body-interval`` s, against ``examples.hello:app``, which never reads bodies); a slow head
  (the request line, then one header byte every ``--head-interval`` s); a slow reader (a small
  receive buffer, ``GET /big`` of ``--reader-response`` bytes, one byte read per second).
* ``pool-at-cap``: cap ``--pool``, that many keep-alive clients each sending a request every
  ``--pool-think`` s (about), and every ``--newcomer-every`` s a newcomer on a fresh connection
  timing connect-to-response (``Connection: close``, 10 s bound). A pooled client whose
  connection the server closed reconnects and retries once (as HTTP client pools do): "dropped"
  counts those, "failed" the requests that still got no answer.
* ``slow-download``: one client reads ``GET /big`` (``--download-bytes``, yielded in
  ``--download-piece`` pieces) at ``--download-rate`` bytes/s; did all of it arrive, and when.
* ``nan-timer``: with ``--keep-alive 2`` (and greenserve ``--header-timeout 3``), open an idle
  keep-alive connection and a connection that has sent half a request head, then make the app
  start a libev timer due in NaN seconds (``GET /nan-timer``), then open a second idle
  connection: are both idle connections closed after the keep-alive time, and does the partial
  head get its 408?

Every loop is bounded in time; everything runs on loopback; every process started is stopped
(SIGTERM to its process group, SIGKILL after a bound) also on Ctrl-C. The figures are written
to ``--out`` as ``slowloris.md`` and ``slowloris.json``, with each server's log. Exit status 1
if greenserve misses one of its expectations (a normal client served during each held attack,
newcomers served at the cap, the download complete, timers alive after the NaN timer).

Slow readers pin kernel memory: loopback TCP grows the server's send buffer to about 4 MB, so
each reader holds about 5 MB of socket memory until it is closed (100 readers: ~0.5 GB).
"""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

from loadtests.errors import RunError, ServerError, UsageError
from loadtests.servers import (HOST, child_env, cpu_plan, http_probe, kill_group, pinned,
                               tree_cpu_seconds, tree_rss_bytes)
from loadtests.slowclients import (NEWCOMER_TIMEOUT_S, POOL_REQUEST, STATUS, ClientProcess,
                                   exchange, select_read)
from loadtests.soak import tree_fds
from loadtests.wrk_bench import parse_wrk

HELLO_APP = "examples.hello:app"
LOAD_APP = "loadtests.apps:app"
HELD = ("slow-bodies", "slow-heads", "slow-readers")
ATTACKS = HELD + ("pool-at-cap", "slow-download", "nan-timer")
SERVER_NAMES = ("greenserve", "gunicorn-gevent")
WRK_TIMEOUT_S = 5
NAN_KEEP_ALIVE, NAN_HEADER_TIMEOUT, NAN_BOUND_S = 2, 3, 15.0
RECONNECT_S = 0.05  # an attacker dropped by the server reconnects this soon
BODY_LENGTH = 1 << 20  # what a slow body announces: far more than it will ever send
LISTENING = re.compile(r"Listening at:? http://127\.0\.0\.1:(\d+)")


def add_arguments(p):
    p.add_argument("--attacks", default=",".join(ATTACKS),
                   help=f"comma-separated from: {', '.join(ATTACKS)} (default all)")
    p.add_argument("--servers", default=",".join(SERVER_NAMES),
                   help=f"comma-separated from: {', '.join(SERVER_NAMES)} (default both)")
    p.add_argument("--duration", type=int, default=40,
                   help="seconds the normal client is measured during a held attack, and the "
                        "pool-at-cap run time (default 40: longer than the 30 s send timeout "
                        "that frees greenserve's slots from slow readers)")
    p.add_argument("--baseline", type=int, default=5,
                   help="seconds the normal client is measured before the attack (default 5)")
    p.add_argument("--normal-connections", type=int, default=8,
                   help="wrk connections of the normal client (default 8)")
    p.add_argument("--normal-keepalive", action="store_true",
                   help="the normal client keeps its connections (default: a new one per "
                        "request, as new visitors arrive)")
    p.add_argument("--bodies", type=int, default=1000,
                   help="slow-body attackers, and the connection cap (default 1000)")
    p.add_argument("--body-interval", type=float, default=20.0,
                   help="seconds between a slow body's bytes (default 20)")
    p.add_argument("--heads", type=int, default=1000,
                   help="slow-head attackers, and the connection cap (default 1000)")
    p.add_argument("--head-interval", type=float, default=3.0,
                   help="seconds between a slow head's bytes (default 3)")
    p.add_argument("--readers", type=int, default=100,
                   help="slow readers, and the connection cap (default 100; ~5 MB of kernel "
                        "memory each)")
    p.add_argument("--reader-response", type=int, default=16 << 20,
                   help="bytes each slow reader asks for (default 16 MiB)")
    p.add_argument("--pool", type=int, default=50,
                   help="pooled keep-alive clients, and the connection cap (default 50)")
    p.add_argument("--pool-think", type=float, default=1.0,
                   help="mean seconds between a pooled client's requests (default 1)")
    p.add_argument("--newcomer-every", type=float, default=1.0,
                   help="seconds between newcomers at the cap (default 1)")
    p.add_argument("--download-bytes", type=int, default=100_000_000,
                   help="size of the slow download (default 100 MB)")
    p.add_argument("--download-rate", type=int, default=100_000,
                   help="bytes/s the slow downloader reads (default 100 KB/s)")
    p.add_argument("--download-piece", type=int, default=10 << 20,
                   help="bytes the app yields at a time (default 10 MiB)")
    p.add_argument("--out", default=os.path.join("results", "slowloris"),
                   help="where slowloris.md, slowloris.json and the server logs go")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin with taskset")


# -- servers with the settings an attack needs ---------------------------------------------------

def server_argv(name, app, cap, keep_alive=None, header_timeout=None):
    """The command for one server: one worker, port 0, the cap (and timers) the attack needs.

    Everything else is each server's default, which is what is being compared. gunicorn gets
    the keep-alive servers.py gives it (30 s) unless the attack sets one; it has no header
    timeout.
    """
    if name == "greenserve":
        argv = [sys.executable, "-m", "greenserve", app, "-b", f"{HOST}:0", "-w", "1",
                "--graceful-timeout", "5", "--max-connections", str(cap)]
        if keep_alive is not None:
            argv += ["--keep-alive", str(keep_alive)]
        if header_timeout is not None:
            argv += ["--header-timeout", str(header_timeout)]
        return argv
    if name == "gunicorn-gevent":
        # --log-level info: the "Listening at" line is how the harness learns the port.
        return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                "--worker-connections", str(cap), "--keep-alive", str(keep_alive or 30),
                "--graceful-timeout", "5", "--log-level", "info", "-b", f"{HOST}:0", app]
    raise UsageError(f"unknown server {name!r}; choose from {', '.join(SERVER_NAMES)}")


class TunedServer:
    """A server process started with ``argv`` (bound to port 0); the port is read back from
    the ``Listening at`` line of its log. A context manager; ``stop()`` is safe twice."""

    def __init__(self, name, argv, cpus, log_path):
        self.name, self.argv, self.cpus, self.log_path = name, argv, cpus, log_path
        self.proc = self.port = None
        self.command = " ".join(argv)

    def __enter__(self):
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(pinned(self.argv, self.cpus), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log, env=child_env(),
                                         start_new_session=True)
        try:
            self._wait_ready(20.0)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                lines = self._log_text().strip().splitlines() or ["(no output)"]
                raise ServerError(f"{self.name} exited with status {self.proc.returncode} "
                                  f"at start: {lines[-1]}")
            if self.port is None:
                found = LISTENING.search(self._log_text())
                self.port = int(found.group(1)) if found else None
            if self.port and http_probe(self.port, timeout=1.0):
                return
            time.sleep(0.1)
        raise ServerError(f"{self.name} did not answer within {timeout:.0f} s "
                          f"(log: {self.log_path})")

    def fds(self):
        return tree_fds(self.proc.pid)

    def rss_mib(self):
        return round(tree_rss_bytes(self.proc.pid) / 2**20, 1)

    def cpu_seconds(self):
        return tree_cpu_seconds(self.proc.pid)

    def stop(self):
        kill_group(self.proc, grace=10.0)


# -- the normal client ----------------------------------------------------------------------------

def normal_client(port, seconds, args, cpus):
    """wrk -t1 against GET / for ``seconds``: req/s, p50/p99 ms, errors."""
    argv = ["wrk", "-t1", f"-c{args.normal_connections}", f"-d{seconds}s", "--latency",
            "--timeout", f"{WRK_TIMEOUT_S}s"]
    if not args.normal_keepalive:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{HOST}:{port}/")
    proc = subprocess.run(pinned(argv, cpus), capture_output=True, text=True,
                          timeout=seconds + WRK_TIMEOUT_S + 30)
    if proc.returncode != 0:
        first = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[0]
        raise RunError(f"wrk exited with status {proc.returncode}: {first}")
    result = parse_wrk(proc.stdout)
    if not result["requests"]:  # wrk prints zeros for the percentiles of nothing
        result["p50_ms"] = result["p99_ms"] = None
    return result


# -- the attacks ----------------------------------------------------------------------------------

def _held(attack, args):
    """(app, attacker count, client spec) of a held attack."""
    if attack == "slow-bodies":
        return HELLO_APP, args.bodies, {"interval": args.body_interval,
                                        "body_length": BODY_LENGTH}
    if attack == "slow-heads":
        return HELLO_APP, args.heads, {"interval": args.head_interval}
    return LOAD_APP, args.readers, {"interval": 1.0, "response": args.reader_response,
                                    "rcvbuf": 4096}


def run_held(attack, name, args, cpus, out):
    server_cpus, load_cpus = cpus
    app, count, spec = _held(attack, args)
    argv = server_argv(name, app, count)
    with TunedServer(name, argv, server_cpus, _log_path(out, attack, name)) as server:
        normal_client(server.port, 1, args, load_cpus)  # warm-up
        before = normal_client(server.port, args.baseline, args, load_cpus)
        idle_fds = _steady(server.fds)  # once the server has closed wrk's last connections
        spec.update(shape=attack, count=count, port=server.port, reconnect_delay=RECONNECT_S,
                    max_seconds=args.duration + 120)
        attackers = ClientProcess("attack", spec, load_cpus)
        try:
            attackers.expect("ready", 60)
            # Measure once the server holds the attackers (or after a bound: it may refuse).
            held = _wait_for(lambda: server.fds() - idle_fds >= count * 0.95, 30)
            fds_at_start = server.fds() - idle_fds
            cpu0 = server.cpu_seconds()
            during = normal_client(server.port, args.duration, args, load_cpus)
            cpu = server.cpu_seconds() - cpu0
            fds_at_end, rss = server.fds() - idle_fds, server.rss_mib()
            result = attackers.finish(30)
        finally:
            attackers.stop()
    return {"attack": attack, "server": name, "command": server.command, "attackers": count,
            "held_before_measuring": held, "server_conns_start": fds_at_start,
            "server_conns_end": fds_at_end, "server_cpu_s": round(cpu, 2), "server_rss_mib": rss,
            "normal_before": before, "normal_during": during, "attacker_stats": result}


def run_pool(name, args, cpus, out):
    server_cpus, load_cpus = cpus
    argv = server_argv(name, HELLO_APP, args.pool)
    with TunedServer(name, argv, server_cpus, _log_path(out, "pool-at-cap", name)) as server:
        spec = {"port": server.port, "clients": args.pool, "think": args.pool_think,
                "newcomer_every": args.newcomer_every, "seconds": args.duration}
        client = ClientProcess("pool", spec, load_cpus)
        try:
            client.expect("ready", 90)
            result = client.expect("result", args.duration + 4 * NEWCOMER_TIMEOUT_S + 60)
        finally:
            client.stop()
    return dict(json.loads(result), attack="pool-at-cap", server=name, command=server.command,
                cap=args.pool)


def run_download(name, args, cpus, out):
    server_cpus, load_cpus = cpus
    argv = server_argv(name, LOAD_APP, 1000)
    with TunedServer(name, argv, server_cpus, _log_path(out, "slow-download", name)) as server:
        spec = {"port": server.port, "bytes": args.download_bytes, "rate": args.download_rate,
                "piece": args.download_piece}
        client = ClientProcess("download", spec, load_cpus)
        bound = args.download_bytes / args.download_rate * 1.5 + 120

        def progress(word, rest):
            if word == "progress":
                print(f"  slow-download {name}: {int(rest):,} bytes", file=sys.stderr)

        try:
            client.expect("ready", 60)
            result = json.loads(client.expect("result", bound, on_line=progress))
        finally:
            client.stop()
    return dict(result, attack="slow-download", server=name, command=server.command,
                rate=args.download_rate, piece=args.download_piece)


def run_nan(name, args, cpus, out):
    server_cpus, _ = cpus
    header_timeout = NAN_HEADER_TIMEOUT if name == "greenserve" else None
    argv = server_argv(name, LOAD_APP, 1000, keep_alive=NAN_KEEP_ALIVE,
                       header_timeout=header_timeout)
    with TunedServer(name, argv, server_cpus, _log_path(out, "nan-timer", name)) as server:
        result = nan_check(server.port)
    return dict(result, attack="nan-timer", server=name, command=server.command,
                keep_alive=NAN_KEEP_ALIVE, header_timeout=header_timeout)


def nan_check(port):
    """Open an idle keep-alive connection and a half-sent head, start the NaN timer, open a
    second idle connection; then watch all three for up to NAN_BOUND_S seconds: when did
    the server answer (status) or close each one (``after_s``; None = still open)."""
    with contextlib.ExitStack() as opened:
        def connect():
            return opened.enter_context(socket.create_connection((HOST, port), timeout=5))

        def served(sock, request=POOL_REQUEST):
            if exchange(sock, request) != 200:
                raise RunError(f"the server did not answer {request.split(b' ')[1].decode()}")
            return sock

        watched = {"idle_before": (served(connect()), time.monotonic())}
        partial = connect()
        partial.sendall(b"GET / HTTP/1.1\r\nHost: nan\r\n")  # half a head: no blank line
        watched["partial_head"] = (partial, time.monotonic())
        served(connect(), b"GET /nan-timer HTTP/1.1\r\nHost: nan\r\nConnection: close\r\n\r\n")
        watched["idle_after"] = (served(connect()), time.monotonic())
        result = {key: {"after_s": None, "status": None} for key in watched}
        waiting = {sock: key for key, (sock, _) in watched.items()}
        deadline = time.monotonic() + NAN_BOUND_S
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select_read(list(waiting), deadline - time.monotonic())
            for sock in ready:
                key = waiting.pop(sock)
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                found = STATUS.match(data)
                result[key]["status"] = int(found.group(1)) if found else None
                result[key]["after_s"] = round(time.monotonic() - watched[key][1], 2)
    return result


def _steady(read, interval=0.5, timeout=10.0):
    """``read()`` once two readings ``interval`` apart agree (the last one after ``timeout``)."""
    deadline = time.monotonic() + timeout
    value = read()
    while time.monotonic() < deadline:
        time.sleep(interval)
        value, previous = read(), value
        if value == previous:
            break
    return value


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _log_path(out, attack, name):
    return os.path.join(out, f"{attack}-{name}.log")


# -- the report -----------------------------------------------------------------------------------

def _f(value, spec="{:,.0f}"):
    return "-" if value is None else spec.format(value)


def _errors(w):
    return "/".join(str(n) for n in w["socket_errors"]) + f", {w['non_2xx']}"


def tables(results, args):
    """Markdown: one table per kind of attack that ran."""
    parts = []
    held = [r for r in results if r.get("attack") in HELD]
    if held:
        mode = "keep-alive" if args.normal_keepalive else "a new connection per request"
        parts.append(
            f"Held attacks: normal client wrk -t1 -c{args.normal_connections} ({mode}), "
            f"{args.baseline} s before and {args.duration} s during the attack; server cap = "
            f"attackers; p99 of the requests answered within wrk's {WRK_TIMEOUT_S} s timeout "
            f"(t counts the others).\n\n"
            "| attack | server | attackers | server conns held start/end | normal req/s before "
            "| during | p99 ms before | during | errors during c/r/w/t, non-2xx "
            "| attacker conns dropped by server (median life s) | server CPU s during |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in held:
            if r.get("error"):
                parts[-1] += f"\n| {r['attack']} | {r['server']} | failed: {r['error']} |"
                continue
            b, d, a = r["normal_before"], r["normal_during"], r["attacker_stats"]
            parts[-1] += (
                f"\n| {r['attack']} | {r['server']} | {r['attackers']:,} "
                f"| {r['server_conns_start']:,}/{r['server_conns_end']:,} | {_f(b['rps'])} "
                f"| {_f(d['rps'])} | {_f(b['p99_ms'], '{:.2f}')} | {_f(d['p99_ms'], '{:.2f}')} "
                f"| {_errors(d)} | {a['closed_by_server']:,} "
                f"({_f(a['median_lifetime_s'], '{:.1f}')}) | {r['server_cpu_s']:.1f} |")
    pool = [r for r in results if r.get("attack") == "pool-at-cap"]
    if pool:
        parts.append(
            f"Pooled clients at the cap: {args.pool} keep-alive clients (a request every "
            f"~{args.pool_think:g} s) at a cap of {args.pool}, a newcomer every "
            f"{args.newcomer_every:g} s for {args.duration} s.\n\n"
            "| server | newcomers | newcomer p50 ms | p99 ms | max ms | newcomer failures "
            "| pooled requests | pooled dropped (retried) | pooled failed |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in pool:
            if r.get("error"):
                parts[-1] += f"\n| {r['server']} | failed: {r['error']} |"
                continue
            parts[-1] += (
                f"\n| {r['server']} | {r['newcomers']} | {_f(r['newcomer_p50_ms'], '{:.2f}')} "
                f"| {_f(r['newcomer_p99_ms'], '{:.2f}')} | {_f(r['newcomer_max_ms'], '{:.2f}')} "
                f"| {r['newcomer_failures']} | {r['pooled_requests']} | {r['pooled_dropped']} "
                f"| {r['pooled_failed']} |")
    down = [r for r in results if r.get("attack") == "slow-download"]
    if down:
        parts.append(
            f"Slow download: GET /big, {args.download_bytes:,} bytes yielded in "
            f"{args.download_piece:,}-byte pieces, read at {args.download_rate:,} bytes/s.\n\n"
            "| server | bytes received | seconds | outcome |\n|---|---:|---:|---|")
        for r in down:
            if r.get("error"):
                parts[-1] += f"\n| {r['server']} | failed: {r['error']} |"
                continue
            parts[-1] += (f"\n| {r['server']} | {r['bytes']:,} of {r['expected']:,} "
                          f"| {r['seconds']:g} | {r['outcome']} |")
    nan = [r for r in results if r.get("attack") == "nan-timer"]
    if nan:
        parts.append(
            f"Timers after a NaN timer in the hub (keep-alive {NAN_KEEP_ALIVE} s; greenserve "
            f"header timeout {NAN_HEADER_TIMEOUT} s; gunicorn has none): seconds until the "
            f"server closed or answered, '-' = still open after {NAN_BOUND_S:g} s.\n\n"
            "| server | idle conn opened before: closed after s | partial head: answer "
            "| after s | idle conn opened after: closed after s |\n|---|---:|---|---:|---:|")
        for r in nan:
            if r.get("error"):
                parts[-1] += f"\n| {r['server']} | failed: {r['error']} |"
                continue
            p = r["partial_head"]
            answer = str(p["status"]) if p["status"] else (
                "closed, no response" if p["after_s"] is not None else "none")
            parts[-1] += (
                f"\n| {r['server']} | {_f(r['idle_before']['after_s'], '{:.2f}')} "
                f"| {answer} | {_f(p['after_s'], '{:.2f}')} "
                f"| {_f(r['idle_after']['after_s'], '{:.2f}')} |")
    return "\n\n".join(parts)


def expectations(results):
    """What greenserve must do (one line each it missed); the peers are only compared."""
    missed = []
    for r in results:
        if r.get("server") != "greenserve":
            continue
        attack = r.get("attack")
        if r.get("error"):
            missed.append(f"{attack}: {r['error']}")
        elif attack in HELD and not r["normal_during"]["requests"]:
            missed.append(f"{attack}: no normal request served during the attack")
        elif attack == "pool-at-cap" and (r["newcomer_failures"] or r["pooled_failed"]):
            missed.append(f"pool-at-cap: {r['newcomer_failures']} newcomers and "
                          f"{r['pooled_failed']} pooled requests failed")
        elif attack == "slow-download" and r["bytes"] != r["expected"]:
            missed.append(f"slow-download: {r['bytes']:,} of {r['expected']:,} bytes "
                          f"({r['outcome']})")
        elif attack == "nan-timer":
            late = NAN_KEEP_ALIVE + 2
            for key in ("idle_before", "idle_after"):
                after = r[key]["after_s"]
                if after is None or after > late:
                    missed.append(f"nan-timer: {key} connection not closed within {late} s")
            p = r["partial_head"]
            if p["status"] != 408 or p["after_s"] > NAN_HEADER_TIMEOUT + 2:
                missed.append(f"nan-timer: partial head got {p['status']} after "
                              f"{p['after_s']} s, not 408 within "
                              f"{NAN_HEADER_TIMEOUT + 2} s")
    return missed


# -- the command ----------------------------------------------------------------------------------

def _estimate(attacks, servers, args):
    per = {"pool-at-cap": args.duration + 10, "nan-timer": NAN_BOUND_S + 5,
           "slow-download": args.download_bytes / args.download_rate + 5}
    held = 1 + args.baseline + args.duration + 15
    return sum(per.get(a, held) for a in attacks) * len(servers)


def _validate(args):
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [a for a in attacks if a not in ATTACKS] + [s for s in servers if s not in SERVER_NAMES]
    if bad or not attacks or not servers:
        raise UsageError(f"unknown attack or server {', '.join(map(repr, bad)) or '(none)'}; "
                         f"attacks: "
                         f"{', '.join(ATTACKS)}; servers: {', '.join(SERVER_NAMES)}")
    counts = (args.bodies, args.heads, args.readers, args.pool, args.normal_connections,
              args.duration, args.baseline, args.download_bytes, args.download_rate,
              args.download_piece, args.reader_response)
    if min(counts) < 1 or min(args.body_interval, args.head_interval, args.pool_think,
                              args.newcomer_every) <= 0:
        raise UsageError("counts, sizes, rates, durations and intervals must be positive")
    if any(a in HELD for a in attacks) and not shutil.which("wrk"):
        raise UsageError("wrk is not installed (apt-get install wrk)")
    return attacks, servers


RUNNERS = {"pool-at-cap": run_pool, "slow-download": run_download, "nan-timer": run_nan}


def main(args):
    attacks, servers = _validate(args)
    cpus = cpu_plan(args.pin)
    os.makedirs(args.out, exist_ok=True)
    load_before = round(os.getloadavg()[0], 2)
    print(f"slowloris: {len(attacks)} attack(s) x {len(servers)} server(s), about "
          f"{_estimate(attacks, servers, args) / 60:.1f} min", file=sys.stderr)
    results = []
    for attack in attacks:
        for name in servers:  # one at a time: never two servers or attacks at once
            t0 = time.monotonic()
            try:
                if attack in HELD:
                    r = run_held(attack, name, args, cpus, args.out)
                else:
                    r = RUNNERS[attack](name, args, cpus, args.out)
            except (RunError, subprocess.TimeoutExpired, ValueError) as exc:
                r = {"attack": attack, "server": name, "error": str(exc).splitlines()[0]}
            results.append(r)
            print(f"  {attack} {name}: {_one_line(r)} ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr)
    pin = f"servers on CPU {cpus[0]}, clients on CPU {cpus[1]}" if cpus[0] else "unpinned"
    head = (f"`python -m loadtests slowloris`: one worker per server, {pin}; 1-min load "
            f"average {load_before:g} before, {os.getloadavg()[0]:.2f} after. Server "
            f"commands are in slowloris.json.")
    text = head + "\n\n" + tables(results, args) + "\n"
    with open(os.path.join(args.out, "slowloris.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "slowloris.json"), "w") as f:
        json.dump({"settings": head, "args": vars(args), "results": results}, f, indent=2)
    print(text, end="")
    missed = expectations(results)
    for line in missed:
        print(f"greenserve missed: {line}", file=sys.stderr)
    return 1 if missed else 0


def _one_line(r):
    if r.get("error"):
        return f"failed: {r['error']}"
    if r["attack"] in HELD:
        d = r["normal_during"]
        return (f"normal {_f(d['rps'])} req/s p99 {_f(d['p99_ms'], '{:.2f}')} ms during "
                f"(before {_f(r['normal_before']['rps'])}), server held "
                f"{r['server_conns_end']} conns")
    if r["attack"] == "pool-at-cap":
        return (f"newcomers {r['newcomers']} p50 {r['newcomer_p50_ms']} ms max "
                f"{r['newcomer_max_ms']} ms, failed {r['newcomer_failures']}; pooled dropped "
                f"{r['pooled_dropped']} failed {r['pooled_failed']}")
    if r["attack"] == "slow-download":
        return f"{r['bytes']:,} of {r['expected']:,} bytes in {r['seconds']} s: {r['outcome']}"
    p = r["partial_head"]
    return (f"idle connection opened before closed after {r['idle_before']['after_s']} s, "
            f"opened after: {r['idle_after']['after_s']} s; partial head answered "
            f"{p['status'] or 'nothing'} after {p['after_s']} s")
