"""greenserve's own timers outlast an app that breaks the hub's timer heap.

One ``gevent.sleep(float("nan"))`` used to stop every timer of the worker: no idle keep-alive
connection was closed, no partial head got its 408, --request-timeout stopped. Now the
patched sleep refuses NaN, and the timers are driven by a ticker thread that a broken timer
heap cannot stall. Real processes: the attack breaks the whole hub.
"""

import socket
import time

import pytest

import procs
from conftest import read_response, recv_until_closed
from procs import WAIT


@pytest.fixture
def server():
    with procs.Processes() as started:
        process = started.greenserve(
            "timer_attacks:app", "-b", "127.0.0.1:0", "--keep-alive", "1",
            "--header-timeout", "1", "--request-timeout", "2")
        yield process.address()


def request(address, path, timeout=WAIT):
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path)
        return read_response(sock, timeout)


def test_gevent_sleep_nan_is_refused_with_an_error(server):
    assert request(server, b"/sleep-nan")[0] == 500
    assert request(server, b"/")[2] == b"ok"


def test_timers_fire_after_the_timer_heap_is_broken(server):
    assert request(server, b"/timer-nan")[2] == b"ok"

    # An idle keep-alive connection is still closed after --keep-alive (1 s).
    with socket.create_connection(server, timeout=WAIT) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(idle)[2] == b"ok"
        started = time.monotonic()
        assert recv_until_closed(idle, WAIT) == b""
        assert time.monotonic() - started < 10

    # A partial head still gets its 408 after --header-timeout (1 s).
    with socket.create_connection(server, timeout=WAIT) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost:")
        started = time.monotonic()
        assert recv_until_closed(slow, WAIT).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 10

    # --request-timeout (2 s) still interrupts an app that never answers.
    started = time.monotonic()
    assert request(server, b"/hang")[0] == 503
    assert time.monotonic() - started < 20


def test_open_file_limit_is_raised_for_max_connections_or_warned_about():
    # A soft limit of 256 under a hard limit of 512, with --max-connections 1000: greenserve
    # raises the soft limit as far as it may and says the rest is still too low.
    with procs.Processes() as started:
        process = started.start(["prlimit", "--nofile=256:512", *procs.greenserve_command(
            "timer_attacks:app", "-b", "127.0.0.1:0", "--max-connections", "1000")])
        process.wait_for(r"raised the open-file limit from 256 to 512 for --max-connections 1000")
        process.wait_for(r"open-file limit \(512, hard limit 512\) is below --max-connections")
        assert request(process.address(), b"/")[2] == b"ok"
