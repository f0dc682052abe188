"""Command line: ``python -m loadtests run|compare|wrk|soak|slowloris ...``.

Exit codes: 0 ok; 1 an SLO gate (or a compared server) failed; 2 bad input or the harness could not
run; 130 interrupted. Every error is one line on stderr, and nothing started is left running.
"""

import argparse
import os
import signal
import sys

from loadtests import report, slowloris, soak, wrk_bench
from loadtests.appspec import check_app
from loadtests.errors import RunError, UsageError
from loadtests.runner import locust_missing, parse_duration, run_once
from loadtests.scenarios import SCENARIOS
from loadtests.servers import (
    DEFAULT_APP,
    SERVERS,
    child_env,
    port_in_use,
    raise_nofile,
    unavailable,
    usable_servers,
)

COMPARE_DEFAULT = "greenserve,gunicorn-gevent,gevent-pywsgi,gevent-pywsgi-nodelay"


class Interrupted(BaseException):
    """SIGTERM turned into an exception so every ``finally`` stops what it started."""


def _duration(text):
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return seconds


def _load_options(p):
    p.add_argument(
        "--scenario", default="hello", help=f"one of: {', '.join(SCENARIOS)} (default hello)"
    )
    p.add_argument("--users", type=int, default=50, help="concurrent locust users (default 50)")
    p.add_argument(
        "--spawn-rate", type=float, default=50, help="users started per second (default 50)"
    )
    p.add_argument(
        "--duration",
        type=_duration,
        default=30.0,
        dest="duration_s",
        help="run time per server, e.g. 30s, 2m (default 30s)",
    )
    p.add_argument("--out", default="results", help="output directory (default ./results)")
    p.add_argument(
        "--app", default=DEFAULT_APP, help=f"WSGI app MODULE:APP to serve (default {DEFAULT_APP})"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="locust processes (locust --processes; -1 = one per CPU); default 1",
    )
    p.add_argument(
        "--think-ms", type=float, default=0, help="mean user think time between tasks (default 0)"
    )
    p.add_argument(
        "--fail-ratio", type=float, help="SLO: exit 1 if failed/total exceeds this, e.g. 0.01"
    )
    p.add_argument("--p99-ms", type=float, help="SLO: exit 1 if p99 latency exceeds this many ms")
    p.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin server and locust with taskset",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _epilog():
    lines = ["scenarios:"] + [f"  {name:<9} {desc}" for name, (_, desc) in SCENARIOS.items()]
    return "\n".join(lines + ["servers: " + ", ".join(SERVERS)])


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m loadtests", description="Load-test greenserve and its peers."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    described = dict(epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run = sub.add_parser("run", help="one scenario against one server, with locust", **described)
    _load_options(run)
    run.add_argument(
        "--server", default="greenserve", help=f"one of: {', '.join(SERVERS)} (default greenserve)"
    )
    run.add_argument(
        "--target", help="load an already-running server instead, e.g. http://127.0.0.1:8000"
    )
    run.add_argument(
        "--port", type=int, default=0, help="port for the started server (default: a free one)"
    )

    cmp_ = sub.add_parser(
        "compare", help="one scenario against several servers, then a table and a page", **described
    )
    _load_options(cmp_)
    cmp_.add_argument(
        "--servers", default=COMPARE_DEFAULT, help=f"comma-separated (default {COMPARE_DEFAULT})"
    )
    cmp_.add_argument(
        "--from-summaries",
        nargs="+",
        metavar="SUMMARY",
        help="build the table from existing summary.json files (or run dirs); run nothing",
    )

    wrk = sub.add_parser("wrk", help="throughput and latency with wrk (pinned cores, servers alternated)")
    wrk_bench.add_arguments(wrk)

    soak_ = sub.add_parser(
        "soak", help="many requests and connections through one worker: RSS, fds, greenlets"
    )
    soak.add_arguments(soak_)

    slow = sub.add_parser(
        "slowloris",
        help="a normal client's req/s and p99 while slow clients attack, greenserve vs gunicorn",
    )
    slowloris.add_arguments(slow)
    return parser


