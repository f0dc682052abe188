"""The long-polling, SSE and file examples, served by the real CLI in a child process.

Each test starts ``python -m greenserve examples.NAME:app -b 127.0.0.1:0``, reads the bound
port from its "Listening at" line, drives it with ordinary clients (http.client, raw sockets,
curl) and stops it with SIGTERM, which must end it with status 0.
"""

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest

import procs
from procs import WAIT, wait_until

HOST = "127.0.0.1"


class Example:
    """A running example server: its process, port and a few client helpers."""

    def __init__(self, process):
        self.process = process
        self.port = process.address()[1]

    def request(self, method, path, body=None, headers=None, timeout=WAIT):
        """(status, headers, body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, method, path, **kwargs):
        status, _, body = self.request(method, path, **kwargs)
        return status, json.loads(body)

    def rss_kib(self):
        """VmRSS of the worker process and its children (the whole tree serving requests)."""
        total = 0
        for pid in [self.process.pid] + _descendants(self.process.pid):
            try:
                with open(f"/proc/{pid}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total


def _descendants(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


@contextmanager
def run_example(app, env=None, args=()):
    """Serve ``app`` with the greenserve CLI for the duration of the block; then SIGTERM
    must stop it with status 0."""
    with procs.Processes() as processes:
        process = processes.greenserve(app, "-b", f"{HOST}:0", "--graceful-timeout", "3",
                                       *args, env=procs.environment(**(env or {})))
        yield Example(process)
        process.signal(signal.SIGTERM)
        assert process.exit_code() == 0, process.text()


# -- chat -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat():
    with run_example("examples.chat:app") as example:
        yield example


def waiters(chat):
    return chat.json("GET", "/stats")[1]["waiters"]


def test_chat_page_is_served(chat):
    status, headers, body = chat.request("GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/poll?since=" in body and b"/send" in body


def test_chat_message_reaches_every_waiting_poller(chat):
    last = chat.json("GET", "/stats")[1]["last_id"]
    results = {}

    def poll(index):
        results[index] = chat.json("GET", f"/poll?since={last}")

    pollers = [threading.Thread(target=poll, args=(i,), daemon=True) for i in range(8)]
    for thread in pollers:
        thread.start()
    wait_until(lambda: waiters(chat) == 8, what="8 pollers to wait")
    assert not results, "a poller returned before any message was sent"

    status, message = chat.json("POST", "/send", body=json.dumps({"name": "ann", "text": "hi all"}),
                                headers={"Content-Type": "application/json"})
    assert status == 201 and message["text"] == "hi all"
    for thread in pollers:
        thread.join(WAIT)
    assert sorted(results) == list(range(8))
    for status, data in results.values():
        assert status == 200
        assert [(m["name"], m["text"]) for m in data["messages"]] == [("ann", "hi all")]
        assert data["last_id"] == message["id"]
    assert waiters(chat) == 0


def test_chat_poll_returns_history_at_once(chat):
    status, sent = chat.json("POST", "/send", body="name=bob&text=form+post",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 201
    started = time.monotonic()
    status, data = chat.json("GET", f"/poll?since={sent['id'] - 1}")
    # A poll that waited would take the example's 25 s poll timeout.
    assert time.monotonic() - started < 10
    assert status == 200 and data["messages"] == [sent]


def test_chat_reset_poller_leaves_the_waiters_before_its_poll_ends(chat):
    last = chat.json("GET", "/stats")[1]["last_id"]
    sock = socket.create_connection((HOST, chat.port), timeout=WAIT)
    try:
        sock.sendall(f"GET /poll?since={last} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        wait_until(lambda: waiters(chat) == 1, what="the poller to wait")
    finally:
        # A reset is certain to mean "gone"; a plain close (FIN) may be a half-close by a
        # client still reading (RFC 9112 §9.6), so that one waits for the poll's end.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    # Noticed as the client leaves (milliseconds), not when the 25 s poll would end.
    wait_until(lambda: waiters(chat) == 0, timeout=10,
               what="the closed poller to leave the waiters")


@pytest.mark.parametrize("body, content_type, status", [
    (b"{not json", "application/json", 400),
    (b"[1, 2]", "application/json", 400),
    (b'{"name": "x"}', "application/json", 400),
    (b'{"text": 5}', "application/json", 400),
    (b'{"text": "   "}', "application/json", 400),
    (json.dumps({"text": "x" * 501}).encode(), "application/json", 400),
    (b"text=\xff\xfe", "application/x-www-form-urlencoded", 400),
    (b"text=hello", "text/plain", 415),
    (b"text=" + b"a" * 5000, "application/x-www-form-urlencoded", 413),
])
def test_chat_rejects_bad_messages(chat, body, content_type, status):
    before = chat.json("GET", "/stats")[1]["last_id"]
    got, data = chat.json("POST", "/send", body=body, headers={"Content-Type": content_type})
    assert got == status and data["error"]
    assert chat.json("GET", "/stats")[1]["last_id"] == before


def test_chat_rejects_oversized_chunked_message(chat):
    pieces = iter([b"text=", b"a" * 3000, b"b" * 3000])
    got, data = chat.json("POST", "/send", body=pieces,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert got == 413


@pytest.mark.parametrize("query", ["since=-1", "since=abc", "since=1e3", "since=%EF%BC%91"])
def test_chat_rejects_bad_since(chat, query):
    assert chat.json("GET", f"/poll?{query}")[0] == 400


def test_chat_history_is_capped(chat):
    for index in range(110):
        assert chat.json("POST", "/send", body=f"text=m{index}",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})[0] == 201
    status, data = chat.json("GET", "/poll?since=0")
    assert status == 200 and len(data["messages"]) == 100
    assert data["messages"][-1]["text"] == "m109"


# -- server-sent events ------------------------------------------------------------------------

def test_sse_events_arrive_one_by_one_and_stop_when_the_client_leaves():
    with run_example("examples.sse:app") as sse:
        status, headers, body = sse.request("GET", "/")
        assert status == 200 and b"EventSource" in body

        interval = 0.5
        sock = socket.create_connection((HOST, sse.port), timeout=WAIT)
        reader = sock.makefile("rb")
        try:
            sock.sendall(b"GET /events?interval=%g HTTP/1.1\r\nHost: x\r\n\r\n" % interval)
            head = []
            while (line := reader.readline()) not in (b"\r\n", b""):
                head.append(line.decode("latin-1").lower())
            assert head[0].startswith("http/1.1 200")
            assert "content-type: text/event-stream; charset=utf-8\r\n" in head
            assert "cache-control: no-cache\r\n" in head
            assert "transfer-encoding: chunked\r\n" in head
            events = []  # (arrival time, data) for each tick, read as the chunks arrive
            while len(events) < 4:
                size = int(reader.readline(), 16)
                chunk = reader.read(size)
                assert reader.read(2) == b"\r\n"
                if b"data: " in chunk:
                    data = json.loads(chunk.split(b"data: ", 1)[1])
                    events.append((time.time(), data))  # the app stamps with time.time()
            assert sse.json("GET", "/stats")[1]["streams"] == 1
        finally:
            # The makefile() reader holds the descriptor open too: close both.
            reader.close()
            sock.close()
        ticks = [data["tick"] for _, data in events]
        assert ticks == [1, 2, 3, 4]
        stamps = [data["time"] for _, data in events]
        assert all(b - a >= interval - 0.05 for a, b in zip(stamps, stamps[1:])), stamps
        # Each event reached the client before the app made the next one: sent when made,
        # not buffered. (Delivery takes milliseconds; the interval is 0.5 s.)
        assert all(arrived < made + interval for arrived, made in
                   zip([t for t, _ in events], stamps)), (events, stamps)
        wait_until(lambda: sse.json("GET", "/stats")[1]["streams"] == 0,
                   what="the stream to end after the client left")

        # Last-Event-ID resumes the count; bad intervals are refused.
        conn = http.client.HTTPConnection(HOST, sse.port, timeout=WAIT)
        conn.request("GET", "/events?interval=0.05", headers={"Last-Event-ID": "41"})
        response = conn.getresponse()
        assert response.status == 200
        text = b""
        while b"id: 42" not in text:
            piece = response.read1(4096)
            assert piece, f"the stream ended without event 42: {text!r}"
            text += piece
        conn.close()
        assert sse.request("GET", "/events?interval=0")[0] == 400
        assert sse.request("GET", "/events?interval=nan")[0] == 400


# -- files ------------------------------------------------------------------------------------

def _pattern_blocks(total, block=1 << 20):
    """``total`` bytes of varied data in 1 MiB blocks (each block differs, so a mix-up shows)."""
    seed = os.urandom(block)
    for index in range(total // block):
        yield index.to_bytes(8, "big") + seed[8:]


def test_upload_streams_to_disk_with_flat_memory_and_download_matches(tmp_path):
    store = tmp_path / "store"
    total = 200 << 20
    with run_example("examples.files:app", env={"EXAMPLE_FILES_DIR": str(store)}) as files:
        # Warm up: the first upload imports and allocates what every upload needs.
        status, result = files.json("POST", "/upload/warm.bin", body=b"w" * 300000)
        assert status == 201 and result["size"] == 300000
        baseline = files.rss_kib()
        peak = [baseline]
        digest = hashlib.sha256()

        def body():
            for index, block in enumerate(_pattern_blocks(total)):
                digest.update(block)
                if index % 8 == 0:
                    peak.append(files.rss_kib())
                yield block

        conn = http.client.HTTPConnection(HOST, files.port, timeout=60)
        # An iterable body without Content-Length: http.client sends it chunked.
        conn.request("POST", "/upload/big.bin", body=body())
        response = conn.getresponse()
        result = json.loads(response.read())
        conn.close()
        peak.append(files.rss_kib())
        assert response.status == 201, result
        assert result == {"name": "big.bin", "size": total, "sha256": digest.hexdigest()}
        growth_mib = (max(peak) - baseline) / 1024
        assert growth_mib < 30, f"server RSS grew {growth_mib:.1f} MiB during a 200 MiB upload"
        assert (store / "big.bin").stat().st_size == total
        assert [p.name for p in store.iterdir() if p.name.startswith(".")] == []

        # Download with curl: byte for byte the uploaded file.
        out = tmp_path / "out.bin"
        subprocess.run(["curl", "-sSf", "--max-time", "30", "-o", str(out),
                        f"http://{HOST}:{files.port}/download/big.bin"], check=True, timeout=40)
        with open(out, "rb") as f:
            assert hashlib.file_digest(f, "sha256").hexdigest() == result["sha256"]


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_files_content_length_upload_limits_and_safe_paths(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"outside the store")
    (store / "link.txt").symlink_to(tmp_path / "secret.txt")
    env = {"EXAMPLE_FILES_DIR": str(store), "EXAMPLE_FILES_MAX_UPLOAD": "100000"}
    with run_example("examples.files:app", env=env) as files:
        data = os.urandom(70000)
        status, result = files.json("POST", "/upload/small.dat", body=data)  # Content-Length
        assert status == 201
        assert result == {"name": "small.dat", "size": 70000,
                          "sha256": hashlib.sha256(data).hexdigest()}
        status, headers, body = files.request("GET", "/download/small.dat")
        assert status == 200 and body == data and headers["Content-Length"] == "70000"
        assert b"small.dat" in files.request("GET", "/")[2]

        # Over the limit: refused by Content-Length before reading, or mid-way when chunked.
        assert files.request("POST", "/upload/big.dat", body=b"x" * 100001)[0] == 413
        chunked = iter([b"y" * 60000, b"y" * 60000])
        assert files.request("POST", "/upload/big.dat", body=chunked)[0] == 413
        assert sorted(p.name for p in store.iterdir()) == ["link.txt", "small.dat"]

        # Traversal, hidden names, symlinks out of the store and missing files are all 404.
        for path in ["/download/..%2Fsecret.txt", "/download/../secret.txt",
                     "/download/.partial-x", "/download/link.txt", "/download/nothing",
                     "/download/", "/download/a/b"]:
            code = subprocess.run(
                ["curl", "-s", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}",
                 "--max-time", str(WAIT), f"http://{HOST}:{files.port}{path}"],
                capture_output=True, text=True, timeout=WAIT + 5).stdout
            assert code == "404", (path, code)
        assert files.request("POST", "/upload/..%2Fx", body=b"x")[0] == 400
        assert files.request("POST", "/upload/.hidden", body=b"x")[0] == 400
