"""Scale-out: three greenserve hosts behind one nginx, restarted one at a time under load.

Each host is a network namespace the test creates (its own loopback, its own ports, reached
over a veth pair, as a separate machine would be); where the kernel refuses namespaces the
hosts are distinct loopback addresses instead. nginx runs examples/deploy/nginx.conf with
its upstream line replaced by the three hosts. While client threads send requests through
nginx, each host in turn gets SIGTERM, drains, exits and is started again; not one request
may fail: nginx moves on to the next host on connection errors (proxy_next_upstream error),
greenserve's graceful stop does the rest.
"""

import http.client
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import trustme

import procs
import proxies
from procs import WAIT, wait_until
from proxies import SiteConnection

pytestmark = pytest.mark.skipif(not proxies.have(proxies.NGINX), reason="nginx is not installed")

HOSTS = 3
CLIENTS = 4
# The load runs for as long as the restarts take, but never longer than this (seconds).
LOAD_LIMIT = 120
PORT = 8000  # inside a namespace of its own, nothing else can hold it


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=WAIT)


class Namespaces:
    """Three network namespaces, each joined to this one by a veth pair in 198.18.0.0/15
    (RFC 2544's range for tests): the hosts are 198.18.X.(4i+2), nginx reaches them from
    198.18.X.(4i+1)."""

    def __init__(self):
        tag = f"{os.getpid() % 100000}{random.randint(0, 99)}"
        block = f"198.{random.choice((18, 19))}.{random.randint(0, 255)}"
        self.names = [f"gs{tag}n{i}" for i in range(HOSTS)]
        self.links = [f"gs{tag}v{i}" for i in range(HOSTS)]
        self.hosts = [f"{block}.{4 * i + 2}" for i in range(HOSTS)]
        self.gateways = [f"{block}.{4 * i + 1}" for i in range(HOSTS)]

    def create(self):
        for name, link, host, gateway in zip(self.names, self.links, self.hosts, self.gateways):
            ip("netns", "add", name)
            ip("link", "add", link, "type", "veth", "peer", "name", link + "p")
            ip("link", "set", link + "p", "netns", name)
            ip("addr", "add", f"{gateway}/30", "dev", link)
            ip("link", "set", link, "up")
            ip("-n", name, "addr", "add", f"{host}/30", "dev", link + "p")
            ip("-n", name, "link", "set", link + "p", "up")
            ip("-n", name, "link", "set", "lo", "up")

    def remove(self):
        for name, link in zip(self.names, self.links):
            ip("link", "del", link, check=False)  # takes its peer along
            ip("netns", "del", name, check=False)

    def command(self, index, argv):
        return ["ip", "netns", "exec", self.names[index], *argv]

    def greenserve_args(self, index):
        return ["-b", f"{self.hosts[index]}:{PORT}",
                "--forwarded-allow-ips", self.gateways[index]]


class LoopbackHosts:
    """The fallback: the hosts are distinct loopback addresses of this namespace. Each binds
    port 0 at first and the same port when restarted."""

    def __init__(self):
        self.hosts = [proxies.random_loopback() for _ in range(HOSTS)]
        self.ports = [0] * HOSTS

    def create(self):
        pass

    def remove(self):
        pass

    def command(self, index, argv):
        return argv

    def greenserve_args(self, index):
        return ["-b", f"{self.hosts[index]}:{self.ports[index]}"]


# How the hosts run, and the request with a body the load sends besides GETs:
# - with workers (the production shape), POSTs, which nginx never sends twice: the
#   workers' drain answers kept-alive connections with "Connection: close" before closing
#   the idle ones, so nginx is not caught sending a request on a connection being closed;
# - in one process, PUTs (idempotent, so nginx may retry them on another host): this drain
#   closes idle connections at once, and a request nginx sends on one at that moment fails
#   and must be retried (it happened in about one run of three).
SETUPS = {"namespaces-workers": ("namespaces", ["--workers", "2"], "POST"),
          "loopback-one-process": ("loopback", [], "PUT")}


@pytest.fixture(params=list(SETUPS))
def setup(request):
    return SETUPS[request.param]


@pytest.fixture
def network(setup):
    if setup[0] == "loopback":
        yield LoopbackHosts()
        return
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    spaces = Namespaces()
    try:
        spaces.create()
    except subprocess.CalledProcessError as exc:
        spaces.remove()
        pytest.skip(f"the kernel refused a network namespace: {exc.stderr.strip()}")
    try:
        yield spaces
    finally:
        spaces.remove()


