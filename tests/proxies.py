"""Real nginx and Apache httpd in front of greenserve, for the deployment tests.

The configs under test are the files in ``examples/deploy/`` themselves: ``render`` swaps the
few values a user changes (ports, paths, certificate files, the upstream address) by plain
string replacement, and fails if one of them is no longer in the file. The proxies run from
a temporary prefix (their own pid file, logs and temp folders) under ``tests/procs.py``'s
harness, so they die with the test.

Ports. nginx and Apache cannot bind port 0 and report it, and picking a "free" port first
races with everything else on the machine. So each proxy listens on a random address of
127.0.0.0/8 other than 127.0.0.1 (16 million of them, each with its own ports) and a random
port, and is started again elsewhere if the bind still fails. greenserve itself binds
127.0.0.1:0 (or a unix socket) and is read back from its log, as in every other test.

As root, the proxies' workers run as ``nobody`` (as www-data would in production), so the
files they serve and the sockets they connect to live in a directory others may reach.
"""

import http.client
import json
import os
import pwd
import grp
import random
import shutil
import socket
import ssl
import tempfile
import time
from pathlib import Path

import pytest

from procs import REPO, WAIT, wait_until

DEPLOY = REPO / "examples" / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
ROOT = os.geteuid() == 0
# The name the example configs serve; clients connect to the proxy's address under it.
SITE = "example.com"


def have(program):
    return os.access(program, os.X_OK)


def shared_directory():
    """A fresh directory the proxies' unprivileged workers can reach (not list)."""
    path = Path(tempfile.mkdtemp(prefix="gs-deploy-"))
    path.chmod(0o711)
    return path


def random_loopback():
    """A random address of 127.0.0.0/8, never 127.0.0.1 (where greenserve and clients are)."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def render(template, replacements, drop=()):
    """The text of ``template`` with each key of ``replacements`` replaced (each must occur:
    a test must notice when the example changes), and the lines containing any of ``drop``
    removed."""
    text = Path(template).read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in {template}"
        text = text.replace(old, new)
    lines = [line for line in text.splitlines(keepends=True)
             if not any(marker in line for marker in drop)]
    return "".join(lines)


def start_on_random_ports(processes, build, count, ready, attempts=20):
    """Start a proxy listening on ``count`` random ports of a random loopback address.

    ``build(host, ports)`` writes the config and returns the command; ``ready`` is the
    pattern of the log line the proxy writes once it has bound every port (a socket that
    answers could be another program's). Returns (process, host, ports); another address is
    tried when a port turns out to be taken.
    """
    for _ in range(attempts):
        host = random_loopback()
        # Below Linux's ephemeral range (32768-60999), where clients' own ports come from.
        ports = random.sample(range(20000, 31000), count)
        proc = processes.start(build(host, ports))
        wait_until(lambda: proc.matches(ready) or not proc.running(),
                   what=f"{proc.argv[0]} to listen on {host}")
        if proc.running():
            return proc, host, ports
        proc.exit_code()
        output = proc.output()
        if "in use" not in output:  # anything but a taken port is a real failure
            pytest.fail(f"{' '.join(proc.argv)} did not start:\n{output}")
    pytest.fail(f"no free port found in {attempts} attempts")


def worker_user():
    """(user, group) for the proxy's workers when the test runs as root, else None."""
    if not ROOT:
        return None
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_name, grp.getgrgid(nobody.pw_gid).gr_name


# -- nginx ----------------------------------------------------------------------------------------

NGINX_MAIN = """\
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{extra}
    include {site};
}}
"""


def nginx_site(upstream, static, cert, host, ports):
    """examples/deploy/nginx.conf for these ports, upstream, static folder and certificate.

    ``upstream`` replaces the example's "server 127.0.0.1:8000;" line (one or more server
    lines). The IPv6 listen lines are left out: the test listens on one loopback address.
    """
    http_port, https_port = ports
    return render(DEPLOY / "nginx.conf", {
        "listen 80 default_server;": f"listen {host}:{http_port} default_server;",
        "listen 80;": f"listen {host}:{http_port};",
        "listen 443 ssl default_server;": f"listen {host}:{https_port} ssl default_server;",
        "listen 443 ssl http2;": f"listen {host}:{https_port} ssl http2;",
        "server 127.0.0.1:8000;": upstream,
        "/srv/app/static/": f"{static}/",
        "/etc/letsencrypt/live/example.com/fullchain.pem": str(cert["chain"]),
        "/etc/letsencrypt/live/example.com/privkey.pem": str(cert["key"]),
    }, drop=["listen [::]:"])


def start_nginx(processes, prefix, site_for, extra=""):
    """nginx serving the site ``site_for(host, ports)`` renders; (process, host, ports)."""
    prefix = Path(prefix)
    user = worker_user()

    def build(host, ports):
        site = prefix / "site.conf"
        site.write_text(site_for(host, ports))
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_MAIN.format(
            user=f"user {user[0]} {user[1]};" if user else "", prefix=prefix, site=site,
            extra=extra))
        return [NGINX, "-e", "stderr", "-p", str(prefix), "-c", str(conf),
                "-g", "daemon off;"]

    # The master starts its workers only once every listening socket is bound.
    return start_on_random_ports(processes, build, 2, r"\[notice\].* start worker processes")


# -- Apache httpd ---------------------------------------------------------------------------------

