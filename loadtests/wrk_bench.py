"""The throughput/latency method, with wrk (described in loadtests/README.md).

For each scenario the servers are alternated A B C A B C ...; each run starts its server fresh,
pinned to the first CPU, warms it up, then measures with one wrk thread pinned to the next CPU
(``-d8s --latency --timeout 5s``). The median of the runs is reported with p50 and p99, the
server's CPU time per request, and ratios against gevent.pywsgi+TCP_NODELAY (or the first
server) from the same invocation. The ``idle-rss`` row measures memory per idle keep-alive
connection instead (loadtests/idle_rss.py). With ``--workers N`` > 1 the server is not pinned,
and each run also reports how connections and CPU time were shared among its workers.
"""

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

from loadtests import idle_rss
from loadtests.errors import ServerError, UsageError
from loadtests.servers import (
    DEFAULT_APP,
    SERVERS,
    Server,
    connections_per_worker,
    cpu_plan,
    own_cpu_seconds,
    percent_shares,
    pinned,
    usable_servers,
    worker_pids,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = {  # name -> (path, connections, extra wrk args)
    "hello": ("/", 64, []),
    "hello-close": ("/", 64, ["-H", "Connection: close"]),
    "64k": ("/64k", 64, []),
    "stream": ("/stream", 64, []),
    "echo-4k": ("/echo", 64, ["-s", os.path.join(HERE, "echo4k.lua")]),
    "sleep-c1000": ("/sleep", 1000, []),
}
IDLE = "idle-rss"  # not a wrk scenario: KiB of server RSS per idle keep-alive connection
ALL_SCENARIOS = list(SCENARIOS) + [IDLE]
DEFAULT_SERVERS = "greenserve,gevent-pywsgi,gevent-pywsgi-nodelay,gunicorn-gevent"
BASELINE = "gevent-pywsgi-nodelay"
OURS = "greenserve"  # the summary table gives its ratio to each peer
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def add_arguments(p):
    p.add_argument(
        "--scenarios",
        default="hello,hello-close",
        help=f"comma-separated from: {', '.join(ALL_SCENARIOS)}; or all "
        "(default hello,hello-close)",
    )
    p.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"comma-separated from: {', '.join(SERVERS)}; or all (default {DEFAULT_SERVERS}); "
        "a peer that is not installed is skipped",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes per server (default 1); above 1 the server is not pinned, "
        "servers without workers are skipped, and each run reports the workers' shares",
    )
    p.add_argument(
        "--idle-connections",
        type=int,
        default=1000,
        help=f"idle keep-alive connections opened in the {IDLE} row (default 1000)",
    )
    p.add_argument(
        "--runs", type=int, default=3, help="measured runs per server and scenario (default 3)"
    )
    p.add_argument(
        "--duration",
        type=int,
        default=8,
        help="whole seconds per measured run (default 8; wrk takes whole seconds)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="whole seconds of warm-up per run (default 2; 0 = none)",
    )
    p.add_argument(
        "--app",
        default=DEFAULT_APP,
        help=f"WSGI app serving the scenario paths (default {DEFAULT_APP})",
    )
    p.add_argument(
        "--out", default=os.path.join("results", "wrk"), help="where wrk.md and wrk.json go"
    )
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin with taskset")


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(output):
    """req/s, p50/p99 in ms, and error counts from wrk --latency output."""
    out = {
        "rps": None,
        "p50_ms": None,
        "p99_ms": None,
        "socket_errors": [0, 0, 0, 0],
        "non_2xx": 0,
        "requests": None,
    }
    for line in output.splitlines():
        line = line.strip()
        if m := re.match(r"Requests/sec:\s+([\d.]+)", line):
            out["rps"] = float(m.group(1))
        elif m := re.match(r"(50|99)\.000%\s+(\S+)|(50|99)%\s+(\S+)", line):
            pct, val = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            out[f"p{pct}_ms"] = _ms(val)
        elif line.startswith("Socket errors:"):
            out["socket_errors"] = [
                int(n) for n in re.findall(r"\d+", line)
            ]  # connect read write timeout
        elif m := re.match(r"Non-2xx or 3xx responses:\s+(\d+)", line):
            out["non_2xx"] = int(m.group(1))
        elif m := re.match(r"(\d+) requests in", line):
            out["requests"] = int(m.group(1))
    return out


