"""Metrics, the admin listener and the probes.

The exposition is checked with prometheus_client's own parsers (text 0.0.4 and
OpenMetrics). The multi-worker sums are checked in-process on real shared memory, and once
with real forked processes, some killed, while a scraping thread races them.
"""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import \
    text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from greenserve import metrics
from greenserve.admin import (AdminRoutes, AdminThread, Health, answer_census,
                              local_collector, serve_in_process)
from greenserve.config import load_config
from greenserve.errors import ConfigError
from greenserve.metrics import (BUCKETS, METHODS, OPENMETRICS_TYPE, STATUS_CLASSES,
                                TEXT_TYPE, Family, Supervision, Totals, negotiate,
                                private_stats, render, request_families)

REPO = Path(__file__).resolve().parent.parent
WAIT = 20  # seconds: the bound on every wait below
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-"
                     "text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def samples(text, openmetrics=False):
    """{(sample name, frozenset(labels)): value} of an exposition, parsed by the library."""
    parse = parse_openmetrics if openmetrics else parse_text
    found = {}
    for family in parse(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate series {key}"
            found[key] = sample.value
    return found


def totals_of(stats):
    totals = Totals()
    totals.add(stats.ints, stats.floats)
    return totals


# -- the hot path lands every request in its own series --------------------------------------

def test_every_method_class_and_bucket_lands_in_its_own_series():
    _, stats = private_stats()
    expected = {}
    durations = [bound for bound in BUCKETS] + [BUCKETS[-1] * 2]  # each bound, and +Inf
    for m, method in enumerate(METHODS):
        for c, status_class in enumerate(STATUS_CLASSES):
            count = 1 + m + c  # a different count per series
            for _ in range(count):
                status = (c + 1) * 100 + 3
                stats.observe(method.encode() if m % 2 else method, status,
                              durations[(m + c) % len(durations)], 0, 1)
            expected[(method, status_class)] = count
    found = samples(render(request_families(totals_of(stats))).decode())
    for (method, status_class), count in expected.items():
        key = ("greenserve_requests_total",
               frozenset({"method": method, "status": status_class}.items()))
        assert found[key] == count


def test_bucket_bounds_are_inclusive_and_the_count_is_the_inf_bucket():
    _, stats = private_stats()
    for seconds in (0.0, 0.001, 0.0010001, 0.1, 60.0, 60.5, 3600.0):
        stats.observe(b"GET", 200, seconds, 0, 0)
    found = samples(render(request_families(totals_of(stats))).decode())

    def bucket(le):
        return found[("greenserve_request_duration_seconds_bucket",
                      frozenset({"le": le}.items()))]

    # Prometheus: le is an inclusive upper bound.
    assert bucket("0.001") == 2
    assert bucket("0.0025") == 3
    assert bucket("0.1") == 4
    assert bucket("60.0") == 5
    assert bucket("+Inf") == 7
    assert found[("greenserve_request_duration_seconds_count", frozenset())] == 7
    assert found[("greenserve_request_duration_seconds_sum", frozenset())] == \
        pytest.approx(0.0010001 + 0.001 + 0.1 + 60 + 60.5 + 3600)


def test_unknown_methods_share_one_series():
    _, stats = private_stats()
    for method in (b"BREW", b"PROPFIND", "WHATEVER", b"get"):
        stats.observe(method, 418, 0.01, 0, 0)
    found = samples(render(request_families(totals_of(stats))).decode())
    requests = {k: v for k, v in found.items() if k[0] == "greenserve_requests_total"}
    assert requests == {("greenserve_requests_total",
                         frozenset({"method": "OTHER", "status": "4xx"}.items())): 4}


def test_bytes_refusals_exceptions_and_blocked_events():
    _, stats = private_stats()
    stats.observe(b"POST", 201, 0.01, 1000, 20)
    stats.observe(b"GET", 200, 0.01, 0, 5)
    for cause in metrics.REFUSAL_CAUSES:
        stats.refused(cause)
    stats.refused("deadline")
    stats.app_exception()
    stats.hub_blocked()
    stats.hub_blocked()
    for openmetrics in (False, True):
        content_type = OPENMETRICS_TYPE if openmetrics else TEXT_TYPE
        found = samples(render(request_families(totals_of(stats)), content_type).decode(),
                        openmetrics)
        assert found[("greenserve_request_body_bytes_total", frozenset())] == 1000
        assert found[("greenserve_response_body_bytes_total", frozenset())] == 25
        refused = {dict(k[1])["cause"]: v for k, v in found.items()
                   if k[0] == "greenserve_requests_refused_total"}
        assert refused == {"head_timeout": 1, "body_timeout": 1, "send_timeout": 1,
                           "deadline": 2, "evicted": 1, "invalid": 1}
        assert found[("greenserve_app_exceptions_total", frozenset())] == 1
        assert found[("greenserve_hub_blocked_total", frozenset())] == 2


# -- the two formats ---------------------------------------------------------------------------

def test_both_formats_parse_to_the_same_series():
    _, stats = private_stats()
    stats.observe(b"GET", 200, 0.003, 0, 100)
    stats.observe(b"DELETE", 500, 7.0, 0, 0)
    stats.publish_census((1, 2, 3, 4, 5), 99)
    families = request_families(totals_of(stats))
    text = render(families, TEXT_TYPE).decode()
    openmetrics = render(families, OPENMETRICS_TYPE).decode()
    assert openmetrics.endswith("# EOF\n") and "# EOF" not in text
    assert samples(text) == samples(openmetrics, openmetrics=True)
    found = samples(text)
    assert found[("greenserve_connections", frozenset({"state": "waiting"}.items()))] == 3
    assert found[("greenserve_connection_slots_free", frozenset())] == 99


def test_help_and_label_values_are_escaped():
    nasty = 'a "quoted" \\ back\nslash'
    family = Family("greenserve_test", "gauge", 'help with \\ and\na "quote"')
    family.add(1, (("listener", nasty),))
    for content_type, openmetrics in ((TEXT_TYPE, False), (OPENMETRICS_TYPE, True)):
        text = render([family], content_type).decode()
        assert text.count("\n") == (4 if openmetrics else 3)  # no raw newline leaked
        parse = parse_openmetrics if openmetrics else parse_text
        [parsed] = parse(text)
        assert parsed.documentation == 'help with \\ and\na "quote"'
        assert parsed.samples[0].labels == {"listener": nasty}


@pytest.mark.parametrize("accept, expected", [
    (PROMETHEUS_ACCEPT, OPENMETRICS_TYPE),
    ("application/openmetrics-text", OPENMETRICS_TYPE),
    ("text/plain;version=0.0.4", TEXT_TYPE),
    ("", TEXT_TYPE),
    (None, TEXT_TYPE),
    ("text/html,application/xhtml+xml,*/*;q=0.8", TEXT_TYPE),
    ("application/openmetrics-text;q=0", TEXT_TYPE),
    ("application/openmetrics-text;q=0.4,text/plain;q=0.5", TEXT_TYPE),
    ("text/plain;q=0.5,application/openmetrics-text;q=0.5", OPENMETRICS_TYPE),
    ("application/openmetrics-text;q=nonsense", TEXT_TYPE),
])
def test_the_format_follows_the_accept_header(accept, expected):
    assert negotiate(accept) == expected


# -- what the operating system tells ---------------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


@linux_only
def test_listen_queue_reports_waiting_connections_and_the_backlog():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(7)
        clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
        try:
            deadline = time.monotonic() + WAIT
            while metrics.listen_queue(listener) != (3, 7):
                assert time.monotonic() < deadline, metrics.listen_queue(listener)
                time.sleep(0.01)
            families = {f.name: f for f in metrics.listener_families([listener])}
            name = metrics.listener_name(listener)
            assert families["greenserve_listen_queue_length"].samples == [
                ("", (("listener", name),), 3)]
            assert families["greenserve_listen_queue_limit"].samples == [
                ("", (("listener", name),), 7)]
            assert isinstance(metrics.tcp_listen_overflows(), int)
        finally:
            for client in clients:
                client.close()


def test_listen_queue_is_unknown_for_unix_and_closed_sockets(tmp_path):
    with socket.socket(socket.AF_UNIX) as unix:
        unix.bind(str(tmp_path / "s"))
        unix.listen(1)
        assert metrics.listen_queue(unix) is None
    closed = socket.socket()
    closed.close()
    assert metrics.listen_queue(closed) is None


@linux_only
def test_process_usage_of_this_process():
    rss, fds, cpu = metrics.process_usage()
    assert rss > 1 << 20 and fds >= 3 and cpu > 0
    assert metrics.process_usage(2 ** 22 + 12345) is None  # no such process


# -- several workers: sums, retirement, censuses ----------------------------------------------

def scrape(supervision):
    return samples(render(supervision.collect()).decode())


def requests_total(found):
    return sum(v for k, v in found.items() if k[0] == "greenserve_requests_total")


def counters(found):
    return {k: v for k, v in found.items()
            if k[0].endswith(("_total", "_bucket", "_count", "_sum"))}


def test_counts_of_exited_workers_are_kept_and_slots_reused():
    supervision = Supervision(metrics.Arena(2))
    index = supervision.reserve()
    first = supervision.adopt(index)
    supervision.spawned(101, index, slot=0)
    for _ in range(5):
        first.observe(b"GET", 200, 0.01, 0, 10)
    assert requests_total(scrape(supervision)) == 5
    supervision.exited(101, "crashed")
    assert requests_total(scrape(supervision)) == 5
    # The freed slot is cleared for the next worker, which counts on top.
    index = supervision.reserve()
    second = supervision.adopt(index)
    supervision.spawned(102, index, slot=0)
    second.observe(b"GET", 200, 0.01, 0, 10)
    found = scrape(supervision)
    assert requests_total(found) == 6
    assert found[("greenserve_response_body_bytes_total", frozenset())] == 60
    assert found[("greenserve_worker_starts_total", frozenset())] == 2
    assert found[("greenserve_worker_restarts_total", frozenset())] == 1
    assert found[("greenserve_worker_exits_total",
                  frozenset({"cause": "crashed"}.items()))] == 1
    assert found[("greenserve_workers", frozenset())] == 1


def test_a_full_arena_leaves_the_extra_worker_uncounted_but_working():
    supervision = Supervision(metrics.Arena(1))
    assert supervision.reserve() == 0
    assert supervision.reserve() is None
    stats = supervision.adopt(None)
    stats.observe(b"GET", 200, 0.01, 0, 0)  # counts privately, harms nobody
    supervision.spawned(7, None, slot=1)
    supervision.exited(7, "stopped")
    assert supervision.unslotted == 1


def test_counters_never_go_backwards_across_any_interleaving():
    """Requests, exits, restarts and scrapes in a pseudo-random order: every counter
    series is monotonic from scrape to scrape, and the last scrape holds every request."""
    import random
    rng = random.Random(11)
    supervision = Supervision(metrics.Arena(4))
    live = {}
    made = 0
    next_pid = 1000
    previous = {}
    for step in range(600):
        action = rng.random()
        if len(live) < 3 and (action < 0.1 or not live):
            index = supervision.reserve()
            next_pid += 1
            live[next_pid] = supervision.adopt(index)
            supervision.spawned(next_pid, index, slot=rng.randrange(3))
        elif action < 0.15:
            pid = rng.choice(list(live))
            del live[pid]
            supervision.exited(pid, rng.choice(metrics.EXIT_CAUSES),
                               cpu_seconds=rng.random())
        elif action < 0.9:
            stats = rng.choice(list(live.values()))
            stats.observe(rng.choice([b"GET", b"POST", b"X"]), rng.choice([200, 404, 503]),
                          rng.random() * 2, rng.randrange(100), rng.randrange(100))
            made += 1
        else:
            found = counters(scrape(supervision))
            for key, value in previous.items():
                assert found.get(key, 0) >= value, (step, key)
            previous = found
    assert requests_total(scrape(supervision)) == made


def test_a_scrape_collects_the_census_of_booted_workers():
    supervision = Supervision(metrics.Arena(3))
    answering = []
    for pid, states, free in ((1, (1, 2, 3, 4, 0), 10), (2, (0, 1, 0, 1, 1), 5)):
        index = supervision.reserve()
        stats = supervision.adopt(index)
        supervision.spawned(pid, index, slot=pid)
        supervision.booted(pid)
        answering.append((stats, states, free))
    stop = threading.Event()

    def ticks():  # what each worker's periodic tick does
        while not stop.is_set():
            for stats, states, free in answering:
                if stats.census_wanted():
                    stats.publish_census(states, free)
            time.sleep(0.005)

    ticker = threading.Thread(target=ticks)
    ticker.start()
    try:
        started = time.monotonic()
        found = scrape(supervision)
        assert time.monotonic() - started < metrics.CENSUS_WAIT  # answered, not timed out
    finally:
        stop.set()
        ticker.join()
    states = {dict(k[1])["state"]: v for k, v in found.items()
              if k[0] == "greenserve_connections"}
    assert states == {"reading": 1, "active": 3, "waiting": 3, "idle": 5, "closing": 1}
    assert found[("greenserve_connection_slots_free", frozenset())] == 15


def test_a_silent_worker_delays_a_scrape_boundedly_and_a_retired_one_not_at_all():
    supervision = Supervision(metrics.Arena(2))
    index = supervision.reserve()
    stats = supervision.adopt(index)
    supervision.spawned(5, index, slot=0)
    supervision.booted(5)
    started = time.monotonic()
    scrape(supervision)
    waited = time.monotonic() - started
    assert metrics.CENSUS_WAIT <= waited < metrics.CENSUS_WAIT * 10
    stats.retire()  # a draining worker whose server has stopped
    started = time.monotonic()
    scrape(supervision)
    assert time.monotonic() - started < metrics.CENSUS_WAIT


def test_worker_cpu_time_is_kept_after_it_exits():
    supervision = Supervision(metrics.Arena(1))
    index = supervision.reserve()
    supervision.adopt(index)
    supervision.spawned(os.getpid(), index, slot=0)  # "a worker": this process, via /proc
    key = ("greenserve_process_cpu_seconds_total", frozenset({"role": "worker"}.items()))
    seen = scrape(supervision)[key]
    assert seen > 0
    supervision.exited(os.getpid(), "stopped", cpu_seconds=seen + 100)
    assert scrape(supervision)[key] == pytest.approx(seen + 100)


FORKING_SCRIPT = r'''
import os, signal, sys, threading, time
from prometheus_client.parser import text_string_to_metric_families
from greenserve import metrics

ROUNDS, REQUESTS = 4, 20000
supervision = metrics.Supervision(metrics.Arena(8))
done = threading.Event()
problems, scrapes = [], [0]

def series():
    found = {}
    for family in text_string_to_metric_families(metrics.render(supervision.collect()).decode()):
        for s in family.samples:
            if s.name.endswith(("_total", "_bucket", "_count", "_sum")) and "role" not in s.labels:
                found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found

def scraper():  # races every fork, write, kill and reap below
    previous = {}
    while not done.is_set():
        found = series()
        scrapes[0] += 1
        for key, value in previous.items():
            if found.get(key, 0) < value:
                problems.append(f"{key} went from {value} to {found.get(key)}")
        previous = found

threading.Thread(target=scraper, daemon=True).start()
for round in range(ROUNDS):
    children = []
    for slot in range(2):
        index = supervision.reserve()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            stats = supervision.adopt(index)
            for i in range(REQUESTS):
                stats.observe(b"GET", 200, 0.002, 0, 1)
            os.write(ready_w, b"!")
            if round % 2:
                os._exit(0)
            signal.pause()  # killed below, with SIGKILL: nothing can be flushed
            os._exit(1)
        os.close(ready_w)
        supervision.spawned(pid, index, slot)
        children.append((pid, ready_r))
    for pid, ready_r in children:
        assert os.read(ready_r, 1) == b"!"
        os.close(ready_r)
        if round % 2 == 0:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        supervision.exited(pid, "crashed" if os.WIFSIGNALED(status) else "stopped")
while scrapes[0] < 3:
    time.sleep(0.01)
done.set()
final = series()
total = sum(v for (name, _), v in final.items() if name == "greenserve_requests_total")
print("problems", len(problems), problems[:3])
print("total", total, "expected", ROUNDS * 2 * REQUESTS, "scrapes", scrapes[0])
'''


def test_real_workers_forked_and_killed_are_counted_exactly_once():
    result = subprocess.run([sys.executable, "-c", FORKING_SCRIPT], capture_output=True,
                            text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["problems"].startswith("0 "), lines["problems"]
    total, _, expected, *_ = lines["total"].split()
    assert int(float(total)) == int(expected) == 4 * 2 * 20000


# -- the admin listener under a master: a thread -----------------------------------------------

class Client:
    """One request per connection, as the admin listener answers."""

    def __init__(self, address):
        self.address = address

    def get(self, path, method="GET", headers=None):
        if isinstance(self.address, str):
            conn = UnixHTTPConnection(self.address)
        else:
            conn = http.client.HTTPConnection(*self.address, timeout=WAIT)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=WAIT)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(WAIT)
        self.sock.connect(self.path)


@pytest.fixture
def admin():
    """An AdminThread over a Supervision with one worker slot, on 127.0.0.1:0."""
    started = []

    def start(health=None, collect=None, family=socket.AF_INET, path=None):
        sock = socket.socket(family)
        sock.bind(path or ("127.0.0.1", 0))
        sock.listen(16)
        supervision = Supervision(metrics.Arena(2), listeners=lambda: [sock])
        health = health or Health()
        thread = AdminThread(sock, AdminRoutes(health, collect or supervision.collect))
        thread.start()
        started.append(thread)
        return Client(sock.getsockname()), supervision, health, thread

    yield start
    for thread in started:
        thread.stop()


def test_metrics_over_http_in_both_formats(admin):
    client, supervision, _, _ = admin()
    index = supervision.reserve()
    supervision.adopt(index).observe(b"GET", 200, 0.01, 0, 3)
    supervision.spawned(9, index, 0)
    status, headers, body = client.get("/metrics")
    assert status == 200 and headers["Content-Type"] == TEXT_TYPE
    assert headers["Connection"] == "close" and int(headers["Content-Length"]) == len(body)
    assert requests_total(samples(body.decode())) == 1
    status, headers, body = client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert status == 200 and headers["Content-Type"] == OPENMETRICS_TYPE
    assert requests_total(samples(body.decode(), openmetrics=True)) == 1
    status, headers, body = client.get("/metrics", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 100


def test_readiness_follows_the_state_hooks(admin):
    client, _, health, _ = admin()
    assert client.get("/readyz")[:3:2] == (503, b"not ready: starting\n")
    health.set_ready()
    assert client.get("/readyz")[:3:2] == (200, b"ready\n")
    health.set_unready("reloading")
    assert client.get("/readyz")[:3:2] == (503, b"not ready: reloading\n")
    health.set_ready()
    health.set_draining()
    assert client.get("/readyz")[:3:2] == (503, b"not ready: draining\n")
    health.set_ready()  # too late: a drain is for good
    assert client.get("/readyz")[0] == 503
    assert client.get("/healthz")[:3:2] == (200, b"ok\n")  # draining is not dead


def test_liveness_fails_when_the_loop_stops_beating(admin):
    health = Health(live_timeout=10.0)
    client, _, _, _ = admin(health=health)
    assert client.get("/healthz")[0] == 200
    health.last_beat -= 60  # as if the master's loop had been stuck for a minute
    status, _, body = client.get("/healthz")
    assert status == 503 and b"has not run for 6" in body
    health.beat()
    assert client.get("/healthz")[0] == 200


def test_other_paths_methods_and_broken_requests(admin):
    client, _, _, _ = admin()
    assert client.get("/")[0] == 404
    assert client.get("/metrics/")[0] == 404
    status, headers, _ = client.get("/metrics", method="POST")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    with socket.create_connection(client.address, timeout=WAIT) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n")
        assert raw.makefile("rb").readline().startswith(b"HTTP/1.1 400 ")


def _raw_exchange(address, request, pieces):
    """Send ``request`` to the admin listener in ``pieces`` (a list of split points) and read
    the whole answer (it closes after one)."""
    with socket.create_connection(address, timeout=WAIT) as raw:
        start = 0
        for end in [*pieces, len(request)]:
            raw.sendall(request[start:end])
            start = end
        received = b""
        while True:
            data = raw.recv(65536)
            if not data:
                return received
            received += data


def _splits(request):
    """The ways a request is split in these tests: whole, at every point, a byte at a time."""
    return [[], *([point] for point in range(1, len(request))),
            list(range(1, len(request)))]


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",     # 200
    b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n",     # 404
    b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n",    # 405
    b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n",     # 503, head only
])
def test_every_admin_answer_has_a_date(admin, request_bytes):
    # RFC 9110 §6.6.1: an origin server with a clock MUST send Date in 2xx, 3xx and 4xx
    # responses (and the admin listener's own error answers already do).
    client, _, _, _ = admin()
    for pieces in _splits(request_bytes):
        answer = _raw_exchange(client.address, request_bytes, pieces)
        head = answer.partition(b"\r\n\r\n")[0]
        assert re.search(rb"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT(\r\n|$)",
                         head), (pieces, answer)


