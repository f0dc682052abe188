"""greenserve behind the real nginx, configured by examples/deploy/nginx.conf itself.

nginx terminates TLS with a certificate from trustme and serves /static/ from disk; clients
verify the certificate and connect from their own loopback address, so the address the app
sees can be told from nginx's. See tests/proxies.py for how ports and files are chosen.
"""

import hashlib
import http.client
import json
import re
import shutil
import socket
import ssl
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import trustme

import procs
import proxies
from conftest import read_response
from proxies import SITE, fetch, random_loopback, raw_tls, read_until

pytestmark = pytest.mark.skipif(not proxies.have(proxies.NGINX), reason="nginx is not installed")

STATIC_FILES = {"app.css": b"body { color: #123456 }\n", "js/app.js": b"console.log(1)\n"}
SECRET = b"a file next to the static folder, never to be served\n"


class Stack(proxies.Site):
    """The nginx site, and the folder its configuration and files live in."""

    def __init__(self, nginx, host, ports, greenserve, context, folder):
        super().__init__(nginx, host, ports, greenserve, context)
        self.nginx, self.folder = nginx, folder


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def folder():
    """The files the proxy's workers read: static files, certificates, nginx's prefix."""
    path = proxies.shared_directory()
    static = path / "static"
    for name, content in STATIC_FILES.items():
        (static / name).parent.mkdir(parents=True, exist_ok=True)
        (static / name).write_bytes(content)
    (path / "static_private").mkdir()
    (path / "static_private" / "secret.txt").write_bytes(SECRET)
    for entry in [static, *static.rglob("*"), path / "static_private",
                  path / "static_private" / "secret.txt"]:
        entry.chmod(0o755 if entry.is_dir() else 0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_stack(processes, folder, ca, upstream, server):
    """nginx from the example in front of the running greenserve ``server``; the example's
    upstream line becomes ``upstream``."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=folder))
    prefix.chmod(0o755)
    cert = proxies.issue_certificate(ca, prefix)
    nginx, host, ports = proxies.start_nginx(
        processes, prefix,
        lambda host, ports: proxies.nginx_site(upstream, folder / "static", cert, host, ports))
    return Stack(nginx, host, ports, server, proxies.client_context(ca), folder)


@pytest.fixture(scope="module")
def stack(folder, ca):
    with procs.Processes() as processes:
        server = processes.greenserve("proxied:app", "-b", "127.0.0.1:0", "--keep-alive", "75")
        yield start_stack(processes, folder, ca, f"server 127.0.0.1:{server.address()[1]};",
                          server)


# -- static files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(STATIC_FILES))
def test_static_files_come_from_nginx(stack, name):
    status, headers, body = stack.get("GET", f"/static/{name}")
    assert (status, body) == (200, STATIC_FILES[name])
    assert headers["server"].startswith("nginx")
    assert headers["content-type"] in ("text/css", "application/javascript")


@pytest.mark.parametrize("path", ["/static/", "/static/js/", "/static/missing.css"])
def test_static_folder_is_not_listed_and_never_reaches_the_app(stack, path):
    status, headers, body = stack.get("GET", path)
    assert status in (403, 404) and b"app.css" not in body and b"app.js" not in body
    assert b"the app answered" not in body


@pytest.mark.parametrize("path", ["/static_private/secret.txt", "/static../static_private/secret.txt",
                                  "/static/../static_private/secret.txt",
                                  "/static/%2e%2e/static_private/secret.txt"])
def test_files_next_to_the_static_folder_stay_private(stack, path):
    status, _, body = stack.get("GET", path)
    assert SECRET not in body, (status, body)


# -- what passes through --------------------------------------------------------------------------

PATHS = [
    "/plain",
    "/a%20b/caf%C3%A9/%E2%82%AC",       # percent-encoded spaces and UTF-8 (é, €)
    "/slash%2Finside/semi;colon=1",     # an encoded "/" stays inside one segment
    "/%7Euser/%25percent",
]
QUERIES = ["", "q=1", "x=%26&u=%C3%A9&empty=&plus=a+b&flag"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", PATHS)
def test_method_path_and_query_pass_through(stack, method, path):
    for query in QUERIES:
        target = path + ("?" + query if query else "")
        seen = stack.echo(method, target)
        assert seen["REQUEST_METHOD"] == method
        assert seen["RAW_URI"] == target  # the request line, byte for byte
        assert seen["PATH_INFO"] == urllib.parse.unquote_to_bytes(path).decode("latin-1")
        assert seen["QUERY_STRING"] == query
        assert seen["SCRIPT_NAME"] == ""


def test_head_passes_through(stack):
    status, headers, body = stack.get("HEAD", "/echo")
    assert status == 200 and body == b"" and headers["content-type"] == "application/json"


def test_raw_non_ascii_path_gets_greenserves_400(stack):
    # nginx passes raw UTF-8 bytes on; greenserve takes request targets as RFC 9112 §3.2
    # writes them (ASCII), as it does without nginx. Browsers send them percent-encoded.
    sock = raw_tls(stack.address, stack.context,
                   f"GET /caf\u00e9 HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n\r\n"
                   .encode("utf-8"))
    with sock:
        status, headers, body, _ = read_response(sock, timeout=procs.WAIT)
    assert status == 400 and headers["server"].startswith("nginx")
    assert b"invalid" in body or b"Bad Request" in body


def test_headers_pass_through(stack):
    cookie = "a=1; b=" + "x" * 3000
    seen = stack.echo(headers={"X-Custom": "value with  spaces, commas",
                               "Accept-Language": "de-CH, en;q=0.5",
                               "Cookie": cookie, "User-Agent": "deploy-test/1.0",
                               "X-Empty": ""})
    headers = seen["headers"]
    assert headers["X_CUSTOM"] == "value with  spaces, commas"
    assert headers["ACCEPT_LANGUAGE"] == "de-CH, en;q=0.5"
    assert headers["COOKIE"] == cookie
    assert headers["USER_AGENT"] == "deploy-test/1.0"
    assert "CONNECTION" not in headers  # nginx's own hop-by-hop header is cleared


def test_repeated_headers_arrive_in_order(stack):
    sock = raw_tls(stack.address, stack.context,
                   f"GET /echo HTTP/1.1\r\nHost: {SITE}\r\nX-Multi: one\r\nX-Multi: two\r\n"
                   f"Connection: close\r\n\r\n".encode())
    with sock:
        status, _, body, _ = read_response(sock, timeout=procs.WAIT)
    assert status == 200 and json.loads(body)["headers"]["X_MULTI"] == "one, two"


def test_header_names_with_underscores_are_dropped_by_nginx(stack):
    # nginx's underscores_in_headers is off; greenserve would drop them too (they would
    # collide with the dashed name in the environ).
    headers = stack.echo(headers={"X_Forwarded_Proto": "http", "X_Custom": "1"})["headers"]
    assert "X_CUSTOM" not in headers and "X_FORWARDED_PROTO" in headers  # nginx's own


def pattern(size):
    block = hashlib.sha256(b"deploy").digest() * 2048  # 64 KiB, not all the same byte
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("size", [0, 1, 65537, 3 << 20])
def test_request_bodies_pass_through(stack, size):
    body = pattern(size)
    seen = stack.echo("POST", "/upload", body=body,
                      headers={"Content-Type": "application/octet-stream"})
    assert seen["body"] == {"size": size, "sha256": hashlib.sha256(body).hexdigest()}
    assert seen["CONTENT_LENGTH"] == str(size)
    assert seen["CONTENT_TYPE"] == "application/octet-stream"


def test_chunked_upload_passes_through(stack):
    pieces = [pattern(n) for n in (1, 100, 70000, 5, 1 << 20)]
    seen = stack.echo("PUT", "/upload", body=iter(pieces),
                      headers={"Transfer-Encoding": "chunked"})
    whole = b"".join(pieces)
    assert seen["body"] == {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


def test_body_over_the_example_limit_is_refused_by_nginx(stack):
    status, headers, _ = stack.get("POST", "/upload", body=b"x" * (10 * 2**20 + 1))
    assert status == 413 and headers["server"].startswith("nginx")


# -- who the client is ----------------------------------------------------------------------------

def test_remote_addr_is_the_clients(stack):
    client = random_loopback()
    seen = stack.echo(source=client)
    assert seen["REMOTE_ADDR"] == client and seen["REMOTE_PORT"] == ""
    assert seen["greenserve.peer_addr"] == "127.0.0.1"  # nginx, kept for the record
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["headers"]["HOST"] == f"{SITE}:{stack.https_port}"
    assert (seen["SERVER_NAME"], seen["SERVER_PORT"]) == (SITE, str(stack.https_port))


def test_a_client_cannot_spoof_what_nginx_vouches_for(stack):
    client = random_loopback()
    seen = stack.echo(source=client, headers={
        "X-Forwarded-For": "203.0.113.9, 127.0.0.1", "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "1",
        "X-Forwarded-Prefix": "/evil", "X-Forwarded-Ssl": "off",
        "Forwarded": "for=198.51.100.1;proto=http;host=evil.example"})
    assert seen["REMOTE_ADDR"] == client  # the right-most address nginx did not vouch for
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["headers"]["HOST"] == f"{SITE}:{stack.https_port}"
    assert seen["SERVER_PORT"] == str(stack.https_port)
    assert seen["SCRIPT_NAME"] == ""
    for cleared in ("X_FORWARDED_HOST", "X_FORWARDED_PORT", "X_FORWARDED_PREFIX",
                    "X_FORWARDED_SSL", "FORWARDED"):
        assert cleared not in seen["headers"]


# -- connections ----------------------------------------------------------------------------------

def test_streaming_response_arrives_unbuffered(stack, tmp_path):
    release = tmp_path / "release"
    request = (f"GET /stream?{urllib.parse.quote(str(release))} HTTP/1.1\r\nHost: {SITE}\r\n"
               f"Connection: close\r\n\r\n").encode()
    with raw_tls(stack.address, stack.context, request) as sock:
        stream = sock.makefile("rb")
        # The first piece arrives while the app is still waiting to send the second.
        head = read_until(stream, b"first\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        release.touch()
        assert b"second\n" in read_until(stream, b"second\n")


def test_without_the_header_nginx_buffers(stack, tmp_path):
    """The control for the test above: the header is what makes the difference."""
    release = tmp_path / "release"
    request = (f"GET /stream?{urllib.parse.quote(str(release))}&buffered HTTP/1.1\r\n"
               f"Host: {SITE}\r\nConnection: close\r\n\r\n").encode()
    with raw_tls(stack.address, stack.context, request) as sock:
        sock.settimeout(1.0)
        stream = sock.makefile("rb")
        with pytest.raises((TimeoutError, socket.timeout, ssl.SSLError)):
            read_until(stream, b"first\n")
    release.touch()


def test_upstream_connections_are_reused(stack):
    # Each client request on its own connection; nginx keeps its connection to greenserve.
    ports = [stack.echo(headers={"Connection": "close"})["greenserve.peer_port"]
             for _ in range(30)]
    assert len(set(ports)) <= 2, ports  # one nginx worker: one connection, reused


def test_plain_http_redirects_to_https(stack):
    connection = http.client.HTTPConnection(stack.host, stack.http_port, timeout=procs.WAIT)
    try:
        status, headers, _ = fetch(connection, "GET", "/x?y=1",
                                   headers={"Host": SITE})
    finally:
        connection.close()
    assert status == 301
    assert headers["location"] == f"https://{SITE}/x?y=1"


def test_unknown_host_names_never_reach_the_app(stack):
    connection = http.client.HTTPConnection(stack.host, stack.http_port, timeout=procs.WAIT)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        fetch(connection, "GET", "/echo", headers={"Host": "other.example"})
    connection.close()
    # Over TLS nginx refuses the handshake for a name it has no certificate for.
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(stack.address, procs.WAIT) as raw, \
            pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
        context.wrap_socket(raw, server_hostname="other.example")


# -- over a unix socket ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unix_stack(folder, ca):
    path = folder / "greenserve.sock"
    with procs.Processes() as processes:
        server = processes.greenserve("proxied:app", "-b", f"unix:{path}", "--keep-alive", "75",
                                      "--forwarded-allow-ips", "unix")
        server.wait_for(f"Listening at unix:{path}")
        yield start_stack(processes, folder, ca, f"server unix:{path};", server)


def test_over_a_unix_socket(unix_stack):
    client = random_loopback()
    body = pattern(200000)
    seen = unix_stack.echo("POST", "/caf%C3%A9?x=1", body=body, source=client)
    assert seen["REMOTE_ADDR"] == client
    assert seen["greenserve.peer_addr"] == ""  # a unix-socket peer has no address
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["RAW_URI"] == "/caf%C3%A9?x=1"
    assert seen["body"]["sha256"] == hashlib.sha256(body).hexdigest()
    status, _, data = unix_stack.get("GET", "/static/app.css")
    assert (status, data) == (200, STATIC_FILES["app.css"])


@pytest.mark.skipif(not proxies.ROOT, reason="nginx's workers run as another user only as root")
def test_a_socket_only_its_owner_may_write_refuses_nginx(folder, ca):
    # What a unix socket created under the usual umask 022 does to an nginx running as
    # another user (www-data, here nobody): the reason greenserve's default is 0777.
    path = folder / "private.sock"
    with procs.Processes() as processes:
        server = processes.greenserve("proxied:app", "-b", f"unix:{path}",
                                      "--socket-mode", "755")
        server.wait_for(f"Listening at unix:{path}")
        stack = start_stack(processes, folder, ca, f"server unix:{path};", server)
        status, headers, _ = stack.get("GET", "/echo")
        assert status == 502 and headers["server"].startswith("nginx")
        stack.nginx.wait_for("Permission denied")


# -- a Django admin behind nginx on HTTPS ---------------------------------------------------------

DJANGO_SETTINGS = '''
import os

SECRET_KEY = "deploy-test-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["example.com"]
INSTALLED_APPS = ["django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
                  "django.contrib.sessions", "django.contrib.messages",
                  "django.contrib.staticfiles"]
MIDDLEWARE = ["django.middleware.security.SecurityMiddleware",
              "django.contrib.sessions.middleware.SessionMiddleware",
              "django.middleware.common.CommonMiddleware",
              "django.middleware.csrf.CsrfViewMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware",
              "django.middleware.clickjacking.XFrameOptionsMiddleware"]
ROOT_URLCONF = "deploysite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": [
                  "django.template.context_processors.request",
                  "django.contrib.auth.context_processors.auth",
                  "django.contrib.messages.context_processors.messages"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ["DEPLOY_DATABASE"]}}
STATIC_URL = "/static/"
STATIC_ROOT = os.environ["DEPLOY_STATIC_ROOT"]
# As in production over HTTPS; no SECURE_PROXY_SSL_HEADER: greenserve applies
# X-Forwarded-Proto from nginx, so Django sees https by itself.
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE = True
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
# Why a request was refused, on stderr.
LOGGING = {"version": 1, "disable_existing_loggers": False,
           "handlers": {"stderr": {"class": "logging.StreamHandler"}},
           "loggers": {"django.security": {"handlers": ["stderr"], "level": "WARNING"}}}
'''

DJANGO_URLS = '''
from django.contrib import admin
from django.http import JsonResponse
from django.middleware.csrf import get_token
from django.urls import path


def form(request):
    if request.method != "POST":
        return JsonResponse({"token": get_token(request)})
    return JsonResponse({"secure": request.is_secure(), "name": request.POST.get("name"),
                         "remote_addr": request.META["REMOTE_ADDR"],
                         "url": request.build_absolute_uri()})


urlpatterns = [path("admin/", admin.site.urls), path("form/", form)]
'''

DJANGO_WSGI = '''
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deploysite.settings")
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
'''

DJANGO_SETUP = '''
import django
django.setup()
from django.core.management import call_command
from django.contrib.auth.models import User
call_command("migrate", verbosity=0)
call_command("collectstatic", interactive=False, verbosity=0)
User.objects.create_superuser("admin", "admin@example.com", "correct horse battery")
'''


@pytest.fixture(scope="module")
def django_project(folder, tmp_path_factory):
    """A Django project with its admin (sqlite), migrated, static files collected to where
    nginx serves /static/ from: (project directory, environment)."""
    project = tmp_path_factory.mktemp("django")
    package = project / "deploysite"
    package.mkdir()
    for name, text in [("__init__.py", ""), ("settings.py", DJANGO_SETTINGS),
                       ("urls.py", DJANGO_URLS), ("wsgi.py", DJANGO_WSGI)]:
        (package / name).write_text(text)
    static_root = folder / "django-static"
    env = procs.environment(pythonpath=[project], DJANGO_SETTINGS_MODULE="deploysite.settings",
                            DEPLOY_DATABASE=str(project / "db.sqlite3"),
                            DEPLOY_STATIC_ROOT=str(static_root))
    result = procs.run([sys.executable, "-c", DJANGO_SETUP], cwd=project, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    for entry in [static_root, *static_root.rglob("*")]:
        entry.chmod(0o755 if entry.is_dir() else 0o644)
    return project, env, static_root


class Browser:
    """Cookies, and the Origin and Referer headers a browser sends with a form."""

    def __init__(self, stack, source):
        self.stack, self.connection = stack, stack.connection(source)
        self.origin = f"https://{SITE}:{stack.https_port}"
        self.cookies, self.cookie_flags = {}, {}

    def request(self, method, path, form=None):
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers.update({"Content-Type": "application/x-www-form-urlencoded",
                            "Origin": self.origin, "Referer": self.origin + path})
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        for name, value in response.getheaders():
            if name.lower() == "set-cookie":
                cookie, *flags = [part.strip() for part in value.split(";")]
                key, _, val = cookie.partition("=")
                self.cookies[key] = val
                self.cookie_flags[key] = {flag.lower() for flag in flags}
        return response.status, response.getheader("Location"), data.decode()

    def token(self, path):
        status, _, page = self.request("GET", path)
        assert status == 200, page
        return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)


@pytest.fixture(params=["trusted", "untrusted"])
def django_stack(request, folder, ca, django_project):
    project, env, static_root = django_project
    trust = [] if request.param == "trusted" else ["--forwarded-allow-ips", ""]
    with procs.Processes(cwd=project, env=env) as processes:
        server = processes.greenserve("deploysite.wsgi", "-b", "127.0.0.1:0",
                                      "--keep-alive", "75", *trust)
        prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=folder))
        prefix.chmod(0o755)
        cert = proxies.issue_certificate(ca, prefix)
        upstream = f"server 127.0.0.1:{server.address()[1]};"
        nginx, host, ports = proxies.start_nginx(
            processes, prefix,
            lambda host, ports: proxies.nginx_site(upstream, static_root, cert, host, ports))
        yield request.param, Stack(nginx, host, ports, server, proxies.client_context(ca),
                                   folder)


def test_django_admin_login_and_forms_over_https(django_stack):
    trust, stack = django_stack
    client = random_loopback()
    browser = Browser(stack, client)
    # The admin's own stylesheet comes from nginx, out of collectstatic's folder.
    status, _, css = browser.request("GET", "/static/admin/css/base.css")
    assert status == 200 and "body" in css

    token = browser.token("/admin/login/?next=/admin/")
    assert "secure" in browser.cookie_flags["csrftoken"]  # set because Django sees https
    status, location, page = browser.request("POST", "/admin/login/?next=/admin/", {
        "csrfmiddlewaretoken": token, "username": "admin",
        "password": "correct horse battery", "next": "/admin/"})
    if trust == "untrusted":
        # What happened before greenserve applied X-Forwarded-Proto (and happens when nginx
        # is not a trusted peer): Django thinks the request is plain HTTP, so the browser's
        # https Origin does not match and the CSRF check fails.
        assert status == 403
        stack.greenserve.wait_for("Origin checking failed")
        return
    assert (status, location) == (302, "/admin/")
    status, _, page = browser.request("GET", "/admin/")
    assert status == 200 and "Site administration" in page

    # A form of the admin: add a group.
    token = browser.token("/admin/auth/group/add/")
    status, location, _ = browser.request("POST", "/admin/auth/group/add/", {
        "csrfmiddlewaretoken": token, "name": "editors", "_save": "Save"})
    assert (status, location) == (302, "/admin/auth/group/")
    status, _, page = browser.request("GET", "/admin/auth/group/")
    assert status == 200 and "editors" in page

    # A form of our own: what Django makes of the request.
    token = json.loads(browser.request("GET", "/form/")[2])["token"]
    status, _, body = browser.request("POST", "/form/", {"csrfmiddlewaretoken": token,
                                                        "name": "caf\u00e9"})
    assert status == 200
    assert json.loads(body) == {"secure": True, "name": "caf\u00e9", "remote_addr": client,
                                "url": f"https://{SITE}:{stack.https_port}/form/"}


# -- WebSocket ------------------------------------------------------------------------------------

def test_websocket_through_nginx(folder, ca):
    import websocket  # websocket-client

    with procs.Processes() as processes:
        server = processes.greenserve("ws_apps:wsproto_app", "-b", "127.0.0.1:0")
        stack = start_stack(processes, folder, ca,
                            f"server 127.0.0.1:{server.address()[1]};", server)
        raw = socket.create_connection(stack.address, timeout=procs.WAIT)
        tls = stack.context.wrap_socket(raw, server_hostname=SITE)
        ws = websocket.create_connection(f"wss://{SITE}:{stack.https_port}/ws", socket=tls,
                                         timeout=procs.WAIT)
        try:
            for message in ("through nginx", "é" * 5000):
                ws.send(message)
                assert ws.recv() == message
        finally:
            ws.close()
        # Ordinary requests still reuse upstream connections (an empty Connection header).
        status, _, body = stack.get("GET", "/")
        assert (status, body) == (400, b"a WebSocket endpoint\n")
