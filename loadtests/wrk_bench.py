"""The throughput/latency method, with wrk (described in loadtests/README.md).

For each scenario the servers are alternated A B C A B C ...; each run starts its server fresh,
pinned to the first CPU, warms it up, then measures with one wrk thread pinned to the next CPU
(``-d8s --latency --timeout 5s``). The median of the runs is reported with p50 and p99, and
ratios against gevent.pywsgi+TCP_NODELAY (or the first server) from the same invocation.
"""

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from loadtests.errors import ServerError, UsageError
from loadtests.servers import DEFAULT_APP, SERVERS, Server, cpu_plan, pinned

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = {  # name -> (path, connections, extra wrk args)
    "hello": ("/", 64, []),
    "hello-close": ("/", 64, ["-H", "Connection: close"]),
    "64k": ("/64k", 64, []),
    "stream": ("/stream", 64, []),
    "echo-4k": ("/echo", 64, ["-s", os.path.join(HERE, "echo4k.lua")]),
    "sleep-c1000": ("/sleep", 1000, []),
}
DEFAULT_SERVERS = "greenserve,gevent-pywsgi,gevent-pywsgi-nodelay,gunicorn-gevent"
BASELINE = "gevent-pywsgi-nodelay"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def add_arguments(p):
    p.add_argument(
        "--scenarios",
        default="hello,hello-close",
        help=f"comma-separated from: {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--servers", default=DEFAULT_SERVERS, help=f"comma-separated (default {DEFAULT_SERVERS})"
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


def _wrk(url, conns, extra, seconds, cpus, timeout_s=5):
    wrk = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", f"{timeout_s}s"]
    argv = pinned(wrk + extra + [url], cpus)
    # wrk stops itself after -d; the subprocess bound only catches a wedged wrk.
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 20)
    if proc.returncode != 0:
        first = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[0]
        raise ServerError(f"wrk exited with status {proc.returncode}: {first}")
    return proc.stdout


def one_run(server_name, scenario, args, server_cpus, load_cpus):
    path, conns, extra = SCENARIOS[scenario]
    with Server(server_name, app=args.app, cpus=server_cpus) as server:
        url = server.url + path
        if args.warmup > 0:
            _wrk(url, conns, extra, args.warmup, load_cpus)
        result = parse_wrk(_wrk(url, conns, extra, args.duration, load_cpus))
        result["rss_mib"] = round(server.rss_bytes() / 2**20, 1)
    return result


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(results, servers, scenarios):
    """Markdown: one row per scenario x server with medians and ratios vs the baseline."""
    base = BASELINE if BASELINE in servers else servers[0]
    lines = [
        f"| scenario | server | req/s (median) | p50 ms | p99 ms | req/s vs {base} "
        f"| p99 vs {base} | errors c/r/w/t, non-2xx | runs req/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for sc in scenarios:
        b = results[sc].get(base, {})
        for name in servers:
            r = results[sc].get(name)
            if not r or r.get("error"):
                why = (r or {}).get("error", "?")
                lines.append(f"| {sc} | {name} | - | - | - | - | - | - | failed: {why} |")
                continue
            ratio = f"{r['rps'] / b['rps']:.2f}x" if b.get("rps") and r["rps"] else "-"
            p99r = f"{r['p99_ms'] / b['p99_ms']:.2f}x" if b.get("p99_ms") and r["p99_ms"] else "-"
            runs = " / ".join(f"{x:,.0f}" for x in r["runs_rps"])
            errs = "/".join(str(n) for n in r["socket_errors"]) + f", {r['non_2xx']}"
            lines.append(
                f"| {sc} | {name} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                f"| {ratio} | {p99r} | {errs} | {runs} |"
            )
    return "\n".join(lines)


def main(args):
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [s for s in scenarios if s not in SCENARIOS] + [s for s in servers if s not in SERVERS]
    if bad or not scenarios or not servers:
        raise UsageError(
            f"unknown scenario/server {', '.join(bad) or '(none)'}; scenarios: "
            f"{', '.join(SCENARIOS)}; servers: {', '.join(SERVERS)}"
        )
    if not shutil.which("wrk"):
        raise UsageError("wrk is not installed (apt-get install wrk)")
    if args.runs < 1 or args.duration <= 0 or args.warmup < 0:
        raise UsageError("--runs must be >= 1, --duration > 0, --warmup >= 0")
    server_cpus, load_cpus = cpu_plan(args.pin)
    load_before = round(os.getloadavg()[0], 2)  # shared machines: say how busy it was
    total = len(scenarios) * len(servers) * args.runs * (args.duration + args.warmup + 1)
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
                except (ServerError, subprocess.TimeoutExpired) as exc:
                    errors[sc][name] = str(exc).splitlines()[0]
                    print(f"  {sc} run {i + 1} {name}: failed: {errors[sc][name]}", file=sys.stderr)
                    continue
                raw[sc][name].append(r)
                print(
                    f"  {sc} run {i + 1}/{args.runs} {name:<22} {r['rps'] or 0:>10,.0f} req/s  p50 "
                    f"{r['p50_ms']} ms  p99 {r['p99_ms']} ms  socket errors {r['socket_errors']}  "
                    f"({time.monotonic() - t0:.0f} s)",
                    file=sys.stderr,
                )
    results = {}
    for sc in scenarios:
        results[sc] = {}
        for name in servers:
            runs = raw[sc][name]
            if name in errors[sc] or not runs:
                results[sc][name] = {"error": errors[sc].get(name, "no run")}
                continue
            results[sc][name] = {
                "rps": _median([r["rps"] for r in runs]),
                "p50_ms": _median([r["p50_ms"] for r in runs]),
                "p99_ms": _median([r["p99_ms"] for r in runs]),
                "socket_errors": [sum(col) for col in zip(*(r["socket_errors"] for r in runs))],
                "non_2xx": sum(r["non_2xx"] for r in runs),
                "runs_rps": [r["rps"] or 0 for r in runs],
                "rss_mib": _median([r["rss_mib"] for r in runs]),
                "runs": runs,
            }
    pin = f"server on CPU {server_cpus}, wrk -t1 on CPU {load_cpus}" if server_cpus else "unpinned"
    head = (
        f"wrk {args.duration:g} s runs after {args.warmup:g} s warm-up, median of {args.runs}, "
        f"servers alternated, fresh server per run, {pin}, app {args.app}; 1-min load average "
        f"{load_before:g} before, {os.getloadavg()[0]:.2f} after"
    )
    note = (
        "\nErrors are summed over the runs. A read error is wrk finding a connection closed "
        "when it expected more: in hello-close, gevent.pywsgi answers `Connection: close` "
        "requests without a `Connection: close` header and then closes, so wrk counts one per "
        "request (the responses themselves are complete and counted).\n"
    )
    text = head + "\n\n" + table(results, servers, scenarios) + "\n" + note
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "wrk.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "wrk.json"), "w") as f:
        json.dump({"settings": head, "results": results}, f, indent=2)
    print(text, end="")
    return 1 if any(errors.values()) else 0