@pytest.mark.parametrize("request_bytes", [
    b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nBad header\r\n\r\n",   # 400
    b"HEAD /metrics HTTP/1.1\r\n\r\n",                             # 400: no Host
    b"HEAD /metrics HTTP/2.0\r\nHost: x\r\n\r\n",                    # 505
])
def test_an_admin_error_answering_head_has_no_content(admin, request_bytes):
    # RFC 9110 §9.3.2: the server MUST NOT send content in the response to HEAD; the
    # Content-Length is the one a GET would have got.
    client, _, _, _ = admin()
    for pieces in _splits(request_bytes):
        answer = _raw_exchange(client.address, request_bytes, pieces)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.1 [45]\d\d ", head) and b"\r\nContent-Length: " in head, \
            answer
        assert body == b"", (pieces, answer)
        assert b"\r\nServer:" not in head  # as in this listener's other answers


def test_a_collect_error_is_a_500_and_a_log_line(admin, caplog):
    def broken():
        raise RuntimeError("boom")

    client, _, _, _ = admin(collect=broken)
    status, _, body = client.get("/metrics")
    assert status == 500 and b"error collecting metrics" in body
    assert "boom" in caplog.text
    assert client.get("/healthz")[0] == 200  # the listener lives on


def test_many_slow_clients_do_not_hold_up_a_probe(admin):
    """More silent or half-sent connections than there are answering threads: a probe is
    still answered at once (a kubelet's probe times out after a second by default)."""
    from greenserve.admin import ADMIN_CONNECTIONS
    client, _, _, _ = admin()
    idle = [socket.create_connection(client.address) for _ in range(4 * ADMIN_CONNECTIONS)]
    try:
        for sock in idle[::2]:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request, then nothing
        for _ in range(3):
            started = time.monotonic()
            assert client.get("/healthz")[0] == 200
            assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()


