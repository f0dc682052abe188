"""The loadtests harness end to end: real greenserve, real locust, real files (about 20 s in all).

Skipped when locust is not installed (it comes with the ``load`` and ``test`` extras).
"""
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
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
    peer["cores"] = {"server": {"busy": 0.5}, "locust": {"busy": 0.5, "processes": 1}}
    broken = {"server": "gevent-pywsgi", "scenario": "hello", "error": "did not answer"}
    paths = [tmp_path / f"s{i}.json" for i in range(3)]
    for path, summary in zip(paths, (real, peer, broken)):
        path.write_text(json.dumps(summary))

    proc = harness("compare", "--from-summaries", *paths, "--out", tmp_path / "cmp")

    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert table == proc.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| server | req/s | server CPU µs/req | p50 ms | p99 ms |")
    assert rows[1].startswith(f"| greenserve | {real['rps']:,.0f}")
    max_ms = f"{real['max_ms']:,.0f}"
    # 0.5 s of server CPU per second over 1234.5 requests per second: 405.0 µs each.
    assert rows[2] == (f"| gunicorn-gevent | 1,234 | 405.0 | 2 | 9 | {max_ms} | 3 | 57.1 "
                       "| 0.50 / 0.50 |")
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
        (["wrk", "--scenarios", "hello,nope"], "unknown scenario nope; choose from hello,"),
        (["wrk", "--servers", "all,nope"], "unknown server all, nope; choose from greenserve,"),
        (["wrk", "--workers", "0"], "--workers and --idle-connections must be >= 1"),
        (["wrk", "--scenarios", "idle-rss", "--idle-connections", "10000000"],
         "--idle-connections 10000000 needs an open-file limit of at least 10000064"),
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
    row = dict(r, runs_rps=[24521.5], rss_mib=30.0, cpu_us_per_req=24.04)
    base = dict(row, rps=12260.75, p99_ms=550.0, runs_rps=[12260.75], cpu_us_per_req=None)
    servers = ["greenserve", "gevent-pywsgi-nodelay"]
    table = wrk_bench.table({"hello": dict(zip(servers, (row, base)))}, servers, ["hello"])
    expected = ("| hello | greenserve | 24,522 | 0.52 | 1100.00 | 24.0 | 2.00x | 2.00x "
                "| 0/7/0/2, 3 | 24,522 |")
    assert expected in table.splitlines()
    assert "| hello | gevent-pywsgi-nodelay | 12,261 | 0.52 | 550.00 | - | 1.00x |" in table


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


# -- peers, idle-rss, workers, the client-bound headline ------------------------------------------

from loadtests import idle_rss, servers  # noqa: E402

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0
   2: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0
   3: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0
