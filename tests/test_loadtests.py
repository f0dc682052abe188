"""The loadtests harness end to end: real greenserve, real locust, real files (about 20 s in all).

Skipped when locust is not installed (it comes with the ``load`` and ``test`` extras).
"""
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import pytest

import procs
from procs import wait_until

# Look for locust without importing it: importing locust monkey-patches the whole test
# process (and breaks ssl for every test collected after this file).
if importlib.util.find_spec("locust") is None:
    pytest.skip("locust is not installed (pip install -e '.[test]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests import report, wrk_bench  # noqa: E402
from loadtests.servers import group_members, http_probe  # noqa: E402

SHORT_RUN = "run --server greenserve --users 10 --spawn-rate 10 --duration 3s --quiet".split()


def harness(*args, timeout=90, env=None):
    return procs.run([sys.executable, "-m", "loadtests", *args], cwd=ROOT, env=env,
                     timeout=timeout)


def processes_mentioning(text):
    """pids whose command line contains text (our children name their port or out dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture(scope="module")
def hello_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hello")
    return harness(*SHORT_RUN, "--scenario", "hello", "--out", out), out


def test_hello_run_writes_reports_with_requests_and_no_failures(hello_run):
    proc, out = hello_run
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.json", "stats.csv", "report.html", "locust.json", "locust_stats.csv"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["server"] == "greenserve" and summary["scenario"] == "hello"
    assert summary["requests"] > 0
    assert summary["failures"] == 0
    assert summary["server_rss_bytes"] > 0
    assert [e["name"] for e in summary["endpoints"]] == ["GET /"]
    assert {"p50_ms", "p95_ms", "p99_ms", "max_ms", "rps", "cores"} <= summary.keys()
    # The server was stopped: nothing answers on its port any more.
    assert not http_probe(int(summary["target"].rsplit(":", 1)[1]), timeout=0.5)


def test_compare_builds_its_table_from_summaries(hello_run, tmp_path):
    real = json.loads((hello_run[1] / "summary.json").read_text())
    peer = dict(real, server="gunicorn-gevent", rps=1234.5, p50_ms=2.0, p99_ms=9.0, failures=3)
    peer["server_rss_mib"] = 57.1
    broken = {"server": "gevent-pywsgi", "scenario": "hello", "error": "did not answer"}
    paths = [tmp_path / f"s{i}.json" for i in range(3)]
    for path, summary in zip(paths, (real, peer, broken)):
        path.write_text(json.dumps(summary))

    proc = harness("compare", "--from-summaries", *paths, "--out", tmp_path / "cmp")

    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table == proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| server | req/s | p50 ms | p99 ms |")
    assert rows[1].startswith(f"| greenserve | {real['rps']:,.0f} |")
    max_ms, cores = f"{real['max_ms']:,.0f}", report._cores(real)
    assert rows[2] == f"| gunicorn-gevent | 1,234 | 2 | 9 | {max_ms} | 3 | 57.1 | {cores} |"
    assert rows[3].startswith("| gevent-pywsgi |") and "failed: did not answer" in rows[3]
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert page.count("<svg") == len(report.CHARTS) and "gunicorn-gevent" in page


def test_slo_gate_fails_a_run_that_breaks_it(tmp_path):
    # Long polls wait for a sender, so p99 is far above 0.001 ms on any machine.
    gates = ["--p99-ms", "0.001", "--fail-ratio", "0.5"]
    proc = harness(*SHORT_RUN, "--scenario", "longpoll", "--out", tmp_path, *gates)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("SLO failed (greenserve): p99 latency "), last
    assert last.endswith(" ms > 0.001 ms"), last
    assert json.loads((tmp_path / "summary.json").read_text())["requests"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--scenario", "nope"], "unknown scenario 'nope'"),
        (["run", "--server", "nope"], "unknown server 'nope'"),
        (["run", "--app", "no_such_module_xyz:app"], "cannot import 'no_such_module_xyz'"),
        (["soak", "--servers", "nope"], "unknown server 'nope'"),
        (["soak", "--requests", "0"], "--requests, --connections,"),
        (["slowloris", "--attacks", "slow-bodies,nope"], "unknown attack or server 'nope';"),
        (["slowloris", "--servers", "gevent-pywsgi"], "unknown attack or server 'gevent-pywsgi'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = harness(*args, "--out", tmp_path, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    assert not os.listdir(tmp_path)  # nothing ran


def test_missing_locust_is_one_line_and_exit_2(tmp_path):
    # sys.modules["locust"] = None makes importlib treat locust as not installed.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['locust'] = None\n")
    env = procs.environment(pythonpath=[tmp_path])
    proc = harness("run", "--out", tmp_path / "out", env=env, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr == "loadtests: locust is not installed (pip install 'greenserve[load]')\n"
    assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_server_and_locust(tmp_path):
    argv = [sys.executable, "-m", "loadtests", *SHORT_RUN, "--duration", "60s"]
    with procs.Processes(cwd=ROOT) as processes:
        run = processes.start([*argv, "--out", tmp_path])
        wait_until(lambda: (tmp_path / "locust_stats_history.csv").exists(), timeout=60,
                   what="locust to start its load")
        # The server bound port 0; its log says which port it got, and its pid.
        server = procs.LISTENING.search((tmp_path / "server.log").read_text())
        assert server, "no 'Listening at' line in server.log"

        run.signal(signal.SIGINT)
        assert run.exit_code(timeout=30) == 130, run.text()
        last = run.output().strip().splitlines()[-1]

    assert last == "loadtests: interrupted; stopped everything it started"
    assert processes_mentioning(str(tmp_path)) == []  # locust's command line names the out dir
    assert group_members(int(server["pid"])) == []  # the server leads its own process group
    assert not http_probe(int(server["port"]), timeout=0.5)


WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:40000/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.61ms  411.09us  14.77ms   93.66%
    Req/Sec    24.64k     1.32k   26.44k    86.25%
  Latency Distribution
     50%  520.00us
     75%    2.60ms
     90%    2.86ms
     99%    1.10s
  196202 requests in 8.00s, 15.53MB read
  Socket errors: connect 0, read 7, write 0, timeout 2
  Non-2xx or 3xx responses: 3
Requests/sec:  24521.50
Transfer/sec:      1.94MB
"""


def test_wrk_output_is_parsed_and_tabulated():
    r = wrk_bench.parse_wrk(WRK_OUTPUT)
    assert r == {"rps": 24521.5, "p50_ms": 0.52, "p99_ms": 1100.0, "socket_errors": [0, 7, 0, 2],
                 "non_2xx": 3, "requests": 196202}
    row = dict(r, runs_rps=[24521.5], rss_mib=30.0)
    base = dict(row, rps=12260.75, p99_ms=550.0, runs_rps=[12260.75])
    servers = ["greenserve", "gevent-pywsgi-nodelay"]
    table = wrk_bench.table({"hello": dict(zip(servers, (row, base)))}, servers, ["hello"])
    expected = ("| hello | greenserve | 24,522 | 0.52 | 1100.00 | 2.00x | 2.00x "
                "| 0/7/0/2, 3 | 24,522 |")
    assert expected in table.splitlines()


# -- soak and slowloris: the benchmark commands with the smallest counts ------------------------

import shutil  # noqa: E402

from loadtests import slowloris, soak  # noqa: E402

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@needs_wrk
def test_soak_samples_one_worker_three_times_and_finds_it_where_it_started(tmp_path):
    proc = harness("soak", "--requests", 400, "--connections", 100, "--concurrency", 4,
                   "--warmup", 20, "--quiet-time", 0, "--out", tmp_path, timeout=120)

    assert proc.returncode == 0, proc.stderr
    (run,) = json.loads((tmp_path / "soak.json").read_text())["runs"]
    start, middle, end = run["samples"]
    assert [s["sample"] for s in run["samples"]] == ["start", "middle", "end"]
    # wrk stops after the count; responses already in flight on its 4 connections still count.
    assert 200 <= middle["keepalive_requests"] < 200 + 4 and 50 <= middle["new_connections"]
    assert 400 <= end["keepalive_requests"] < 400 + 8 and 100 <= end["new_connections"] < 108
    assert start["greenlets"] > 0 and start["gc_objects"] > 0  # loadtests.apps counts them
    assert end["fds"] <= start["fds"] and end["threads"] >= 1 and end["rss_mib"] > 0
    assert [p["kind"] for p in run["phases"]] == ["keep-alive", "new connection each"] * 2
    assert (tmp_path / "soak.md").read_text() == proc.stdout
    assert "| greenserve | end - start |" in proc.stdout


def test_soak_reports_what_did_not_come_back():
    sample = {"fds": 6, "threads": 2, "greenlets": 3}
    phase = {"socket_errors": [0, 0, 0, 0], "non_2xx": 0, "kind": "keep-alive", "half": 1}
    leaky = {"server": "greenserve", "phases": [phase, dict(phase, non_2xx=2, half=2)],
             "samples": [sample, sample, dict(sample, fds=7, greenlets=None)]}

    assert soak.problems([leaky, {"server": "gunicorn-gevent", "error": "did not answer"}]) == [
        "greenserve: fds grew from 6 to 7",
        "greenserve: wrk saw socket errors [0, 0, 0, 0] and 2 non-2xx answers (keep-alive, "
        "half 2)",
        "gunicorn-gevent: did not answer",
    ]


def test_slowloris_nan_timer_leaves_greenserve_timers_running(tmp_path):
    proc = harness("slowloris", "--attacks", "nan-timer", "--servers", "greenserve",
                   "--out", tmp_path, timeout=120)

    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads((tmp_path / "slowloris.json").read_text())["results"]
    assert result["partial_head"]["status"] == 408
    assert None not in [result[k]["after_s"] for k in ("idle_before", "idle_after")]
    assert "| greenserve | " in (tmp_path / "slowloris.md").read_text()


@needs_wrk
def test_slowloris_slow_bodies_at_the_cap_leave_room_for_a_normal_client(tmp_path):
    proc = harness("slowloris", "--attacks", "slow-bodies", "--servers", "greenserve",
                   "--bodies", 5, "--baseline", 1, "--duration", 3, "--normal-connections", 2,
                   "--out", tmp_path, timeout=120)

    (result,) = json.loads((tmp_path / "slowloris.json").read_text())["results"]
    assert result["held_before_measuring"] and result["attacker_stats"]["connects"] >= 5
    assert result["normal_before"]["requests"] > 0
    assert proc.returncode == 0, proc.stderr  # a normal client was served during the attack
    assert result["normal_during"]["requests"] > 0


def test_slowloris_expectations_judge_greenserve_only():
    nan = {"attack": "nan-timer", "idle_before": {"after_s": 2.2},
           "idle_after": {"after_s": None},
           "partial_head": {"status": 408, "after_s": 3.2}}
    results = [dict(nan, server="greenserve"), dict(nan, server="gunicorn-gevent"),
               {"attack": "slow-download", "server": "greenserve", "bytes": 10, "expected": 20,
                "outcome": "closed by the server"}]

    assert slowloris.expectations(results) == [
        "nan-timer: idle_after connection not closed within 4 s",
        "slow-download: 10 of 20 bytes (closed by the server)",
    ]
