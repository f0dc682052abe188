"""memory.MemoryReturner: trims only after enough connections released memory, and at most
once per interval; the trim itself is glibc's real malloc_trim (this machine runs glibc)."""

import resource
import socket
from time import monotonic

from conftest import read_response
from greenserve import memory, server
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
            assert returner.trims == 0
            wait_until(lambda: returner.trims == 1, 30, "a trim after the burst parked")
            assert returner.count < memory.TRIM_AFTER
            # The burst's spare greenlets went with it, but for a few kept for the next one.
            wait_until(lambda: len(srv.server.spawner._idle) <= server.IDLE_GREENLETS_KEPT,
                       30, "the spare greenlets ended")
            for sock in clients[:3]:  # and the parked connections still answer
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                assert read_response(sock, 20)[2] == b"ok"
        finally:
            for sock in clients:
                sock.close()


def test_shrinking_the_idle_greenlets_ends_the_oldest_and_keeps_the_rest_usable():
    import gevent

    from greenserve.spawner import Spawner

    served = []
    spawner = Spawner(limit=100)
    for n in range(10):
        spawner.spawn(lambda sock, address: served.append(sock), n, None)
    gevent.sleep(0.01)
    assert sorted(served) == list(range(10)) and len(spawner._idle) == 10
    idle = list(spawner._idle)
    gevent.get_hub().loop.run_callback(spawner.shrink_idle, 3)  # from the hub, as the server
    gevent.sleep(0.01)
    assert spawner._idle == idle[-3:]
    assert all(glet.dead for glet in idle[:-3]) and not any(glet.dead for glet in idle[-3:])
    spawner.spawn(lambda sock, address: served.append(sock), "again", None)
    gevent.sleep(0.01)
    assert served[-1] == "again" and len(spawner._idle) == 3


def test_a_greenlet_that_finishes_while_being_killed_leaves_the_idle_greenlets():
    # kill() lists the running greenlets and throws into them at the hub's next turn; one
    # that ends its connection in between has gone back to the idle greenlets, and dies
    # there. Reused, it would run nothing: the next connection would hold a slot for ever.
    import gevent
    from gevent.event import Event

    from greenserve.spawner import Spawner

    spawner = Spawner(limit=100)
    started, go, served = Event(), Event(), Event()

    def connection(sock, address):
        started.set()
        go.wait()

    spawner.spawn(connection, None, None)
    assert started.wait(5)
    go.set()  # its wake-up is queued first: it ends its connection, then the throw comes
    assert spawner.kill(timeout=5)
    assert not any(glet.dead for glet in spawner._idle)
    spawner.spawn(lambda sock, address: served.set(), None, None)
    assert served.wait(5)