"""


def test_proc_net_tcp_rows_are_parsed():
    assert servers.parse_tcp_table(PROC_NET_TCP) == [
        ("127.0.0.1", 8080, "0A", "111"),
        ("127.0.0.1", 8080, "01", "222"),
        ("127.0.0.1", 54321, "01", "333"),  # the client's end: its local port is not 8080
        ("0.0.0.0", 22, "0A", "444"),
    ]
    assert servers.parse_tcp_table(PROC_NET_TCP.splitlines()[0]) == []


def test_connections_not_accepted_yet_are_counted_apart_from_those_a_process_holds():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), \
                socket.create_connection(("127.0.0.1", port)):
            # The kernel completes both handshakes; nobody has accepted them.
            assert servers.connections_per_worker([os.getpid()], port) == ([0], 2)
            accepted, _ = listener.accept()
            with accepted:
                assert servers.connections_per_worker([os.getpid()], port) == ([1], 1)


def test_peers_are_skipped_with_a_reason_and_single_process_servers_at_two_workers():
    names = ["greenserve", "meinheld", "granian", "gevent-pywsgi"]
    reasons = {"meinheld": "not installed (pip install --no-deps meinheld)", "granian": None}

    assert servers.choose_servers(names, 1, reasons) == (
        ["greenserve", "granian", "gevent-pywsgi"],
        ["skipping meinheld: not installed (pip install --no-deps meinheld)"],
    )
    assert servers.choose_servers(names, 2, reasons) == (
        ["greenserve", "granian"],
        ["skipping meinheld: not installed (pip install --no-deps meinheld)",
         "skipping gevent-pywsgi: it runs as one process and has no workers setting "
         "(--workers 2)"],
    )


def test_peer_commands_set_workers_and_granian_keeps_its_default_thread_count():
    granian = servers.SERVERS["granian"][0]("loadtests.apps:app", 0, 2)
    assert granian[1:] == ["-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1",
                           "--port", "0", "--workers", "2", "--backlog", "1024",
                           "--blocking-threads", "256", "--no-access-log", "--log-level",
                           "warning", "loadtests.apps:app"]
    assert servers.granian_blocking_threads(1) == 512
    assert "-w" in (gs := servers.SERVERS["greenserve"][0]("a:b", 0, 3)) and "3" in gs
    assert servers.SERVERS["gunicorn-gevent"][0]("a:b", 0, 2)[5:7] == ["-w", "2"]


def test_missing_peers_are_skipped_and_none_left_is_exit_2(tmp_path):
    # sys.modules[name] = None makes importlib treat the package as not installed, in the
    # harness and in every child it starts (they get the same PYTHONPATH).
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['meinheld'] = None\nsys.modules['granian'] = None\n")
    env = procs.environment(pythonpath=[tmp_path])
    proc = harness("wrk", "--scenarios", "hello", "--servers", "meinheld,granian",
                   "--out", tmp_path / "out", env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == ("skipping meinheld: not installed (pip install --no-deps meinheld)\n"
                           "skipping granian: not installed (pip install 'greenserve[bench]')\n"
                           "loadtests: no server left to measure\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["meinheld", "granian", "waitress"])
def test_an_installed_peer_starts_on_port_0_and_serves_the_app(name):
    reason = servers.unavailable(name)
    if reason:
        pytest.skip(f"{name}: {reason}")
    with servers.Server(name) as server:
        assert server.port > 0
        (sock,) = idle_rss.open_idle(server.port, 1)  # 200 and the whole body, kept alive
        with sock:
            assert idle_rss.is_open(sock)
    assert not http_probe(server.port, timeout=0.5)


def test_two_greenserve_workers_share_connections_and_cpu_as_counted_from_proc():
    with servers.Server("greenserve", workers=2) as server:
        pids = servers.worker_pids(server.proc.pid, server.port)
        assert len(pids) == 2 and server.proc.pid not in pids  # the master serves nothing
        cpu_before = servers.own_cpu_seconds(pids)
        socks = idle_rss.open_idle(server.port, 6)
        try:
            for sock in socks:  # enough requests for the workers to use some clock ticks of CPU
                for _ in range(150):
                    sock.sendall(idle_rss.REQUEST)
                    assert idle_rss.read_response(sock) == 200
            conns, waiting = servers.connections_per_worker(pids, server.port)
            assert sum(conns) == 6 and waiting == 0, (conns, waiting)
            assert servers.connections_per_worker([server.proc.pid], server.port) == ([0], 0)
            shares = wrk_bench.worker_shares(pids, cpu_before, servers.own_cpu_seconds(pids),
                                             conns)
        finally:
            idle_rss.close_all(socks)
        figures = idle_rss.measure(server, 5)
    assert shares["pids"] == pids and shares["conns"] == conns and shares["waiting"] == 0
    assert sum(shares["cpu_share"]) in (99, 100, 101) and sum(shares["cpu_s"]) > 0
    assert wrk_bench.format_workers("greenserve", shares) == (
        f"greenserve workers: conns {conns}, cpu [{shares['cpu_share'][0]}%, "
        f"{shares['cpu_share'][1]}%]")
    assert figures["connections"] == 5 and figures["closed_by_server"] == 0
    assert figures["rss_after_mib"] >= figures["rss_before_mib"] > 0


def test_worker_shares_are_percent_of_cpu_time_during_the_run():
    shares = wrk_bench.worker_shares([10, 11, 12], {10: 1.0, 11: 2.0, 12: 5.0},
                                     {10: 1.3, 11: 2.9, 12: 5.0}, [31, 33, 0])
    assert shares == {"pids": [10, 11, 12], "conns": [31, 33, 0], "waiting": 0,
                      "cpu_s": [0.3, 0.9, 0.0], "cpu_share": [25, 75, 0]}
    assert wrk_bench.format_workers("granian", shares) == (
        "granian workers: conns [31, 33, 0], cpu [25%, 75%, 0%]")
    assert wrk_bench.format_workers("gunicorn-gevent", dict(shares, waiting=32)) == (
        "gunicorn-gevent workers: conns [31, 33, 0] and 32 not accepted yet, cpu [25%, 75%, 0%]")
    assert servers.percent_shares([0, 0]) is None
    assert wrk_bench.cpu_us_per_request(1.2, 50000) == 24.0
    assert wrk_bench.cpu_us_per_request(1.2, 0) is None


def test_the_summary_table_puts_servers_in_columns_with_greenserve_ratios():
    hello = {"greenserve": {"rps": 41121.0, "p99_ms": 2.0},
             "granian": {"rps": 60851.0, "p99_ms": 3.0},
             "meinheld": {"error": "did not answer"}}
    sleep = {"greenserve": {"rps": 18018.0, "p99_ms": 70.2},
             "granian": {"rps": 10046.0, "p99_ms": 107.0}, "meinheld": {"rps": 20.0}}
    idle = {"greenserve": {"kib_per_conn": 10.24, "connections": 1000, "rss_before_mib": 32.0,
                           "rss_after_mib": 42.0, "fresh_ms": 1.04, "closed_by_server": 0,
                           "runs_kib": [10.24]},
            "granian": {"error": "did not answer"}, "meinheld": {"error": "x"}}
    results = {"hello": hello, "sleep-c1000": sleep, "idle-rss": idle}
    names = ["greenserve", "granian", "meinheld"]

    lines = wrk_bench.summary_table(results, names, list(results)).splitlines()
    assert lines[0] == "| scenario | greenserve | granian | meinheld |"
    assert lines[2] == "| hello | 41,121 | 60,851 [0.68x] | failed |"
    assert lines[3] == ("| sleep-c1000 | 18,018 (p99 70 ms) | 10,046 (p99 107 ms) [1.79x] "
                        "| 20 [900.90x] |")
    assert lines[4] == "| idle-rss | 10.2 KiB | failed | failed |"
    idle_lines = wrk_bench.idle_table(idle, names).splitlines()
    assert idle_lines[2] == "| greenserve | 10.24 | 1,000 | 32.0 / 42.0 | 1.04 | 0 | 10.24 |"
    assert idle_lines[3] == "| granian | - | - | - | - | - | failed: did not answer |"
    assert len(wrk_bench.table({"idle-rss": idle}, names, ["idle-rss"]).splitlines()) == 2


def _summary(server, rps, server_busy, locust_busy, processes=1):
    return {"server": server, "scenario": "hello", "users": 50, "spawn_rate": 50,
            "duration_s": 15, "requests": int(rps * 15), "rps": rps, "failures": 0,
            "p50_ms": 4, "p99_ms": 13, "max_ms": 30, "server_rss_mib": 31.0,
            "cores": {"server": {"pinned": [0], "busy": server_busy},
                      "locust": {"pinned": [1], "processes": processes, "busy": locust_busy}}}


def test_compare_leads_with_server_cpu_per_request_when_locust_saturated_first():
    bound = _summary("greenserve", 9302.0, 0.29, 0.88)  # the client ran out of CPU first
    even = _summary("gunicorn-gevent", 4020.0, 0.53, 0.54)
    assert report.client_bound(bound) and not report.client_bound(even)
    assert not report.client_bound(_summary("x", 10000.0, 0.8, 0.95))  # both near saturated
    assert not report.client_bound(_summary("x", 10000.0, 0.3, 1.2, processes=2))  # 0.6 each
    assert round(report.cpu_us_per_request(bound), 1) == 31.2  # 0.29 s/s over 9302 req/s
    exact = dict(bound, cores={"server": {"busy": 0.29, "cpu_s": 4.5}, "locust": {}})
    assert report.cpu_us_per_request(exact) == 4.5 / exact["requests"] * 1e6

    assert report.headline([bound, even]).startswith(
        "**Headline: server CPU per request.** locust ran out of CPU before the server "
        "(client-bound: greenserve)")
    rows = report.compare_table([bound, even]).splitlines()
    assert rows[2].startswith("| greenserve | 9,302 (client-bound) | 31.2 |")
    assert rows[3].startswith("| gunicorn-gevent | 4,020 | 131.8 |")
    page = report.compare_html([bound, even])
    charts = page.split("<svg")[1:]
    assert "Headline: server CPU per request" in charts[0]
    assert "requests per second (client-bound)" in charts[1] and "9,302 client-bound" in charts[1]
    assert "4,020 client-bound" not in charts[1]

    assert report.headline([even]) == ""
    plain = report.compare_html([even]).split("<svg")[1:]
    assert "requests per second</text>" in plain[0] and "client-bound" not in "".join(plain)


LENGTH_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n"
                   b"Hello, World!")
CHUNKED_RESPONSE = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: Chunked\r\n\r\n"
                    b"4\r\nHell\r\n9\r\no, World!\r\n0\r\n\r\n")


@pytest.mark.parametrize("response, status", [(LENGTH_RESPONSE, 200), (CHUNKED_RESPONSE, 201)])
def test_the_idle_client_reads_a_whole_response_split_anywhere(response, status):
    for cut in range(1, len(response)):
        client, server = socket.socketpair()
        with client, server:
            client.settimeout(10)
            server.sendall(response[:cut])
            got = []
            reader = threading.Thread(target=lambda: got.append(idle_rss.read_response(client)))
            reader.start()
            server.sendall(response[cut:])
            reader.join(10)
            assert got == [status], cut
            server.close()
            assert client.recv(1) == b"", cut  # the whole response was consumed, no more


@pytest.mark.parametrize("response, error", [
    (b"HTTP/1.1 200 OK\r\n\r\nbody", "without Content-Length or chunked"),
    (b"HTTP/1.1 OK\r\nContent-Length: 1\r\n\r\nx", "malformed response head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection before"),
])
def test_the_idle_client_refuses_a_response_it_cannot_frame(response, error):
    client, server = socket.socketpair()
    with client, server:
        server.sendall(response)
        server.close()
        with pytest.raises(OSError, match=error):
            idle_rss.read_response(client)


@pytest.mark.parametrize("server", ["greenserve", "floor", "floor-wait"])
def test_server_instructions_serves_its_client_to_the_end(server):
    # Without --callgrind it only serves: the client child reads every answer whole or
    # exits non-zero, which fails the run.
    proc = procs.run([sys.executable, "-m", "loadtests.server_instructions", "200",
                      "--server", server], cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_longpoll_scale_measures_both_ways_of_waiting_and_the_floor():
    # 50 waiting requests per server: a smoke run of the scale benchmark, not a measurement.
    proc = procs.run([sys.executable, "-m", "loadtests.longpoll_scale", "-n", "50",
                      "--servers", "greenserve,greenserve-later,send-floor"], cwd=ROOT,
                     timeout=180)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines()
            if line.startswith(("| greenserve", "| send-floor"))]
    assert [row.split("|")[1].strip() for row in rows] == [
        "greenserve", "greenserve-later", "send-floor"]
    assert all(row.rstrip(" |").endswith("| 50") for row in rows), rows


def test_soak_allows_the_spare_greenlets_of_one_burst_and_no_more():
    sample = {"fds": 6, "threads": 2, "greenlets": 8}
    phase = {"socket_errors": [0, 0, 0, 0], "non_2xx": 0, "kind": "keep-alive", "half": 1}
    run = {"server": "greenserve", "phases": [phase],
           "samples": [sample, sample, dict(sample, greenlets=12)]}
    assert soak.problems([run], spare_greenlets=4) == []
    assert soak.problems([run], spare_greenlets=3) == ["greenserve: greenlets grew from 8 to 12"]