def _wrk(url, conns, extra, seconds, cpus, timeout_s=5, halfway=None):
    """wrk's output; ``halfway()`` is called once, half-way through the run."""
    wrk = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", f"{timeout_s}s"]
    argv = pinned(wrk + extra + [url], cpus)
    # wrk stops itself after -d; the bound only catches a wedged wrk.
    bound = seconds + timeout_s + 20
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        if halfway:
            try:
                proc.wait(timeout=seconds / 2)
            except subprocess.TimeoutExpired:
                halfway()
        out, err = proc.communicate(timeout=bound)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        first = ((err or out).strip().splitlines() or ["no output"])[0]
        raise ServerError(f"wrk exited with status {proc.returncode}: {first}")
    return out


def cpu_us_per_request(cpu_seconds, requests):
    """Server CPU microseconds per request (None without requests)."""
    return round(cpu_seconds / requests * 1e6, 1) if requests else None


def worker_shares(pids, cpu_before, cpu_after, conns, waiting=0):
    """The per-worker part of a run's result: connections held (and those still waiting to be
    accepted), and each worker's share of CPU time."""
    cpu = [max(0.0, cpu_after.get(p, cpu_before.get(p, 0.0)) - cpu_before.get(p, 0.0))
           for p in pids]
    return {"pids": pids, "conns": conns, "waiting": waiting, "cpu_s": [round(c, 3) for c in cpu],
            "cpu_share": percent_shares(cpu)}


def format_workers(name, workers):
    """``greenserve workers: conns [31, 33], cpu [49%, 51%]``."""
    conns = workers.get("conns")
    held = "(not sampled)" if conns is None else str(conns)
    if workers.get("waiting"):
        held += f" and {workers['waiting']} not accepted yet"
    shares = workers.get("cpu_share")
    cpu = "[" + ", ".join(f"{x}%" for x in shares) + "]" if shares else "(no CPU time)"
    return f"{name} workers: conns {held}, cpu {cpu}"


