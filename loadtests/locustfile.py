"""Locust user classes for the greenserve load scenarios (served by loadtests/apps.py).

The harness passes the class names of one scenario (see scenarios.py) on locust's command line.
FastHttpUser (geventhttpclient) keeps the load side cheap so that one locust core drives more
requests; UploadUser uses HttpUser because requests can send a generator body chunked.
Think time: LOADTESTS_THINK_MS (set by --think-ms) makes users wait 0..2x that between tasks.
"""

import os
import random
import zlib

import locust.stats
from locust import FastHttpUser, HttpUser, between, constant, task

# The harness's progress line tails the stats history CSV: flush it every second, not every 5 s
# (locust documents setting these from the locustfile).
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

THINK_S = float(os.environ.get("LOADTESTS_THINK_MS", "0") or 0) / 1000.0


def _wait():
    return between(0, 2 * THINK_S) if THINK_S > 0 else constant(0)


class HelloUser(FastHttpUser):
    """The smallest request there is: what the server costs per request."""

    weight = 4
    wait_time = _wait()

    @task
    def hello(self):
        self.client.get("/", name="GET /")


class ApiUser(FastHttpUser):
    """A JSON API: small reads by id, a list, and writes that the app parses."""

    weight = 3
    wait_time = _wait()

    @task(4)
    def list_items(self):
        with self.client.get(
            "/api/items?limit=20", name="GET /api/items", catch_response=True
        ) as r:
            if r.status_code == 200 and "items" not in r.json():
                r.failure("list without items")

    @task(4)
    def get_item(self):
        self.client.get(f"/api/items/{random.randint(1, 100)}", name="GET /api/items/[id]")

    @task(2)
    def create_item(self):
        body = {
            "name": f"load-{random.random():.6f}",
            "price": random.randint(1, 999),
            "tags": ["load"],
        }
        with self.client.post(
            "/api/items", json=body, name="POST /api/items", catch_response=True
        ) as r:
            if r.status_code != 201:
                r.failure(f"status {r.status_code}, wanted 201")


class StreamUser(FastHttpUser):
    """A chunked download, read to the end and checked for length."""

    weight = 1
    wait_time = _wait()

    @task
    def stream(self):
        with self.client.get("/stream", name="GET /stream", catch_response=True) as r:
            if r.status_code == 200 and len(r.content or b"") != 16 * 4096:
                r.failure(f"stream body was {len(r.content or b'')} bytes, wanted 65536")


UPLOADS = {size: os.urandom(size) for size in (1024, 65536, 1 << 20)}


class UploadUser(HttpUser):
    """Request bodies of a few sizes, one of them chunked; the app answers size and CRC-32."""

    weight = 1
    wait_time = _wait()

    def _post(self, name, data, size, crc):
        with self.client.post("/upload", data=data, name=name, catch_response=True) as r:
            if r.status_code == 200 and r.json() != {"bytes": size, "crc32": crc}:
                r.failure(f"server saw {r.text[:80]}, sent {size} bytes crc {crc}")

    @task(4)
    def small(self):
        body = UPLOADS[1024]
        self._post("POST /upload [1k]", body, len(body), zlib.crc32(body))

    @task(2)
    def medium(self):
        body = UPLOADS[65536]
        self._post("POST /upload [64k]", body, len(body), zlib.crc32(body))

    @task(1)
    def large(self):
        body = UPLOADS[1 << 20]
        self._post("POST /upload [1m]", body, len(body), zlib.crc32(body))

    @task(2)
    def chunked(self):
        body = UPLOADS[1 << 20][: 256 * 1024]
        pieces = (body[i : i + 16384] for i in range(0, len(body), 16384))
        # A generator body makes requests send Transfer-Encoding: chunked.
        self._post("POST /upload [256k chunked]", pieces, len(body), zlib.crc32(body))


class LongPollWaiter(FastHttpUser):
    """A chat reader: always has one poll parked in the server, re-polls after each answer."""

    weight = 3
    wait_time = constant(0)
    network_timeout = 30.0

    def on_start(self):
        self.last = 0
        r = self.client.get("/poll?since=0&timeout=0", name="GET /poll (catch up)")
        self._advance(r)

    def _advance(self, r):
        """Remember the newest message id (``last_id``, as loadtests.apps and examples/chat.py
        answer, or the ids of the messages themselves)."""
        if r.status_code != 200:
            return
        try:
            data = r.json()
            ids = [m["id"] for m in data.get("messages", []) if isinstance(m, dict) and "id" in m]
            self.last = max([self.last, data.get("last_id") or 0] + ids)
        except (ValueError, TypeError, AttributeError):
            pass

    @task
    def poll(self):
        self._advance(self.client.get(f"/poll?since={self.last}&timeout=5", name="GET /poll"))


class LongPollSender(FastHttpUser):
    """A chat writer: each message wakes every parked poll."""

    weight = 1
    wait_time = between(0.1, 0.5)

    @task
    def send(self):
        # JSON {"name", "text"}: what examples/chat.py expects; loadtests.apps takes any body.
        message = {"name": "locust", "text": f"hello {random.random():.6f}"}
        self.client.post("/send", json=message, name="POST /send")
