"""``python -m loadtests soak``: after many requests and connections, is one worker back where
it started?

Method. Each server runs as a real process, one worker, with the command every benchmark uses
(``servers.py``), pinned to the first CPU; wrk runs with one thread on the second CPU. After a
warm-up (``--warmup`` requests each way, so lazy imports and caches are paid before the first
sample) and once the server's descriptor count has settled, the first sample is taken. Then,
twice: ``--requests``/2 keep-alive requests (``wrk -t1 -c<concurrency>``), then
``--connections``/2 requests each on a new connection (the same with ``Connection: close``);
a Lua script stops wrk after that many responses (those already in flight on its other
connections still count, so a few more) and ``--max-time`` bounds each run.
After each half a sample is taken (middle, end). Every sample waits until the server has
closed what wrk left (descriptors back to the count before) and the readings have not changed
for ``--quiet-time`` (6 s: gevent retires an idle threadpool thread after 5 s), for at most
14 s more; a sample that did not settle says so.

A sample: the server's RSS (VmRSS summed over its process tree), open descriptors and OS
threads (from /proc, summed the same way), and from the app itself, live greenlets and
gc-tracked objects (``GET /debug/counts``, which only ``loadtests.apps`` serves; other apps get
"-"). The table and ``soak.md``/``soak.json`` in ``--out`` show the three samples and end minus
start. Exit status 1 if, at the end, descriptors or threads exceed the start, greenlets exceed
it by more than ``--concurrency`` (a server may keep that many for reuse after a burst), or
wrk saw socket errors or non-2xx answers: those must come back exactly; RSS may drift (the
allocator keeps freed arenas) and is reported, not judged.
"""

import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

from loadtests.errors import RunError, UsageError
from loadtests.servers import DEFAULT_APP, HOST, SERVERS, Server, cpu_plan, pinned, process_tree
from loadtests.wrk_bench import parse_wrk

# wrk counts its responses, stops its thread after the number given after "--" and says so on
# stderr; wrk itself would still sleep out -d, so the harness then sends it SIGINT, on which wrk
# prints its summary and exits.
LIMIT_REACHED = "limit reached"
STOP_AFTER_LUA = f"""\
local limit, seen = 0, 0
function init(args) limit = tonumber(args[1]) end
function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    wrk.thread:stop()
    io.stderr:write("{LIMIT_REACHED}\\n")
    io.stderr:flush()
  end
end
"""
# gevent retires a threadpool worker after 5 s idle (GEVENT_THREADPOOL_IDLE_TASK_TIMEOUT), and
# greenserve's start-up resolves its bind address on one: a sample waits out that much quiet.
QUIET_S = 6.0
SETTLE_S = 14.0  # beyond the quiet time