class Load:
    """Client threads sending requests through nginx, each on its own kept-alive HTTPS
    connection (a new one after an error), until stopped; every outcome is counted."""

    def __init__(self, address, context, method):
        self.address, self.context, self.method = address, context, method
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes = Counter()     # "200", "502", "ConnectionResetError", ...
        self.failures = []            # (what, detail) of the first few failures
        self.seen = Counter()         # INSTANCE ("host.generation") -> responses
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                        for n in range(CLIENTS)]

    def start(self):
        for thread in self.threads:
            thread.start()

    def finish(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive()

    def _run(self, number):
        connection = None
        count = 0
        while not self.stop.is_set():
            count += 1
            # GETs, and a request with a body every third time.
            post = count % 3 == 0
            try:
                if connection is None:
                    connection = SiteConnection(self.address, self.context, timeout=WAIT)
                if post:
                    connection.request(self.method, f"/echo?client={number}",
                                       body=b"x" * 1000)
                else:
                    connection.request("GET", "/who")
                response = connection.getresponse()
                body = response.read()
                outcome = str(response.status)
                if response.status == 200 and not post:
                    with self.lock:
                        self.seen[body.decode().split()[0]] += 1
                if response.status != 200:
                    self._failed(outcome, self.method if post else "GET", body[:100])
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
                self._failed(outcome, self.method if post else "GET", str(exc))
                connection.close()
                connection = None
            with self.lock:
                self.outcomes[outcome] += 1
        if connection is not None:
            connection.close()

    def _failed(self, what, method, detail):
        with self.lock:
            if len(self.failures) < 10:
                self.failures.append((what, method, time.monotonic(), detail))

    def served_by(self, who):
        with self.lock:
            return self.seen[who]


def test_rolling_restart_loses_no_request(setup, network, tmp_path):
    folder = proxies.shared_directory()
    (folder / "static").mkdir(mode=0o755)
    ca = trustme.CA()
    try:
        with procs.Processes(cwd=tmp_path) as processes:
            run_rolling_restart(network, processes, folder, ca, *setup[1:])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def start_host(processes, network, index, generation, options):
    """Start host ``index``; its responses to /who name it "INDEX.GENERATION"."""
    argv = procs.greenserve_command("proxied:app", *network.greenserve_args(index),
                                    "--keep-alive", "75", "--graceful-timeout", "20", *options)
    server = processes.start(network.command(index, argv),
                             env=procs.environment(INSTANCE=f"{index}.{generation}"))
    host, port = server.address()
    if isinstance(network, LoopbackHosts):
        network.ports[index] = port
    return server, port


def run_rolling_restart(network, processes, folder, ca, options, method):
    servers, ports = zip(*(start_host(processes, network, i, 0, options)
                           for i in range(HOSTS)))
    servers = list(servers)
    upstream = "\n    ".join(f"server {host}:{port} max_fails=1 fail_timeout=2s;"
                             for host, port in zip(network.hosts, ports))
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=folder))
    prefix.chmod(0o755)
    cert = proxies.issue_certificate(ca, prefix)
    nginx, host, nginx_ports = proxies.start_nginx(
        processes, prefix,
        lambda host, ports: proxies.nginx_site(upstream, folder / "static", cert, host, ports))

    load = Load((host, nginx_ports[1]), proxies.client_context(ca), method)
    started = time.monotonic()
    load.start()
    try:
        for index, server in enumerate(servers):
            wait_until(lambda: load.served_by(f"{index}.0") >= 20,
                       what=f"host {index} to take its share before its restart")
            server.signal(signal.SIGTERM)
            assert server.exit_code(timeout=WAIT + 20) == 0
            servers[index], _ = start_host(processes, network, index, 1, options)
            # nginx tries the host again after fail_timeout; then it gets requests again.
            wait_until(lambda: load.served_by(f"{index}.1") >= 20,
                       timeout=WAIT + 10, what=f"restarted host {index} to get requests")
            assert time.monotonic() - started < LOAD_LIMIT
    finally:
        load.finish()
    elapsed = time.monotonic() - started

    total = sum(load.outcomes.values())
    failed = total - load.outcomes["200"]
    report = (f"{network.__class__.__name__} {options} GET+{method}: {total} requests in "
              f"{elapsed:.1f} s over "
              f"{HOSTS} restarts, {failed} failed; outcomes {dict(load.outcomes)}; "
              f"first failures {load.failures}; nginx: "
              f"{[line for line in nginx.text().splitlines() if '[error]' in line]}")
    print(report)
    assert failed == 0, report
    # Every host served before and after its restart: the load really went through all.
    assert len([who for who in load.seen if load.seen[who] >= 20]) == 2 * HOSTS, load.seen
    assert "[alert]" not in nginx.text() and "[emerg]" not in nginx.text()
