"""The client side of ``python -m loadtests slowloris``: attackers, pooled keep-alive clients
with newcomers, and a slow downloader, each run as ``python -m loadtests.slowclients KIND SPEC``
in its own process pinned to the load CPU(s).

A client prints ``ready ...`` once set up and, when done (or when its stdin closes),
``result {json}``; ``ClientProcess`` is the parent's handle on one. Every client is bounded in
time by its spec and talks only to 127.0.0.1.
"""

import errno
import heapq
import json
import os
import random
import re
import select
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time

from loadtests.errors import RunError
from loadtests.servers import HOST, child_env, kill_group, pinned, raise_nofile

MODULE = "loadtests.slowclients"  # not __name__: that is "__main__" in the client processes
NEWCOMER_TIMEOUT_S = 10.0
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
_TCP_ESTABLISHED = 1
POOL_REQUEST = b"GET / HTTP/1.1\r\nHost: pool\r\n\r\n"
NEWCOMER_REQUEST = b"GET / HTTP/1.1\r\nHost: newcomer\r\nConnection: close\r\n\r\n"


# -- the parent's handle ---------------------------------------------------------------------------

class ClientProcess:
    """One client process, pinned to the load CPUs. It prints ``ready ...`` when set up and
    ``result {json}`` when done; closing its stdin asks it to finish early."""

    def __init__(self, kind, spec, cpus):
        argv = [sys.executable, "-m", MODULE, kind, json.dumps(spec)]
        self.proc = subprocess.Popen(pinned(argv, cpus), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=child_env(),
                                     start_new_session=True)
        self._buffer = b""

    def expect(self, word, timeout, on_line=None):
        """The rest of the first line that starts with ``word`` (other lines go to
        ``on_line``); RunError if the child exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                head, _, rest = line.decode().partition(" ")
                if head == word:
                    return rest
                if on_line:
                    on_line(head, rest)
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunError(f"{self.proc.args[-2]} client: no '{word}' within {timeout:.0f} s")
            ready, _, _ = select_read([fd], min(left, 1.0))
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    raise RunError(f"{self.proc.args[-2]} client exited before '{word}' "
                                   f"(status {self.proc.wait()})")
                self._buffer += data

    def finish(self, timeout):
        """Ask the child to stop and return its result."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        return json.loads(self.expect("result", timeout))

    def stop(self):
        kill_group(self.proc, grace=5.0)
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass


def select_read(fds, timeout):
    return select.select(fds, [], [], timeout)


# -- in the client process -------------------------------------------------------------------------

def _say(word, payload=""):
    sys.stdout.write(f"{word} {payload}\n")
    sys.stdout.flush()


def _stdin_closed():
    """True once the parent closed our stdin (non-blocking check)."""
    ready, _, _ = select_read([sys.stdin.fileno()], 0)
    return bool(ready) and not os.read(sys.stdin.fileno(), 4096)


# The bytes each attacker shape sends at connect time and then drips one at a time.
def _attack_bytes(spec):
    shape = spec["shape"]
    if shape == "slow-bodies":
        head = (f"POST / HTTP/1.1\r\nHost: attacker\r\nContent-Type: application/octet-stream"
                f"\r\nContent-Length: {spec['body_length']}\r\n\r\n").encode()
        return head, b"x"
    if shape == "slow-heads":
        return b"GET / HTTP/1.1\r\nHost: attacker\r\n", b"X-Slow: a\r\n"
    size = spec["response"]
    return (f"GET /big?bytes={size}&piece={min(size, 1 << 20)} HTTP/1.1\r\n"
            f"Host: attacker\r\n\r\n").encode(), b""


class _Attacker:
    __slots__ = ("sock", "initial", "born", "connected", "status", "drip")

    def __init__(self, sock, initial):
        self.sock, self.initial, self.born = sock, initial, 0.0
        self.connected, self.status, self.drip = False, None, 0