def add_arguments(p):
    p.add_argument("--servers", default="greenserve",
                   help=f"comma-separated from: {', '.join(SERVERS)} (default greenserve)")
    p.add_argument("--app", default=DEFAULT_APP,
                   help=f"WSGI app MODULE:APP (default {DEFAULT_APP}; greenlets are counted "
                        f"only with it)")
    p.add_argument("--requests", type=int, default=1_000_000,
                   help="keep-alive requests in all (default 1,000,000)")
    p.add_argument("--connections", type=int, default=100_000,
                   help="requests on a new connection each, in all (default 100,000)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="wrk connections at once (default 64)")
    p.add_argument("--warmup", type=int, default=2000,
                   help="requests each way before the first sample (default 2000)")
    p.add_argument("--max-time", type=int, default=300,
                   help="seconds each wrk run may take at most (default 300)")
    p.add_argument("--quiet-time", type=float, default=QUIET_S,
                   help=f"seconds the readings must stay unchanged before a sample (default "
                        f"{QUIET_S:g}: gevent retires an idle threadpool thread after 5 s)")
    p.add_argument("--out", default=os.path.join("results", "soak"),
                   help="where soak.md, soak.json and the server log go")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin with taskset")


# -- what a sample reads --------------------------------------------------------------------------

def tree_fds(pid):
    """Open descriptors over the process tree of ``pid``."""
    total = 0
    for p in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            pass
    return total


def tree_threads(pid):
    """OS threads over the process tree of ``pid``."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        except (OSError, StopIteration):
            pass
    return total


def app_counts(port):
    """The app's own counts (greenlets, gc objects), or {} if it does not serve them."""
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", "/debug/counts")
        response = conn.getresponse()
        body = response.read()
        return json.loads(body) if response.status == 200 else {}
    except (OSError, http.client.HTTPException, ValueError):
        return {}
    finally:
        conn.close()


def sample(server, label, keepalive_done, connections_done):
    pid = server.proc.pid
    out = {"sample": label, "keepalive_requests": keepalive_done,
           "new_connections": connections_done, "rss_mib": round(server.rss_bytes() / 2**20, 1),
           "fds": tree_fds(pid), "threads": tree_threads(pid)}
    counts = app_counts(server.port)  # after the fds: its own connection is not counted
    out["greenlets"] = counts.get("greenlets")
    out["gc_objects"] = counts.get("gc_objects")
    return out


def settled_sample(server, label, keepalive_done, connections_done, target_fds, quiet):
    """A sample once the server has closed what wrk left (fds down to ``target_fds``) and
    fds, threads and greenlets have not changed for ``quiet`` seconds; ``settled`` says
    whether that happened within SETTLE_S more (else the last reading is returned)."""
    deadline = time.monotonic() + quiet + SETTLE_S
    while tree_fds(server.proc.pid) > target_fds and time.monotonic() < deadline:
        time.sleep(0.1)
    steady = ("fds", "threads", "greenlets")
    current = sample(server, label, keepalive_done, connections_done)
    since = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() - since >= quiet:
            return dict(current, settled=current["fds"] <= target_fds)
        time.sleep(min(1.0, quiet))
        previous, current = current, sample(server, label, keepalive_done, connections_done)
        if any(current[k] != previous[k] for k in steady):
            since = time.monotonic()
    return dict(current, settled=False)


# -- wrk ------------------------------------------------------------------------------------------

def wrk_count(url, count, close, args, cpus, script):
    """Exactly ``count`` responses from wrk (or fewer if --max-time passes first)."""
    argv = ["wrk", "-t1", f"-c{min(args.concurrency, count)}", f"-d{args.max_time}s",
            "--timeout", "5s", "-s", script]
    if close:
        argv += ["-H", "Connection: close"]
    argv += [url, "--", str(count)]
    t0 = time.monotonic()
    proc = subprocess.Popen(pinned(argv, cpus), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        # One line on stderr: the limit was reached (or wrk failed and says why).
        said = _line_within(proc.stderr, args.max_time + 30)
        seconds = time.monotonic() - t0
        if said == LIMIT_REACHED:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        first = ((said or "") + err + out).strip().splitlines() or ["no output"]
        raise RunError(f"wrk exited with status {proc.returncode}: {first[0]}")
    result = parse_wrk(out)
    result["seconds"] = round(seconds, 2)
    return result


def _line_within(stream, timeout):
    """The first line of ``stream`` (stripped), or None at EOF or after ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else None


def soak_one(name, args, cpus, script):
    server_cpus, load_cpus = cpus
    log_path = os.path.join(args.out, f"server-{name}.log")
    phases, samples = [], []
    with Server(name, app=args.app, cpus=server_cpus, log_path=log_path) as server:
        url = f"{server.url}/"
        fresh = tree_fds(server.proc.pid)
        for close in (False, True):
            wrk_count(url, args.warmup, close, args, load_cpus, script)
        samples.append(settled_sample(server, "start", 0, 0, fresh, args.quiet_time))
        start_fds = samples[0]["fds"]
        done = {False: 0, True: 0}
        for half, label in ((1, "middle"), (2, "end")):
            for close, total in ((False, args.requests), (True, args.connections)):
                count = total // 2 if half == 1 else total - total // 2
                r = wrk_count(url, count, close, args, load_cpus, script)
                r.update(half=half, kind="new connection each" if close else "keep-alive")
                phases.append(r)
                done[close] += r["requests"] or 0
                print(f"  {name} {label}: {r['requests'] or 0:,} {r['kind']} requests in "
                      f"{r['seconds']:g} s ({r['rps'] or 0:,.0f} req/s), socket errors "
                      f"{r['socket_errors']}, non-2xx {r['non_2xx']}", file=sys.stderr)
            samples.append(settled_sample(server, label, done[False], done[True], start_fds,
                                          args.quiet_time))
    return {"server": name, "command": " ".join(SERVERS[name][0](args.app, server.port)),
            "samples": samples, "phases": phases}


# -- the report -----------------------------------------------------------------------------------

def _f(value, spec="{:,}"):
    return "-" if value is None else spec.format(value)


def _delta(end, start, spec="{:+,}"):
    return "-" if end is None or start is None else spec.format(end - start)


def table(runs):
    lines = ["| server | sample | keep-alive requests | new connections | RSS MiB | fds "
             "| threads | greenlets | gc objects |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs:
        if run.get("error"):
            lines.append(f"| {run['server']} | failed: {run['error']} |")
            continue
        for s in run["samples"]:
            label = s["sample"] + ("" if s.get("settled", True) else " (not settled)")
            lines.append(
                f"| {run['server']} | {label} | {s['keepalive_requests']:,} "
                f"| {s['new_connections']:,} | {s['rss_mib']:.1f} | {s['fds']} | {s['threads']} "
                f"| {_f(s['greenlets'])} | {_f(s['gc_objects'])} |")
        a, b = run["samples"][0], run["samples"][-1]
        lines.append(
            f"| {run['server']} | end - start | | "
            f"| {_delta(b['rss_mib'], a['rss_mib'], '{:+.1f}')} "
            f"| {_delta(b['fds'], a['fds'])} | {_delta(b['threads'], a['threads'])} "
            f"| {_delta(b['greenlets'], a['greenlets'])} "
            f"| {_delta(b['gc_objects'], a['gc_objects'])} |")
    return "\n".join(lines)


def phase_table(runs):
    lines = ["| server | half | requests | kind | seconds | req/s | socket errors c/r/w/t "
             "| non-2xx |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    for run in runs:
        for p in run.get("phases", []):
            lines.append(
                f"| {run['server']} | {p['half']} | {p['requests'] or 0:,} | {p['kind']} "
                f"| {p['seconds']:g} | {p['rps'] or 0:,.0f} "
                f"| {'/'.join(map(str, p['socket_errors']))} | {p['non_2xx']} |")
    return "\n".join(lines)


def problems(runs, spare_greenlets=0):
    """One line per thing that did not come back (or went wrong) in a run.

    A server may keep up to ``spare_greenlets`` more greenlets than at the start: those it
    keeps for reuse after a burst of that many connections (greenserve keeps some), which no
    number of further requests makes grow.
    """
    found = []
    for run in runs:
        name = run["server"]
        if run.get("error"):
            found.append(f"{name}: {run['error']}")
            continue
        start, end = run["samples"][0], run["samples"][-1]
        for key in ("fds", "threads", "greenlets"):
            allowed = spare_greenlets if key == "greenlets" else 0
            if start[key] is not None and end[key] is not None \
                    and end[key] > start[key] + allowed:
                found.append(f"{name}: {key} grew from {start[key]} to {end[key]}")
        for p in run["phases"]:
            if any(p["socket_errors"]) or p["non_2xx"]:
                found.append(f"{name}: wrk saw socket errors {p['socket_errors']} and "
                             f"{p['non_2xx']} non-2xx answers ({p['kind']}, half {p['half']})")
    return found


# -- the command ----------------------------------------------------------------------------------

def main(args):
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in servers if s not in SERVERS]
    if unknown or not servers:
        raise UsageError(f"unknown server {', '.join(map(repr, unknown)) or '(none)'}; choose from "
                         f"{', '.join(SERVERS)}")
    if min(args.requests, args.connections, args.concurrency, args.max_time) < 1 \
            or args.warmup < 1:
        raise UsageError("--requests, --connections, --concurrency, --warmup and --max-time "
                         "must be positive")
    if args.quiet_time < 0:
        raise UsageError("--quiet-time must not be negative")
    if not shutil.which("wrk"):
        raise UsageError("wrk is not installed (apt-get install wrk)")
    cpus = cpu_plan(args.pin)
    os.makedirs(args.out, exist_ok=True)
    script = os.path.join(args.out, "stop_after.lua")
    with open(script, "w") as f:
        f.write(STOP_AFTER_LUA)
    load_before = round(os.getloadavg()[0], 2)
    runs = []
    for name in servers:
        try:
            runs.append(soak_one(name, args, cpus, script))
        except (RunError, subprocess.TimeoutExpired) as exc:
            runs.append({"server": name, "error": str(exc).splitlines()[0]})
    pin = f"server on CPU {cpus[0]}, wrk -t1 on CPU {cpus[1]}" if cpus[0] else "unpinned"
    head = (f"`python -m loadtests soak`: {args.requests:,} keep-alive requests and "
            f"{args.connections:,} new connections (wrk -c{args.concurrency}) through one "
            f"worker, app {args.app}, {pin}; samples after a {args.warmup:,}-request warm-up, "
            f"halfway and at the end; 1-min load average {load_before:g} before, "
            f"{os.getloadavg()[0]:.2f} after.")
    text = f"{head}\n\n{table(runs)}\n\n{phase_table(runs)}\n"
    with open(os.path.join(args.out, "soak.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump({"settings": head, "args": vars(args), "runs": runs}, f, indent=2)
    print(text, end="")
    found = problems(runs, spare_greenlets=args.concurrency)
    for line in found:
        print(f"soak: {line}", file=sys.stderr)
    return 1 if found else 0