def test_the_oldest_pending_connection_makes_room_for_a_new_one(admin, monkeypatch):
    from greenserve import admin as admin_module
    monkeypatch.setattr(admin_module, "PENDING_CONNECTIONS", 4)
    client, _, _, _ = admin()
    oldest = socket.create_connection(client.address, timeout=WAIT)
    oldest.sendall(b"GET /healthz HTTP/1.1\r\n")
    others = [socket.create_connection(client.address) for _ in range(3)]
    try:
        assert client.get("/healthz")[0] == 200  # the fifth: the oldest was closed for it
        assert oldest.recv(100) == b""
    finally:
        for sock in [oldest, *others]:
            sock.close()


def test_admin_threads_block_every_signal(admin):
    _, _, _, thread = admin()
    native = thread._thread.native_id
    with open(f"/proc/self/task/{native}/status") as status:
        blocked = next(line.split()[1] for line in status if line.startswith("SigBlk:"))
    assert int(blocked, 16) & (1 << (signal.SIGTERM - 1))
    assert int(blocked, 16) & (1 << (signal.SIGCHLD - 1))


def test_admin_listener_on_a_unix_socket(admin, tmp_path):
    path = str(tmp_path / "admin.sock")
    client, _, _, _ = admin(family=socket.AF_UNIX, path=path)
    assert client.get("/healthz")[0] == 200