APACHE_MAIN = """\
ServerRoot {prefix}
{listen}
PidFile {prefix}/httpd.pid
DefaultRuntimeDir {prefix}
Mutex file:{prefix} default
ErrorLog /dev/stderr
LogLevel warn
ServerName localhost
{user}
{modules}
TypesConfig /etc/mime.types
LogFormat "%h %l %u %t \\"%r\\" %>s %b" common
CustomLog {prefix}/access.log common
# A few threads are plenty for the tests.
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
Include {site}
"""

APACHE_MODULE_NAMES = ["mpm_event", "authz_core", "alias", "mime", "headers", "proxy",
                       "proxy_http", "ssl", "socache_shmcb"]


def apache_site(backend, static, cert, host, ports):
    """examples/deploy/apache.conf for these ports, backend URL, static folder, certificate."""
    http_port, https_port = ports
    return render(DEPLOY / "apache.conf", {
        "<VirtualHost *:80>": f"<VirtualHost {host}:{http_port}>",
        "<VirtualHost *:443>": f"<VirtualHost {host}:{https_port}>",
        "https://example.com/": f"https://{SITE}:{https_port}/",
        "http://127.0.0.1:8000/": backend,
        "/srv/app/static/": f"{static}/",
        "/etc/letsencrypt/live/example.com/fullchain.pem": str(cert["chain"]),
        "/etc/letsencrypt/live/example.com/privkey.pem": str(cert["key"]),
    })


def start_apache(processes, prefix, site_for):
    """Apache httpd serving the site ``site_for(host, ports)`` renders."""
    prefix = Path(prefix)
    user = worker_user()
    modules = "\n".join(f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so"
                        for name in APACHE_MODULE_NAMES)

    def build(host, ports):
        site = prefix / "site.conf"
        site.write_text(site_for(host, ports))
        conf = prefix / "httpd.conf"
        conf.write_text(APACHE_MAIN.format(
            prefix=prefix, site=site, modules=modules,
            listen="\n".join(f"Listen {host}:{port}" for port in ports),
            user=f"User {user[0]}\nGroup {user[1]}" if user else ""))
        return [APACHE, "-f", str(conf), "-DFOREGROUND"]

    return start_on_random_ports(processes, build, 2, r"AH00489: .* resuming normal operations")


# -- certificates and clients --------------------------------------------------------------------

def issue_certificate(ca, folder):
    """A certificate for the example site from ``ca``: {"chain": path, "key": path}."""
    issued = ca.issue_cert(SITE)
    paths = {"chain": Path(folder) / "site.pem", "key": Path(folder) / "site.key"}
    issued.private_key_pem.write_to_path(paths["key"])
    with open(paths["chain"], "wb") as stream:
        for blob in issued.cert_chain_pems:
            stream.write(blob.bytes())
    return paths


def client_context(ca):
    """A TLS client context that verifies certificates against ``ca`` only."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class SiteConnection(http.client.HTTPSConnection):
    """HTTPS to the site's name (SNI, Host, certificate check) at a proxy's address,
    optionally from a chosen client address (``source``)."""

    def __init__(self, address, context, source=None, timeout=WAIT):
        super().__init__(SITE, address[1], context=context, timeout=timeout,
                         source_address=(source, 0) if source else None)
        self.proxy_address = address

    def connect(self):
        raw = socket.create_connection(self.proxy_address, self.timeout, self.source_address)
        self.sock = self._context.wrap_socket(raw, server_hostname=SITE)


def fetch(connection, method, path, body=None, headers=None):
    """One request on ``connection``: (status, headers dict lower-cased, body bytes)."""
    connection.request(method, path, body=body, headers=headers or {},
                       encode_chunked=bool(headers and headers.get("Transfer-Encoding")))
    response = connection.getresponse()
    data = response.read()
    return (response.status, {name.lower(): value for name, value in response.getheaders()},
            data)


class Site:
    """A proxy (``proxy``: its process) serving HTTPS on ``host`` in front of ``greenserve``;
    requests go through the proxy with a client that verifies its certificate."""

    def __init__(self, proxy, host, ports, greenserve, context):
        self.proxy, self.greenserve, self.context = proxy, greenserve, context
        self.host, (self.http_port, self.https_port) = host, ports
        self.address = (host, self.https_port)

    def connection(self, source=None):
        return SiteConnection(self.address, self.context, source)

    def get(self, method, path, body=None, headers=None, source=None):
        connection = self.connection(source)
        try:
            return fetch(connection, method, path, body, headers)
        finally:
            connection.close()

    def echo(self, method="GET", path="/echo", body=None, headers=None, source=None):
        """The echo app's JSON view of the request as greenserve saw it."""
        status, _, data = self.get(method, path, body, headers, source)
        assert status == 200, data
        return json.loads(data)


def raw_tls(address, context, data, source=None):
    """Send raw request bytes over TLS (for request lines http.client will not write); the
    connected socket, to read the answer from."""
    raw = socket.create_connection(address, WAIT, (source, 0) if source else None)
    sock = context.wrap_socket(raw, server_hostname=SITE)
    sock.sendall(data)
    return sock


def read_until(stream, marker, timeout=WAIT):
    """Read from a file-like socket stream until ``marker`` has arrived; all read so far."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{marker!r} not received; got {data!r}")
        line = stream.readline()
        if not line:
            raise ConnectionError(f"closed before {marker!r}; got {data!r}")
        data += line
    return data