def attack(spec):
    """Keep ``count`` attacking connections open until stdin closes or ``max_seconds`` pass.

    One epoll loop: a heap of due times drives the drips; slow bodies and heads also watch
    for the server's answer or close. A slow reader reads only on its schedule, and notices
    a close from the socket's TCP state (its unread bytes would hide the EOF for hours).
    """
    shape, count, interval = spec["shape"], spec["count"], spec["interval"]
    address = (HOST, spec["port"])
    first, drip = _attack_bytes(spec)
    reader = shape == "slow-readers"
    sel = selectors.DefaultSelector()
    due = []  # (when, seq, attacker, action)
    seq = 0
    stats = {"connects": 0, "connect_errors": 0, "closed_by_server": 0, "statuses": {},
             "lifetimes": [], "bytes_sent": 0, "bytes_read": 0}
    live = set()
    started = time.monotonic()
    pending = [count]  # first connections not yet established or failed
    announced = False

    def schedule(delay, attacker, action):
        nonlocal seq
        seq += 1
        heapq.heappush(due, (time.monotonic() + delay, seq, attacker, action))

    def settled(attacker):
        if attacker.initial:
            attacker.initial = False
            pending[0] -= 1

    def open_one(initial=False):
        sock = socket.socket()
        if reader:  # a small window: the server's sends stall instead of filling our buffer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, spec["rcvbuf"])
        sock.setblocking(False)
        attacker = _Attacker(sock, initial)
        stats["connects"] += 1
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
            stats["connect_errors"] += 1
            drop(attacker, by_server=False)
            return
        sel.register(sock, selectors.EVENT_WRITE, attacker)

    def drop(attacker, by_server):
        settled(attacker)
        if attacker.sock is None:
            return
        try:
            sel.unregister(attacker.sock)
        except (KeyError, ValueError):
            pass
        attacker.sock.close()
        attacker.sock = None
        live.discard(attacker)
        if by_server:
            stats["closed_by_server"] += 1
            stats["lifetimes"].append(round(time.monotonic() - attacker.born, 2))
            key = str(attacker.status or "none")
            stats["statuses"][key] = stats["statuses"].get(key, 0) + 1
        # At once after the server dropped us (an attacker wants its slot back); slower after
        # a failed connect, so a dead server does not turn this into a busy loop.
        schedule(spec["reconnect_delay"] if by_server else 1.0, None, "open")

    def connected(attacker):
        sock = attacker.sock
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            stats["connect_errors"] += 1
            drop(attacker, by_server=False)
            return
        attacker.connected, attacker.born = True, time.monotonic()
        try:
            stats["bytes_sent"] += sock.send(first)
        except OSError:
            drop(attacker, by_server=True)
            return
        live.add(attacker)
        settled(attacker)
        if reader:
            sel.unregister(sock)
        else:
            sel.modify(sock, selectors.EVENT_READ, attacker)
        # Spread the drips over one interval, so K attackers do not all send in the same tick.
        schedule(random.uniform(0, interval), attacker, "drip")

    def readable(attacker):
        try:
            data = attacker.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            drop(attacker, by_server=True)
            return
        stats["bytes_read"] += len(data)
        found = STATUS.search(data)
        if found:
            attacker.status = int(found.group(1))

    def drip_one(attacker):
        sock = attacker.sock
        try:
            if reader:
                state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                if state != _TCP_ESTABLISHED:
                    raise ConnectionResetError("closed by the server")
                try:
                    data = sock.recv(1)
                except BlockingIOError:
                    data = None
                if data == b"":
                    raise ConnectionResetError("closed by the server")
                if data:
                    stats["bytes_read"] += 1
            else:
                byte = drip[attacker.drip % len(drip):][:1]
                attacker.drip += 1
                stats["bytes_sent"] += sock.send(byte)
        except OSError:
            drop(attacker, by_server=True)
            return
        schedule(interval, attacker, "drip")

    sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
    for _ in range(count):
        open_one(initial=True)
    deadline = started + spec["max_seconds"]
    while time.monotonic() < deadline:
        if not announced and pending[0] <= 0:
            announced = True
            _say("ready", str(len(live)))
        timeout = 0.5
        if due:
            timeout = max(0.0, min(timeout, due[0][0] - time.monotonic()))
        stop = False
        for key, _ in sel.select(timeout):
            if key.data == "stdin":
                stop = not os.read(sys.stdin.fileno(), 4096)
            elif key.data.sock is None:
                continue
            elif not key.data.connected:
                connected(key.data)
            else:
                readable(key.data)
        if stop:
            break
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, attacker, action = heapq.heappop(due)
            if action == "open":
                open_one()
            elif attacker.sock is not None:
                drip_one(attacker)
    lifetimes = stats.pop("lifetimes")
    stats["held_at_end"] = len(live)
    stats["median_lifetime_s"] = statistics.median(lifetimes) if lifetimes else None
    stats["max_lifetime_s"] = max(lifetimes) if lifetimes else None
    stats["seconds"] = round(time.monotonic() - started, 1)
    return stats


