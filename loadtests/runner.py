"""One locust run against one server: start both, show progress, stop both, write summary.json.

Locust runs headless in its own session, pinned to the load-generator CPUs, and is bounded by its
own --run-time plus a grace period enforced here; whatever happens, both process groups are stopped
before this returns or raises.
"""

import datetime
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import time
from urllib.parse import urlsplit

from loadtests import report
from loadtests.errors import RunError
from loadtests.scenarios import SCENARIOS
from loadtests.servers import Server, child_env, cpu_plan, free_port, http_probe, kill_group
from loadtests.servers import pinned, tree_own_cpu

LOCUSTFILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "locustfile.py")
STOP_GRACE_S = 60.0  # locust's own -t should end the run; this catches a wedged locust
OUTPUT_FILES = ["summary.json", "stats.csv", "report.html", "locust.json", "locust",
                "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
                "locust_exceptions.csv", "locust.log", "server.log"]
LOOPBACK = {"127.0.0.1", "localhost"}  # what http_probe (127.0.0.1) can check


def parse_duration(text):
    """'30s', '2m', '1m30s', '1h' or plain seconds -> seconds (float)."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not parts:
        raise ValueError(f"duration {text!r} is not like 30s, 2m, 1m30s")
    h, m, s = (int(x or 0) for x in parts.groups())
    return float(h * 3600 + m * 60 + s)


def locust_missing():
    return importlib.util.find_spec("locust") is None


def locust_version():
    try:
        return importlib.metadata.version("locust")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_target(url):
    """Return (host, port) of an already-running loopback server, or raise RunError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise RunError(f"--target {url!r} is not like http://127.0.0.1:PORT")
    if parts.hostname not in LOOPBACK:
        raise RunError(
            f"--target {url!r}: the harness only loads servers on this machine's loopback"
        )
    port = parts.port or 80
    if not http_probe(port):
        raise RunError(f"nothing answers HTTP at {url}")
    return parts.hostname, port


