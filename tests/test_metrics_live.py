"""/metrics, /healthz and /readyz of a real greenserve with two workers: the request counter
equals the requests made, also across a reload that replaces every worker; readiness turns
503 as soon as a graceful stop begins, while the request in flight still completes."""

import http.client
import re
import signal
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

import procs
from procs import WAIT, HeldRequest, get

ADMIN = re.compile(r"Admin listener at http://(?P<host>[^\s:]+):(?P<port>\d+)")


@pytest.fixture
def master(tmp_path):
    with procs.Processes() as started:
        server = started.greenserve("webapp:app", "-w", "2", "-b", "127.0.0.1:0",
                                    "--metrics-bind", "127.0.0.1:0")
        address = server.address()
        match = server.wait_for(ADMIN)
        server.wait_for("booted", count=2)
        yield server, address, (match["host"], int(match["port"])), tmp_path


def admin_get(admin, path):
    conn = http.client.HTTPConnection(*admin, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def requests_counted(admin):
    status, text = admin_get(admin, "/metrics")
    assert status == 200
    total = 0
    for family in text_string_to_metric_families(text):
        if family.name == "greenserve_requests":
            total += sum(sample.value for sample in family.samples
                         if sample.name == "greenserve_requests_total")
    return int(total)


def load(address, threads=4, each=50):
    errors = []

    def client():
        for i in range(each):
            try:
                assert get(address, f"/load/{i}")[0] == 200
            except Exception as exc:  # counted, then asserted below
                errors.append(exc)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(WAIT * 3)
    assert errors == []
    return threads * each


def test_counter_equals_requests_made_across_workers_and_a_reload(master):
    server, address, admin, _ = master
    assert admin_get(admin, "/healthz")[0] == 200
    assert admin_get(admin, "/readyz")[0] == 200
    made = load(address)
    assert requests_counted(admin) == made
    # A reload replaces both workers: their counts must survive them, neither lost nor
    # counted twice.
    server.signal(signal.SIGHUP)
    server.wait_for("booted", count=4)
    procs.wait_until(lambda: admin_get(admin, "/readyz")[0] == 200, what="ready again")
    made += load(address)
    assert requests_counted(admin) == made


def test_readyz_fails_as_soon_as_a_stop_begins(master):
    server, address, admin, tmp_path = master
    held = HeldRequest(server, address, tmp_path)
    server.signal(signal.SIGTERM)
    procs.wait_until(lambda: admin_get(admin, "/readyz")[0] == 503,
                     what="/readyz to turn 503 during the drain")
    assert not held.done()  # the request in flight was not cut
    held.release()
    assert held.response()[0] == 200
    assert server.exit_code() == 0