def _validate(args):
    if args.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {args.scenario!r}; choose from {', '.join(SCENARIOS)}")
    if args.users < 1 or args.spawn_rate <= 0:
        raise UsageError("--users must be >= 1 and --spawn-rate > 0")
    if args.processes == 0 or args.processes < -1:
        raise UsageError("--processes must be -1 or >= 1")
    if locust_missing():
        raise UsageError("locust is not installed (pip install 'greenserve[load]')")
    if not getattr(args, "target", None):
        reason = check_app(args.app, env=child_env())
        if reason:
            raise UsageError(reason)


def _gate(summary, args):
    reason = report.check_slo(summary, args.fail_ratio, args.p99_ms)
    if reason:
        return f"SLO failed ({summary.get('server') or summary.get('target')}): {reason}"
    return None


def _print_summary(s, out):
    print(
        f"{s['scenario']} @ {s.get('server') or s['target']}: {s['requests']:,} requests, "
        f"{s['failures']:,} failures, {s['rps']:,.0f} req/s, p50 {s['p50_ms']} ms, "
        f"p99 {s['p99_ms']} ms, max {s['max_ms']:,.0f} ms, server RSS {s['server_rss_mib']} MiB "
        f"-> {out}"
    )


def cmd_run(args):
    if args.server not in SERVERS and not args.target:
        raise UsageError(f"unknown server {args.server!r}; choose from {', '.join(SERVERS)}")
    if args.port and port_in_use(args.port):
        raise UsageError(f"port {args.port} on 127.0.0.1 is already in use")
    _validate(args)
    reason = None if args.target else unavailable(args.server)
    if reason:
        raise UsageError(f"cannot run {args.server}: {reason}")
    summary = run_once(
        args, None if args.target else args.server, args.out, show_progress=not args.quiet
    )
    _print_summary(summary, os.path.join(args.out, "summary.json"))
    reason = _gate(summary, args)
    if reason:
        print(reason, file=sys.stderr)
        return 1
    return 0


def _write_compare(summaries, out):
    os.makedirs(out, exist_ok=True)
    table = report.compare_table(summaries)
    headline = report.headline(summaries)
    text = report.describe_run(summaries) + "\n\n" + (headline + "\n\n" if headline else "")
    text += table + "\n"
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(text)
    links = [
        (f"{s.get('server')}: locust report", os.path.join(s["server"], "report.html"))
        for s in summaries
        if s.get("server") and not s.get("error")
    ]
    with open(os.path.join(out, "compare.html"), "w") as f:
        f.write(report.compare_html(summaries, links))
    report.write_json(os.path.join(out, "compare.json"), summaries)
    return text


def cmd_compare(args):
    if args.from_summaries:
        try:
            summaries = [report.load_summary(p) for p in args.from_summaries]
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read summary: {exc}") from None
        print(_write_compare(summaries, args.out), end="")
        return 0
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if unknown or not names:
        raise UsageError(
            f"unknown server {', '.join(unknown) or '(none)'}; choose from {', '.join(SERVERS)}"
        )
    args.port, args.target = 0, None
    _validate(args)
    names, skipped = usable_servers(names)
    for line in skipped:
        print(line, file=sys.stderr)
    if not names:
        raise UsageError("no server left to compare")
    summaries, failed = [], []
    for name in names:
        try:
            summary = run_once(
                args, name, os.path.join(args.out, name), show_progress=not args.quiet
            )
        except RunError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            summaries.append({"server": name, "scenario": args.scenario, "error": str(exc)})
            failed.append(f"{name} did not run: {exc}")
            continue
        summaries.append(summary)
        reason = _gate(summary, args)
        if reason:
            failed.append(reason)
    print(_write_compare(summaries, args.out), end="")
    print(f"-> {os.path.join(args.out, 'compare.md')}, {os.path.join(args.out, 'compare.html')}")
    for reason in failed:
        print(reason, file=sys.stderr)
    return 1 if failed else 0


def _on_sigterm(signum, frame):
    raise Interrupted()


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    raise_nofile()
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "soak":
            return soak.main(args)
        if args.command == "slowloris":
            return slowloris.main(args)
        return wrk_bench.main(args)
    except (UsageError, RunError) as exc:
        print(f"loadtests: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted):
        print("loadtests: interrupted; stopped everything it started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