def read_response(sock):
    """Status of one response read off ``sock`` (Content-Length bodies), or None if the
    connection closed or reset before the response was complete."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        need = int(found.group(1)) if found else 0
        while len(body) < need:
            piece = sock.recv(65536)
            if not piece:
                return None
            body += piece
        return int(head.split(b" ", 2)[1])
    except OSError:
        return None


def exchange(sock, request):
    try:
        sock.sendall(request)
    except OSError:
        return None
    return read_response(sock)


def pool(spec):
    """``clients`` keep-alive clients sending a request every ~``think`` s; from ``ready`` on,
    a newcomer every ``newcomer_every`` s on a fresh connection, timed connect to response."""
    address = (HOST, spec["port"])
    lock = threading.Lock()
    stats = {"pooled_requests": 0, "pooled_dropped": 0, "pooled_failed": 0}
    stop = threading.Event()
    connected = threading.Barrier(spec["clients"] + 1)

    def connect():
        return socket.create_connection(address, timeout=NEWCOMER_TIMEOUT_S)

    def pooled():
        sock = None
        try:
            sock = connect()
            exchange(sock, POOL_REQUEST)  # served once: from now on an idle keep-alive client
        except OSError:
            pass
        try:
            connected.wait(60)
        except threading.BrokenBarrierError:
            return
        while not stop.wait(spec["think"] * random.uniform(0.5, 1.5)):
            status = exchange(sock, POOL_REQUEST) if sock else None
            dropped = status is None
            if dropped:  # the server closed our kept-alive connection: reconnect, retry once
                if sock:
                    sock.close()
                try:
                    sock = connect()
                    status = exchange(sock, POOL_REQUEST)
                except OSError:
                    sock, status = None, None
            with lock:
                stats["pooled_requests"] += 1
                stats["pooled_dropped"] += dropped
                stats["pooled_failed"] += status is None
        if sock:
            sock.close()

    threads = [threading.Thread(target=pooled, daemon=True) for _ in range(spec["clients"])]
    for t in threads:
        t.start()
    connected.wait(60)
    _say("ready", str(spec["clients"]))
    latencies, failures = [], 0
    end = time.monotonic() + spec["seconds"]
    while time.monotonic() < end and not _stdin_closed():
        t0 = time.perf_counter()
        try:
            with connect() as sock:
                status = exchange(sock, NEWCOMER_REQUEST)
        except OSError:
            status = None
        if status is None:
            failures += 1
        else:
            latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(max(0.0, spec["newcomer_every"] - (time.perf_counter() - t0)))
    stop.set()
    for t in threads:
        t.join(NEWCOMER_TIMEOUT_S * 2 + spec["think"] * 2)
    stats.update(_latency_figures(latencies), newcomers=len(latencies) + failures,
                 newcomer_failures=failures)
    return stats


def _latency_figures(ms):
    if not ms:
        return {"newcomer_p50_ms": None, "newcomer_p99_ms": None, "newcomer_max_ms": None}
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, max(0, -(-99 * len(ms) // 100) - 1))]  # nearest rank
    return {"newcomer_p50_ms": round(statistics.median(ms), 2), "newcomer_p99_ms": round(p99, 2),
            "newcomer_max_ms": round(ms[-1], 2)}


def download(spec):
    """Read ``GET /big`` at ``rate`` bytes/s until it is complete, closed, or time is up."""
    size, rate = spec["bytes"], spec["rate"]
    bound = size / rate * 1.5 + 60
    sock = socket.create_connection((HOST, spec["port"]), timeout=60)
    sock.sendall(f"GET /big?bytes={size}&piece={spec['piece']} HTTP/1.1\r\nHost: reader\r\n"
                 f"Connection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        piece = sock.recv(4096)
        if not piece:
            break
        head += piece
    head, _, got = head.partition(b"\r\n\r\n")
    status = STATUS.match(head)
    received, start, last_said = len(got), time.monotonic(), time.monotonic()
    _say("ready", "")
    outcome = "complete"
    while received < size:
        now = time.monotonic()
        if now - start > bound:
            outcome = f"gave up after {bound:.0f} s"
            break
        if now - last_said >= 30:
            _say("progress", str(received))
            last_said = now
        allowed = int(rate * (now - start)) - received
        if allowed <= 0:
            time.sleep(min(0.05, -allowed / rate + 0.001))
            continue
        try:
            piece = sock.recv(min(allowed, 65536))
        except OSError as exc:
            outcome = f"error: {exc}"
            break
        if not piece:
            outcome = "closed by the server"
            break
        received += len(piece)
    sock.close()
    return {"status": int(status.group(1)) if status else None, "bytes": received,
            "expected": size, "seconds": round(time.monotonic() - start, 1), "outcome": outcome}


CLIENTS = {"attack": attack, "pool": pool, "download": download}


def main(argv):
    """Entry point of a client process: run one client, print its result as one JSON line."""
    if len(argv) != 2 or argv[0] not in CLIENTS:
        print("run `python -m loadtests slowloris`; this module is the client processes it "
              "starts", file=sys.stderr)
        return 2
    raise_nofile()
    result = CLIENTS[argv[0]](json.loads(argv[1]))
    _say("result", json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