def one_run(server_name, scenario, args, server_cpus, load_cpus):
    if scenario == IDLE:
        with Server(server_name, app=args.app, cpus=server_cpus, workers=args.workers) as server:
            return idle_rss.measure(server, args.idle_connections)
    path, conns, extra = SCENARIOS[scenario]
    with Server(server_name, app=args.app, cpus=server_cpus, workers=args.workers) as server:
        url = server.url + path
        if args.warmup > 0:
            _wrk(url, conns, extra, args.warmup, load_cpus)
        pids = worker_pids(server.proc.pid, server.port) if args.workers > 1 else []
        sampled = {}

        def sample_connections():
            sampled["conns"], sampled["waiting"] = connections_per_worker(pids, server.port)

        cpu0, own0 = server.cpu_seconds(), own_cpu_seconds(pids)
        out = _wrk(url, conns, extra, args.duration, load_cpus,
                   halfway=sample_connections if pids else None)
        cpu, own1 = server.cpu_seconds() - cpu0, own_cpu_seconds(pids)
        result = parse_wrk(out)
        result["server_cpu_s"] = round(cpu, 3)
        result["cpu_us_per_req"] = cpu_us_per_request(cpu, result["requests"])
        result["rss_mib"] = round(server.rss_bytes() / 2**20, 1)
        if pids:
            result["workers"] = worker_shares(pids, own0, own1, sampled.get("conns"),
                                              sampled.get("waiting", 0))
    return result


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(results, servers, scenarios):
    """Markdown: one row per scenario x server with medians and ratios vs the baseline."""
    base = BASELINE if BASELINE in servers else servers[0]
    lines = [
        f"| scenario | server | req/s (median) | p50 ms | p99 ms | server CPU µs/req "
        f"| req/s vs {base} | p99 vs {base} | errors c/r/w/t, non-2xx | runs req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sc in scenarios:
        if sc == IDLE:
            continue
        b = results[sc].get(base, {})
        for name in servers:
            r = results[sc].get(name)
            if not r or r.get("error"):
                why = (r or {}).get("error", "?")
                lines.append(f"| {sc} | {name} | - | - | - | - | - | - | - | failed: {why} |")
                continue
            ratio = f"{r['rps'] / b['rps']:.2f}x" if b.get("rps") and r["rps"] else "-"
            p99r = f"{r['p99_ms'] / b['p99_ms']:.2f}x" if b.get("p99_ms") and r["p99_ms"] else "-"
            runs = " / ".join(f"{x:,.0f}" for x in r["runs_rps"])
            errs = "/".join(str(n) for n in r["socket_errors"]) + f", {r['non_2xx']}"
            cpu = _num(r.get("cpu_us_per_req"), "{:.1f}")
            lines.append(
                f"| {sc} | {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {cpu} | {ratio} | {p99r} | {errs} | {runs} |"
            )
    return "\n".join(lines)


def _num(value, spec):
    return "-" if value is None else spec.format(value)


def idle_table(results, servers):
    """Markdown: the idle-rss row, one line per server."""
    lines = [
        "| server | KiB per idle connection (median) | connections | RSS before / after MiB "
        "| fresh request ms | closed by the server | runs KiB |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in servers:
        r = results.get(name)
        if not r or r.get("error"):
            why = (r or {}).get("error", "?")
            lines.append(f"| {name} | - | - | - | - | - | failed: {why} |")
            continue
        runs = " / ".join(f"{x:.2f}" for x in r["runs_kib"])
        lines.append(
            f"| {name} | {r['kib_per_conn']:.2f} | {r['connections']:,} "
            f"| {r['rss_before_mib']:.1f} / {r['rss_after_mib']:.1f} | {r['fresh_ms']:.2f} "
            f"| {r['closed_by_server']} | {runs} |"
        )
    return "\n".join(lines)


def _summary_cell(scenario, name, r, ours):
    if not r or r.get("error"):
        return "failed"
    if scenario == IDLE:
        return f"{r['kib_per_conn']:.1f} KiB"
    cell = _num(r.get("rps"), "{:,.0f}")
    if scenario == "sleep-c1000" and r.get("p99_ms") is not None:
        cell += f" (p99 {r['p99_ms']:.0f} ms)"
    if name != OURS and ours and not ours.get("error") and ours.get("rps") and r.get("rps"):
        cell += f" [{ours['rps'] / r['rps']:.2f}x]"
    return cell


def summary_table(results, servers, scenarios):
    """Markdown: one row per scenario, one column per server (req/s, or KiB for idle-rss); in
    brackets greenserve's req/s over that server's."""
    lines = ["| scenario | " + " | ".join(servers) + " |", "|---|" + "---:|" * len(servers)]
    for sc in scenarios:
        ours = results[sc].get(OURS)
        cells = [_summary_cell(sc, name, results[sc].get(name), ours) for name in servers]
        lines.append(f"| {sc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worker_lines(results, servers, scenarios):
    """``<scenario> run <i>: <server> workers: conns [..], cpu [..]`` for each multi-worker run."""
    lines = []
    for sc in scenarios:
        for name in servers:
            for i, run in enumerate((results[sc].get(name) or {}).get("runs", []), 1):
                if run.get("workers"):
                    lines.append(f"{sc} run {i}: {format_workers(name, run['workers'])}")
    return lines


def _aggregate(scenario, runs):
    """The median figures of one server's runs in one scenario."""
    if scenario == IDLE:
        return {
            "kib_per_conn": _median([r["kib_per_conn"] for r in runs]),
            "connections": runs[0]["connections"],
            "rss_before_mib": _median([r["rss_before_mib"] for r in runs]),
            "rss_after_mib": _median([r["rss_after_mib"] for r in runs]),
            "fresh_ms": _median([r["fresh_ms"] for r in runs]),
            "closed_by_server": sum(r["closed_by_server"] for r in runs),
            "runs_kib": [r["kib_per_conn"] for r in runs],
            "runs": runs,
        }
    return {
        "rps": _median([r["rps"] for r in runs]),
        "p50_ms": _median([r["p50_ms"] for r in runs]),
        "p99_ms": _median([r["p99_ms"] for r in runs]),
        "cpu_us_per_req": _median([r.get("cpu_us_per_req") for r in runs]),
        "socket_errors": [sum(col) for col in zip(*(r["socket_errors"] for r in runs))],
        "non_2xx": sum(r["non_2xx"] for r in runs),
        "runs_rps": [r["rps"] or 0 for r in runs],
        "rss_mib": _median([r["rss_mib"] for r in runs]),
        "runs": runs,
    }


def _names(text, known, what):
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(known)
    bad = [s for s in names if s not in known]
    if bad or not names:
        raise UsageError(
            f"unknown {what} {', '.join(bad) or '(none)'}; choose from {', '.join(known)}, or all"
        )
    return names


def _progress(sc, i, runs, name, r, seconds):
    if sc == IDLE:
        return (
            f"  {sc} run {i}/{runs} {name:<22} {r['kib_per_conn']:>8.2f} KiB per idle "
            f"connection ({r['connections']:,} opened in {r['opened_s']} s, fresh request "
            f"{r['fresh_ms']} ms, closed by the server {r['closed_by_server']})  ({seconds:.0f} s)"
        )
    line = (
        f"  {sc} run {i}/{runs} {name:<22} {r['rps'] or 0:>10,.0f} req/s  p50 "
        f"{r['p50_ms']} ms  p99 {r['p99_ms']} ms  server CPU {r['cpu_us_per_req']} µs/req  "
        f"socket errors {r['socket_errors']}  ({seconds:.0f} s)"
    )
    if r.get("workers"):
        line += "\n    " + format_workers(name, r["workers"])
    return line


def _check(args, scenarios):
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0:
        raise UsageError("--runs must be >= 1, --duration > 0, --warmup >= 0")
    if args.workers < 1 or args.idle_connections < 1:
        raise UsageError("--workers and --idle-connections must be >= 1")
    if any(sc != IDLE for sc in scenarios) and not shutil.which("wrk"):
        raise UsageError("wrk is not installed (apt-get install wrk)")
    if IDLE in scenarios:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = args.idle_connections + 64  # the connections, the warm-up one, and our own files
        if soft != resource.RLIM_INFINITY and soft < need:
            raise UsageError(
                f"--idle-connections {args.idle_connections} needs an open-file limit of at "
                f"least {need} (now {soft}; raise it with ulimit -n)"
            )


def _settings(args, server_cpus, load_cpus, load_before, scenarios):
    if args.workers > 1:
        wrk_at = f"wrk -t1 on CPU {load_cpus}" if load_cpus else "wrk -t1 unpinned"
        pin = f"{args.workers} workers per server, not pinned: {wrk_at} shares the cores with them"
    elif server_cpus:
        pin = f"server on CPU {server_cpus}, wrk -t1 on CPU {load_cpus}"
    else:
        pin = "unpinned"
    parts = []
    if any(sc != IDLE for sc in scenarios):
        parts.append(f"wrk {args.duration:g} s runs after {args.warmup:g} s warm-up")
    if IDLE in scenarios:
        parts.append(f"{IDLE}: {args.idle_connections:,} idle keep-alive connections")
    what = (f"{'; '.join(parts)}; median of {args.runs}, servers alternated, fresh server per "
            f"run, {pin}")
    return (f"{what}, app {args.app}; 1-min load average {load_before:g} before, "
            f"{os.getloadavg()[0]:.2f} after")


def main(args):
    scenarios = _names(args.scenarios, ALL_SCENARIOS, "scenario")
    servers = _names(args.servers, SERVERS, "server")
    _check(args, scenarios)
    servers, skipped = usable_servers(servers, args.workers)
    for line in skipped:
        print(line, file=sys.stderr)
    if not servers:
        raise UsageError("no server left to measure")
    server_cpus, load_cpus = cpu_plan(args.pin)
    if args.workers > 1:
        server_cpus = None  # N workers get every CPU; wrk keeps its own
    load_before = round(os.getloadavg()[0], 2)  # shared machines: say how busy it was
    per_run = {sc: (5 if sc == IDLE else args.duration + args.warmup + 1) for sc in scenarios}
    total = sum(per_run.values()) * len(servers) * args.runs
    print(
        f"wrk bench: {len(scenarios)} scenario(s) x {len(servers)} server(s) x {args.runs} runs, "
        f"about {total / 60:.1f} min",
        file=sys.stderr,
    )
    raw = {sc: {name: [] for name in servers} for sc in scenarios}
    errors = {sc: {} for sc in scenarios}
    for sc in scenarios:
        for i in range(args.runs):
            for name in servers:  # alternate A B C A B C: drift in the machine hits everyone alike
                if name in errors[sc]:
                    continue
                t0 = time.monotonic()
                try:
                    r = one_run(name, sc, args, server_cpus, load_cpus)
                except (ServerError, OSError, subprocess.TimeoutExpired) as exc:
                    errors[sc][name] = str(exc).splitlines()[0] or type(exc).__name__
                    print(f"  {sc} run {i + 1} {name}: failed: {errors[sc][name]}", file=sys.stderr)
                    continue
                raw[sc][name].append(r)
                seconds = time.monotonic() - t0
                print(_progress(sc, i + 1, args.runs, name, r, seconds), file=sys.stderr)
    results = {}
    for sc in scenarios:
        results[sc] = {}
        for name in servers:
            runs = raw[sc][name]
            if name in errors[sc] or not runs:
                results[sc][name] = {"error": errors[sc].get(name, "no run")}
            else:
                results[sc][name] = _aggregate(sc, runs)
    head = _settings(args, server_cpus, load_cpus, load_before, scenarios)
    parts = [head]
    if any(sc != IDLE for sc in scenarios):
        parts.append(table(results, servers, scenarios))
    if IDLE in scenarios:
        parts.append(
            f"{IDLE}: server RSS growth per idle keep-alive connection (after one warm-up "
            "connection; RSS summed over the server's processes)\n\n"
            + idle_table(results[IDLE], servers)
        )
    per_idle = f" (KiB per connection in {IDLE})" if IDLE in scenarios else ""
    parts.append(
        f"Summary: median req/s{per_idle}; in brackets greenserve's req/s over that server's"
        "\n\n" + summary_table(results, servers, scenarios)
    )
    shares = worker_lines(results, servers, scenarios)
    if shares:
        parts.append(
            "Workers: established connections each held half-way through the run (and those "
            "no worker had accepted yet), and each one's share of the server's CPU time during "
            "it\n\n" + "\n".join(shares)
        )
    if any(sc != IDLE for sc in scenarios):
        parts.append(
            "Errors are summed over the runs. A read error is wrk finding a connection closed "
            "when it expected more: in hello-close, gevent.pywsgi answers `Connection: close` "
            "requests without a `Connection: close` header and then closes, so wrk counts one "
            "per request (the responses themselves are complete and counted). Server CPU is "
            "the user + system time of the server's processes during the measured run, over "
            "the requests wrk counted."
        )
    text = "\n\n".join(parts) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "wrk.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "wrk.json"), "w") as f:
        json.dump({"settings": head, "skipped": skipped, "results": results}, f, indent=2)
    print(text, end="")
    return 1 if any(errors.values()) else 0