def test_stop_closes_the_listener(admin):
    client, _, _, thread = admin()
    thread.stop()
    assert not thread._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(client.address, timeout=WAIT).recv(1)


# -- without a master: the admin server on the app's hub -----------------------------------------

def test_census_of_a_live_server_without_a_master():
    """Idle keep-alive connections, a long poll, a half-sent head, as counted by the
    admin server that runs on the same hub as the app's."""
    import gevent
    from gevent.event import Event

    from greenserve.server import Server

    release = Event()
    polled = threading.Event()

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/poll":
            polled.set()
            release.wait(WAIT)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    box, ready, stop = {}, threading.Event(), threading.Event()

    def run():
        server = Server(app, bind="127.0.0.1:0", max_connections=50)
        server.start()
        _, stats = private_stats()
        admin_sock = socket.socket()
        admin_sock.bind(("127.0.0.1", 0))
        admin_sock.listen(8)
        routes = AdminRoutes(Health(), local_collector(stats, server, server._listeners))
        admin_server = serve_in_process(admin_sock, routes, server.config)
        box.update(server=server, admin=admin_sock.getsockname(), stats=stats)
        ready.set()
        while not stop.is_set():
            gevent.sleep(0.02)
        release.set()
        admin_server.stop(timeout=2)
        server.stop(timeout=2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(WAIT)
    address = box["server"].address
    client = Client(box["admin"])
    opened = []
    try:
        for _ in range(2):  # idle: kept alive after one request
            conn = http.client.HTTPConnection(*address, timeout=WAIT)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"ok"
            opened.append(conn)
        half = socket.create_connection(address)
        half.sendall(b"GET / HTTP/1.1\r\nHo")  # reading a head
        opened.append(half)
        poll = socket.create_connection(address)
        poll.sendall(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        opened.append(poll)
        assert polled.wait(WAIT)
        want = {"reading": 1, "active": 0, "waiting": 1, "idle": 2, "closing": 0}
        deadline = time.monotonic() + WAIT
        while True:  # the poll counts as waiting once a second in the app
            status, _, body = client.get("/metrics")
            assert status == 200
            found = samples(body.decode())
            states = {dict(k[1])["state"]: v for k, v in found.items()
                      if k[0] == "greenserve_connections"}
            if states == want or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert states == want
        assert found[("greenserve_connection_slots_free", frozenset())] == 50 - 4
        assert found[("greenserve_process_open_fds",
                      frozenset({"role": "worker"}.items()))] > 4
        assert client.get("/healthz")[0] == 200
    finally:
        for conn in opened:
            conn.close()
        stop.set()
        thread.join(WAIT)


def test_answer_census_only_when_asked():
    class FakeServer:  # only the attributes the census reads
        connections = ()
        spawner = ()
        config = load_config(cli={"max_connections": "3"})

    arena = metrics.Arena(1)
    stats = arena.stats(0)
    arena.header[0] = 4
    assert stats.census_wanted()
    answer_census(FakeServer, stats)
    assert not stats.census_wanted()
    assert stats.ints[metrics._FREE_SLOTS] == 3
    stats.ints[metrics._FREE_SLOTS] = 0
    answer_census(FakeServer, stats)  # not asked again: nothing written
    assert stats.ints[metrics._FREE_SLOTS] == 0


# -- settings and imports -------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["127.0.0.1:9100", "[::1]:9100", ":9100",
                                   "unix:/run/greenserve-admin.sock"])
def test_metrics_bind_accepts_addresses_with_a_port_or_a_path(value):
    assert load_config(cli={"metrics_bind": value}).metrics_bind == value


@pytest.mark.parametrize("value", ["localhost", "9100", "fd://3", "127.0.0.1:http", "[::1]"])
def test_metrics_bind_refuses_the_rest_in_one_line(value):
    with pytest.raises(ConfigError) as error:
        load_config(cli={"metrics_bind": value})
    assert "\n" not in str(error.value) and "metrics-bind" in str(error.value)


def test_metrics_are_off_by_default():
    assert load_config().metrics_bind is None
    assert load_config(environ={"GREENSERVE_METRICS_BIND": ""}).metrics_bind is None


def test_the_master_side_modules_import_no_gevent():
    probe = textwrap.dedent("""
        import sys, greenserve.metrics, greenserve.admin
        print(*sorted(m for m in sys.modules if m.startswith(("gevent", "greenlet"))))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)), check=True).stdout
    assert out.strip() == ""
