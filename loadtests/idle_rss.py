"""Memory per idle keep-alive connection: the wrk bench's ``idle-rss`` row.

The harness itself is the client: raw sockets, one ``GET /`` (HTTP/1.1, keep-alive) on each,
the whole response read, then the connection left open and silent. One warm-up connection is
opened first, so what the server allocates once (on its first request) is not charged to the
connections; the figure is the growth of the server's RSS (summed over its process tree) from
after the warm-up to ``IDLE_SECONDS`` after the last connection, divided by their number.
"""

import socket
import time

from loadtests.servers import HOST, tree_rss_bytes

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
MAX_HEAD = 65536
# How long the connections stay idle before the RSS is read: shorter than every server's idle
# timeout here (greenserve's default --keep-alive is 5 s; the harness gives gunicorn and
# meinheld 30 s; gevent.pywsgi and granian have none).
IDLE_SECONDS = 3.0


def _recv(sock, what):
    data = sock.recv(65536)
    if not data:
        raise OSError(f"the server closed the connection before {what}")
    return data


def read_response(sock):
    """Read one whole response (Content-Length or chunked) from ``sock``; return its status.

    For one request at a time: bytes after the response (none without pipelining) are dropped.
    """
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise OSError("response head over 64 KiB")
        buf += _recv(sock, "the end of the response head")
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip().lower()
    try:
        status = int(lines[0].split()[1])
        need = int(fields[b"content-length"]) if b"content-length" in fields else None
    except (IndexError, ValueError):
        raise OSError(f"malformed response head: {lines[0][:80]!r}") from None
    if need is not None:
        while len(body) < need:
            body += _recv(sock, "the end of the body")
    elif b"chunked" in fields.get(b"transfer-encoding", b""):
        while not body.endswith(b"0\r\n\r\n"):  # enough for the harness's own app: no trailers
            body += _recv(sock, "the last chunk")
    else:
        raise OSError("a response without Content-Length or chunked framing")
    return status


def open_idle(port, count, timeout=10.0):
    """``count`` connections, each with one request answered 200 and then left idle.

    One after the other: the server's accept queue never holds more than one, so no SYN is
    dropped and retried a second later. On error the sockets already open are closed.
    """
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection((HOST, port), timeout=timeout)
            socks.append(sock)
            sock.sendall(REQUEST)
            status = read_response(sock)
            if status != 200:
                raise OSError(f"GET / answered {status}")
    except BaseException:
        close_all(socks)
        raise
    return socks


def is_open(sock):
    """True while the server has not closed ``sock`` (nothing is expected from it)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def close_all(socks):
    for sock in socks:
        sock.close()


def settled_rss(pid, bound_s=3.0, interval_s=0.1, same=3):
    """The tree's RSS once ``same`` readings in a row agree (or after ``bound_s`` seconds)."""
    deadline = time.monotonic() + bound_s
    readings = [tree_rss_bytes(pid)]
    while time.monotonic() < deadline and readings[-same:].count(readings[-1]) < same:
        time.sleep(interval_s)
        readings.append(tree_rss_bytes(pid))
    return readings[-1]


def fresh_request_ms(port, timeout=10.0):
    """Milliseconds from connect to a whole response, for a new connection."""
    t0 = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(REQUEST)
        read_response(sock)
    return (time.perf_counter() - t0) * 1e3


def measure(server, count, idle_s=IDLE_SECONDS):
    """The idle-rss figures for a started ``servers.Server``, which keeps running."""
    pid = server.proc.pid
    warm = open_idle(server.port, 1)
    idle = []
    try:
        time.sleep(idle_s)
        before = settled_rss(pid)
        t0 = time.monotonic()
        idle = open_idle(server.port, count)
        opened_s = time.monotonic() - t0
        # Idle means idle for a while: a server may shed per-connection state of connections
        # that stay silent (greenserve parks them after a second without a request).
        time.sleep(idle_s)
        after = settled_rss(pid)
        fresh_ms = fresh_request_ms(server.port)
        closed = sum(not is_open(s) for s in warm + idle)
    finally:
        close_all(warm + idle)
    return {
        "connections": count,
        "kib_per_conn": round((after - before) / 1024 / count, 2),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "opened_s": round(opened_s, 2),
        "fresh_ms": round(fresh_ms, 2),
        # Closed by the server before the end (an idle timeout shorter than the measurement):
        # their memory is no longer counted, so the figure is then too low.
        "closed_by_server": closed,
    }
