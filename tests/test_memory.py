"""memory.MemoryReturner: trims only after enough connections released memory, and at most
once per interval; the trim itself is glibc's real malloc_trim (this machine runs glibc)."""

import resource
import socket
from time import monotonic

from conftest import read_response
from greenserve import memory
from procs import wait_until


def test_trims_after_enough_releases_and_not_more_often_than_the_interval():
    returner = memory.MemoryReturner()
    assert returner._trim is not None, "expected glibc's malloc_trim on this platform"
    returner.count = memory.TRIM_AFTER - 1
    returner.last = monotonic() - 2 * memory.TRIM_INTERVAL
    assert not returner.tick()  # too few
    returner.count += 1
    assert returner.tick()
    assert returner.count == 0 and returner.trims == 1
    returner.count = 10 * memory.TRIM_AFTER
    assert not returner.tick()  # too soon after the last trim


def test_a_burst_of_parked_connections_is_counted_for_a_trim(serve):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = memory.TRIM_AFTER + 64
    if soft < 2 * wanted + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * wanted), hard))

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "2"), ("Content-Type", "text/plain")])
        return [b"ok"]

    with serve(app, keep_alive=60) as srv:
        clients = []
        try:
            for _ in range(memory.TRIM_AFTER):
                sock = srv.connect(20)
                clients.append(sock)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock, 20)[2] == b"ok"
            returner = srv.server.memory
            # Every connection parks after a second idle; the next tick trims at once.
            returner.last = monotonic() - 2 * memory.TRIM_INTERVAL
            assert returner.trims == 0
            wait_until(lambda: returner.trims == 1, 30, "a trim after the burst parked")
            assert returner.count < memory.TRIM_AFTER
        finally:
            for sock in clients:
                sock.close()