class Progress:
    """The status line of a running test: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, label, total_s, stream=sys.stderr, enabled=True):
        self.label, self.total_s, self.stream, self.enabled = label, total_s, stream, enabled
        self.tty = stream.isatty()
        self.last_print = 0.0
        self.printed = False
        self.prev = None  # (timestamp, requests) of the previous history row
        self.rps = 0.0

    def update(self, elapsed, row):
        if not self.enabled or not row:
            return
        requests = int(float(row.get("Total Request Count") or 0))
        failures = int(float(row.get("Total Failure Count") or 0))
        # Current rate from consecutive rows: locust's own "Requests/s" column is a window
        # that stays 0 for the first seconds of a run.
        stamp = float(row.get("Timestamp") or 0)
        if self.prev and stamp > self.prev[0]:
            self.rps = (requests - self.prev[1]) / (stamp - self.prev[0])
        if not self.prev or stamp > self.prev[0]:
            self.prev = (stamp, requests)
        now = time.monotonic()
        if not self.tty and now - self.last_print < 5.0:
            return
        self.last_print = now
        ratio = failures / requests if requests else 0.0
        line = (
            f"[{self.label}] {min(elapsed, self.total_s):4.0f}/{self.total_s:.0f} s  "
            f"users {row.get('User Count', '?'):>4}  rps {self.rps:8,.0f}  "
            f"requests {requests:,}  failures {failures:,} ({ratio:.2%})"
        )
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()
        self.printed = True

    def done(self):
        if self.enabled and self.tty and self.printed:
            self.stream.write("\n")
            self.stream.flush()
            self.printed = False


def _locust_argv(opts, url, out_dir, classes, load_cpus):
    out = lambda name: os.path.join(out_dir, name)  # noqa: E731
    argv = [sys.executable, "-m", "locust", "-f", LOCUSTFILE, "--headless",
            "-u", str(opts.users), "-r", str(opts.spawn_rate), "-t", f"{opts.duration_s:g}s",
            "-H", url, "--only-summary",
            "--html", out("report.html"), "--csv", out("locust"), "--json-file", out("locust"),
            # Failures are judged by the SLO gates here, not by locust's exit code.
            "--exit-code-on-error", "0"]
    if opts.processes and opts.processes != 1:
        # Master and workers talk over loopback on a free port, not on *:5557 (locust's default):
        # loopback only, and two runs at once must not meet each other's workers.
        port = str(free_port())
        argv += ["--processes", str(opts.processes), "--master-bind-host", "127.0.0.1",
                 "--master-bind-port", port, "--master-host", "127.0.0.1", "--master-port", port]
    return pinned(argv + list(classes), load_cpus)


def _wait_locust(proc, opts, out_dir, progress):
    """Wait (bounded) for locust to finish by itself; return (CPU s, wall s) of its load.

    Both are counted from the first stats row (load started) so that locust's ~1 s of imports
    does not dilute the "cores busy" figure.
    """
    history = os.path.join(out_dir, "locust_stats_history.csv")
    started = time.monotonic()
    bound = opts.duration_s + opts.users / max(opts.spawn_rate, 0.001) + STOP_GRACE_S
    load_t0, load_cpu0, seen = None, 0.0, {}
    while True:
        # wait4 rather than Popen.poll: its rusage is exact for locust and the workers it reaped.
        # Workers it leaves unreaped are missing from it, so their CPU is also sampled from /proc
        # every tick; the larger of the two totals is the better one.
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        now = time.monotonic()
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu = max(usage.ru_utime + usage.ru_stime, sum(seen.values()))
            if load_t0 is None:
                return cpu, now - started
            return cpu - load_cpu0, now - load_t0
        seen.update(tree_own_cpu(proc.pid))
        if now - started > bound:
            raise RunError(f"locust did not finish within {bound:.0f} s; stopped it")
        row = report.last_history_row(history)
        if row and load_t0 is None:
            load_t0, load_cpu0 = now, sum(seen.values())
        if row:
            progress.update(now - load_t0, row)
        time.sleep(0.5)


def _last_line(path):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def run_once(opts, server_name, out_dir, show_progress=True):
    """Run one scenario against one server (or opts.target) and return its summary dict.

    opts carries: scenario, users, spawn_rate, duration_s, processes, app, port, target, pin,
    think_ms. Raises RunError or servers.ServerError with a one-line message.
    """
    if locust_missing():
        raise RunError("locust is not installed (pip install 'greenserve[load]')")
    classes, _ = SCENARIOS[opts.scenario]
    os.makedirs(out_dir, exist_ok=True)
    for name in OUTPUT_FILES:  # a previous run's files would feed the progress line and summary
        try:
            os.unlink(os.path.join(out_dir, name))
        except FileNotFoundError:
            pass
    server_cpus, load_cpus = cpu_plan(opts.pin)
    server = locust = None
    progress = Progress(
        f"{opts.scenario} @ {server_name or opts.target}", opts.duration_s, enabled=show_progress
    )
    locust_log = os.path.join(out_dir, "locust.log")
    try:
        if opts.target:
            check_target(opts.target)
            url = opts.target.rstrip("/")
        else:
            log_path = os.path.join(out_dir, "server.log")
            server = Server(server_name, opts.app, opts.port, server_cpus, log_path).start()
            url = server.url
        env = child_env()
        env["LOADTESTS_THINK_MS"] = str(opts.think_ms or 0)
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        loadavg = [round(x, 2) for x in os.getloadavg()]  # shared machines: say how busy it was
        server_cpu0 = server.cpu_seconds() if server else None
        with open(locust_log, "wb") as log:
            argv = _locust_argv(opts, url, out_dir, classes, load_cpus)
            locust = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                      env=env, start_new_session=True)  # fmt: skip
            locust_cpu, load_wall = _wait_locust(locust, opts, out_dir, progress)
        progress.done()
        if locust.returncode != 0:
            status = locust.returncode
            raise RunError(f"locust exited with status {status}: {_last_line(locust_log)}")
        rss = server.rss_bytes() if server else None
        server_cpu = server.cpu_seconds() - server_cpu0 if server else None
    finally:
        progress.done()
        kill_group(locust, grace=5.0)
        if server:
            server.stop()

    # Locust 2.x appends ".json" to --json-file; accept the name as given too.
    names = [os.path.join(out_dir, n) for n in ("locust.json", "locust")]
    final = next((p for p in names if os.path.isfile(p)), None)
    if not final:
        raise RunError(f"locust wrote no final stats: {_last_line(locust_log)}")

    def busy(cpu):
        return round(cpu / load_wall, 2) if cpu is not None and load_wall else None

    meta = {
        "scenario": opts.scenario,
        "server": None if opts.target else server_name,
        "target": url,
        "app": None if opts.target else opts.app,
        "users": opts.users,
        "spawn_rate": opts.spawn_rate,
        "duration_s": opts.duration_s,
        "think_ms": opts.think_ms or 0,
        "started_at": started_at,
        "locust_version": locust_version(),
        "server_rss_bytes": rss,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": loadavg},
        # "busy": CPU seconds over wall seconds of the load, so 1.0 = one core saturated.
        "cores": {
            "server": {"pinned": server_cpus, "busy": busy(server_cpu),
                       "cpu_s": round(server_cpu, 4) if server_cpu is not None else None},
            "locust": {"pinned": load_cpus, "processes": opts.processes, "busy": busy(locust_cpu)},
        },
        "files": {
            "html": "report.html",
            "stats_csv": "stats.csv",
            "locust_json": os.path.basename(final),
            "history_csv": "locust_stats_history.csv",
            "failures_csv": "locust_failures.csv",
            "locust_log": "locust.log",
            "server_log": "server.log" if server else None,
        },
    }
    summary = report.build_summary(final, meta)
    report.write_json(os.path.join(out_dir, "summary.json"), summary)
    report.write_stats_csv(os.path.join(out_dir, "stats.csv"), summary)
    return summary
