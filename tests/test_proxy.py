"""Forwarded headers and the PROXY protocol, as bytes and tables (no sockets).

Environs are built the way the server builds them: raw request bytes through the request
parser and ``build_environ``, so header joining and the "_" rule are the real ones.
"""

import ipaddress
import struct
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenserve.errors import ProtocolError, ProxyProtocolError
from greenserve.protocol.parser import RequestParser
from greenserve.protocol.forwarded import TrustedProxies, apply_forwarded
from greenserve.protocol.proxy import V1_MAX_LINE, V2_MAX_HEADER, ProxyHeader, ProxyProtocolParser
from greenserve.wsgi import base_environ, build_environ

DEFAULT_TRUST = "127.0.0.1,::1,10.0.0.0/8"


# =============================================================================================
# Trusted peers
# =============================================================================================

@pytest.mark.parametrize("setting, peer, trusted", [
    (DEFAULT_TRUST, "127.0.0.1", True),
    (DEFAULT_TRUST, "::1", True),
    (DEFAULT_TRUST, "10.200.3.4", True),
    (DEFAULT_TRUST, "11.0.0.1", False),
    (DEFAULT_TRUST, "127.0.0.2", False),
    (DEFAULT_TRUST, "::ffff:127.0.0.1", True),   # IPv4 client of a dual-stack listener
    (DEFAULT_TRUST, "::ffff:10.9.9.9", True),
    (DEFAULT_TRUST, "::ffff:8.8.8.8", False),
    (DEFAULT_TRUST, "", False),                   # unix-socket peer, "unix" not listed
    (DEFAULT_TRUST, None, False),
    (DEFAULT_TRUST, "not an address", False),
    (DEFAULT_TRUST + ",unix", "", True),
    ("UNIX", "", True),
    (" 192.0.2.0/24 , 2001:db8::/32 ", "192.0.2.77", True),
    (" 192.0.2.0/24 , 2001:db8::/32 ", "2001:db8:1::5", True),
    (" 192.0.2.0/24 , 2001:db8::/32 ", "2001:db9::5", False),
    ("fe80::/10", "fe80::1%eth0", True),
    ("*", "203.0.113.9", True),
    ("*", "", True),
    ("", "127.0.0.1", False),
    ("", "", False),
    (["127.0.0.1", "unix"], "", True),
])
def test_trusts_peer(setting, peer, trusted):
    proxies = TrustedProxies.parse(setting)
    assert proxies.trusts(peer) is trusted
    assert proxies.trusts(peer) is trusted  # and again, from the cache


@pytest.mark.parametrize("setting, message", [
    ("127.0.0.1,10.0.0.300/8", "'10.0.0.300/8' is not an IP address"),
    ("10.0.0.1/8", "'10.0.0.1/8' has bits set after the prefix length (did you mean "
                   "10.0.0.0/8?)"),
    ("localhost", "'localhost' is not an IP address"),
    ("127.0.0.1/33", "'127.0.0.1/33' is not an IP address"),
    ("::1/129", "'::1/129' is not an IP address"),
    ("127.0.0.1;::1", "'127.0.0.1;::1' is not an IP address"),
    ("**", "'**' is not an IP address"),
])
def test_bad_trust_setting_is_one_line(setting, message):
    with pytest.raises(ValueError) as info:
        TrustedProxies.parse(setting)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_star_trusts_peers_not_hops():
    proxies = TrustedProxies.parse("*")
    assert proxies.trusts("198.51.100.1")
    assert not proxies.trusts_hop(ipaddress.ip_address("127.0.0.1"))


# =============================================================================================
# Forwarded headers
# =============================================================================================

def make_environ(headers=(), peer="127.0.0.1", peer_port="40000", host="example.com",
                 root_path="", scheme="http"):
    """The environ the server builds for a GET with these (name, value) headers."""
    head = b"GET /path?q=1 HTTP/1.%d\r\n" % (host is not None)
    if host is not None:
        head += b"Host: " + host.encode("latin-1") + b"\r\n"
    for name, value in headers:
        head += name.encode() + b": " + value.encode("latin-1") + b"\r\n"
    parser = RequestParser()
    parser.feed(head + b"\r\n")
    request = parser.next_request()
    assert request is not None
    config = SimpleNamespace(root_path=root_path, url_scheme=scheme)
    base = base_environ(config, "127.0.0.1", "8000", False)
    return build_environ(base, request, root_path, peer, peer_port)


def forward(headers, trust=DEFAULT_TRUST, **kwargs):
    """Apply the headers; return (the keys that changed, with new values; reasons)."""
    environ = make_environ(headers, **kwargs)
    before = dict(environ)
    reasons = apply_forwarded(environ, TrustedProxies.parse(trust))
    assert all(isinstance(reason, str) and "\n" not in reason for reason in reasons)
    changed = {key: value for key, value in environ.items() if before.get(key, None) != value}
    assert all(key in environ for key in before)  # nothing removed
    return changed, list(reasons)


def peer_keys(addr="127.0.0.1", port="40000"):
    return {"greenserve.peer_addr": addr, "greenserve.peer_port": port}


def client(addr, port=""):
    return {"REMOTE_ADDR": addr, "REMOTE_PORT": port, **peer_keys()}


def test_no_forwarded_headers_costs_nothing():
    environ = make_environ([("User-Agent", "x")])
    before = dict(environ)
    assert apply_forwarded(environ, TrustedProxies.parse(DEFAULT_TRUST)) == ()
    assert environ == before


@pytest.mark.parametrize("peer", ["203.0.113.5", "127.0.0.2", "", "::ffff:8.8.8.8"])
def test_untrusted_peer_changes_nothing(peer):
    headers = [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Port", "443"),
               ("X-Forwarded-Prefix", "/evil"), ("Forwarded", "for=198.51.100.7")]
    changed, reasons = forward(headers, peer=peer)
    assert changed == {}
    assert len(reasons) == 1 and "untrusted peer" in reasons[0]


def test_headers_pass_untouched_to_the_app():
    headers = [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "https")]
    environ = make_environ(headers)
    apply_forwarded(environ, TrustedProxies.parse(DEFAULT_TRUST))
    assert environ["HTTP_X_FORWARDED_FOR"] == "198.51.100.7"
    assert environ["HTTP_X_FORWARDED_PROTO"] == "https"


def test_underscore_spelling_is_never_a_forwarded_header():
    # The request layer drops "X_Forwarded_For": it would map to the same environ key.
    changed, reasons = forward([("X_Forwarded_For", "198.51.100.7")])
    assert changed == {} and reasons == []


def test_unix_socket_peer_trusted_when_listed():
    changed, reasons = forward([("X-Forwarded-For", "198.51.100.7")], peer="", peer_port="",
                               trust="unix")
    assert changed == {"REMOTE_ADDR": "198.51.100.7", "greenserve.peer_addr": "",
                       "greenserve.peer_port": ""}
    assert reasons == []


# -- X-Forwarded-For chains -------------------------------------------------------------------

@pytest.mark.parametrize("xff, expected", [
    ("198.51.100.7", client("198.51.100.7")),
    # several proxies, each appending its peer; trusted ones are walked past
    ("198.51.100.7, 10.0.0.2, 10.1.0.3", client("198.51.100.7")),
    ("198.51.100.7,10.0.0.2", client("198.51.100.7")),
    # a client that writes its own entries first cannot get past the right-most untrusted one
    ("1.1.1.1, 198.51.100.7", client("198.51.100.7")),
    ("127.0.0.1, 198.51.100.7", client("198.51.100.7")),
    ("10.0.0.9, 198.51.100.7, 10.0.0.2", client("198.51.100.7")),
    ("garbage, 198.51.100.7", client("198.51.100.7")),
    ("unknown, 198.51.100.7", client("198.51.100.7")),
    # every entry a trusted proxy: the left-most
    ("10.0.0.5, 10.0.0.2", client("10.0.0.5")),
    ("127.0.0.1", {"REMOTE_PORT": "", **peer_keys()}),
    # IPv6 and ports
    ("2001:db8::1", client("2001:db8::1")),
    ("2001:DB8:0:0::0001", client("2001:db8::1")),
    ("[2001:db8::1]", client("2001:db8::1")),
    ("[2001:db8::1]:4711", client("2001:db8::1", "4711")),
    ("198.51.100.7:5555", client("198.51.100.7", "5555")),
    ("198.51.100.7:05555", client("198.51.100.7", "5555")),
    ("[::1]:80, 2001:db8::7", client("2001:db8::7")),
    ("::ffff:198.51.100.7", client("::ffff:c633:6407")),
    (" 198.51.100.7 ,, ", client("198.51.100.7")),
])
def test_x_forwarded_for(xff, expected):
    changed, reasons = forward([("X-Forwarded-For", xff)])
    assert changed == expected
    assert reasons == []


def test_x_forwarded_for_over_several_header_lines():
    changed, _ = forward([("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "198.51.100.7")])
    assert changed == client("198.51.100.7")


@pytest.mark.parametrize("xff", [
    "198.51.100.7, garbage",
    "198.51.100.7, 10.0.0.2 x",
    "999.1.1.1",
    "01.2.3.4",
    "1.2.3",
    "[198.51.100.7]",
    "[2001:db8::1",
    "[2001:db8::1]x",
    "[2001:db8::1]:",
    "[2001:db8::1]:99999",
    "198.51.100.7:0",
    "198.51.100.7:http",
    "2001:db8::1:80:x",
    "_hidden",
    "unknown",
    "10.0.0.2, unknown",  # the trusted hop did not know its client
    "fe80::1%eth0 x",  # an IPv6 zone: Python's parser takes any text but "%" there
    "[fe80::1%eth0]:80",
    "",
    " , ",
])
def test_x_forwarded_for_not_applied(xff):
    changed, reasons = forward([("X-Forwarded-For", xff)])
    assert changed == peer_keys()
    assert len(reasons) == 1 and reasons[0].startswith("X-Forwarded-For not applied")


def test_star_believes_only_the_entry_the_peer_added():
    changed, _ = forward([("X-Forwarded-For", "127.0.0.1, 198.51.100.7, 203.0.113.8")],
                         trust="*", peer="192.0.2.1")
    assert changed == {"REMOTE_ADDR": "203.0.113.8", "REMOTE_PORT": "",
                       **peer_keys("192.0.2.1")}


def test_same_chain_twice_gives_the_same_answer():
    proxies = TrustedProxies.parse(DEFAULT_TRUST)
    for _ in range(3):
        environ = make_environ([("X-Forwarded-For", "198.51.100.7, bad")])
        assert apply_forwarded(environ, proxies) == [
            "X-Forwarded-For not applied: 'bad' is not an address"]
        environ = make_environ([("X-Forwarded-For", "198.51.100.7")])
        assert apply_forwarded(environ, proxies) == []
        assert environ["REMOTE_ADDR"] == "198.51.100.7"


# -- scheme, host, port ------------------------------------------------------------------------

def https(**extra):
    return {"wsgi.url_scheme": "https", "SERVER_NAME": "example.com", "SERVER_PORT": "443",
            **peer_keys(), **extra}


def http(**extra):
    return {"SERVER_NAME": "example.com", "SERVER_PORT": "80", **peer_keys(), **extra}


@pytest.mark.parametrize("headers, expected", [
    ([("X-Forwarded-Proto", "https")], https()),
    ([("X-Forwarded-Proto", "HTTPS")], https()),
    ([("X-Forwarded-Proto", "https, https")], https()),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "https")], https()),
    ([("X-Forwarded-Proto", "http")], http()),
    ([("X-Forwarded-Ssl", "on")], https()),
    ([("X-Forwarded-Ssl", "On")], https()),
    ([("X-Forwarded-Ssl", "off")], http()),
    ([("X-Forwarded-Scheme", "https")], https()),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "on")], https()),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Scheme", "https"),
      ("X-Forwarded-Ssl", "on")], https()),
])
def test_scheme(headers, expected):
    changed, reasons = forward(headers)
    assert changed == expected
    assert reasons == []


def test_scheme_keeps_the_port_of_host():
    changed, _ = forward([("X-Forwarded-Proto", "https")], host="example.com:8443")
    assert changed == https(SERVER_PORT="8443")


def test_scheme_without_host():
    changed, _ = forward([("X-Forwarded-Proto", "https")], host=None)
    assert changed == {"wsgi.url_scheme": "https", "SERVER_PORT": "443", **peer_keys()}


@pytest.mark.parametrize("headers, reason", [
    ([("X-Forwarded-Proto", "http, https")], "X-Forwarded-Proto not applied: conflicting"),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")],
     "X-Forwarded-Proto not applied: conflicting"),
    ([("X-Forwarded-Proto", "ftp")], "X-Forwarded-Proto not applied: 'ftp' is malformed"),
    ([("X-Forwarded-Proto", "wss")], "X-Forwarded-Proto not applied: 'wss' is malformed"),
    ([("X-Forwarded-Proto", "https x")], "X-Forwarded-Proto not applied"),
    ([("X-Forwarded-Proto", "")], "X-Forwarded-Proto not applied: ''"),
    ([("X-Forwarded-Proto", ",")], "X-Forwarded-Proto not applied: empty"),
    ([("X-Forwarded-Ssl", "yes")], "X-Forwarded-Ssl not applied"),
    ([("X-Forwarded-Scheme", "gopher")], "X-Forwarded-Scheme not applied"),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "off")],
     "scheme not applied: X-Forwarded-Proto says https, X-Forwarded-Ssl says http"),
    ([("X-Forwarded-Proto", "http"), ("X-Forwarded-Scheme", "https")],
     "scheme not applied: X-Forwarded-Proto says http, X-Forwarded-Scheme says https"),
])
def test_scheme_not_applied(headers, reason):
    changed, reasons = forward(headers)
    assert changed == peer_keys()
    assert len(reasons) == 1 and reasons[0].startswith(reason)


def test_malformed_scheme_header_does_not_block_a_good_one():
    changed, reasons = forward([("X-Forwarded-Proto", "bogus"), ("X-Forwarded-Ssl", "on")])
    assert changed == https()
    assert reasons == ["X-Forwarded-Proto not applied: 'bogus' is malformed"]


@pytest.mark.parametrize("headers, expected", [
    ([("X-Forwarded-Host", "public.example")],
     {"HTTP_HOST": "public.example", "SERVER_NAME": "public.example", "SERVER_PORT": "80"}),
    ([("X-Forwarded-Host", "public.example:8080")],
     {"HTTP_HOST": "public.example:8080", "SERVER_NAME": "public.example",
      "SERVER_PORT": "8080"}),
    ([("X-Forwarded-Host", "[2001:db8::1]:8443")],
     {"HTTP_HOST": "[2001:db8::1]:8443", "SERVER_NAME": "[2001:db8::1]",
      "SERVER_PORT": "8443"}),
    ([("X-Forwarded-Host", "[2001:db8::1]")],
     {"HTTP_HOST": "[2001:db8::1]", "SERVER_NAME": "[2001:db8::1]", "SERVER_PORT": "80"}),
    ([("X-Forwarded-Host", "192.0.2.1")],
     {"HTTP_HOST": "192.0.2.1", "SERVER_NAME": "192.0.2.1", "SERVER_PORT": "80"}),
    ([("X-Forwarded-Host", "xn--bcher-kva.example, xn--bcher-kva.example")],
     {"HTTP_HOST": "xn--bcher-kva.example", "SERVER_NAME": "xn--bcher-kva.example",
      "SERVER_PORT": "80"}),
    ([("X-Forwarded-Host", "Public.Example, public.example")],
     {"HTTP_HOST": "Public.Example", "SERVER_NAME": "Public.Example", "SERVER_PORT": "80"}),
    ([("X-Forwarded-Host", "caf%C3%A9.example")],
     {"HTTP_HOST": "caf%C3%A9.example", "SERVER_NAME": "caf%C3%A9.example",
      "SERVER_PORT": "80"}),
    ([("X-Forwarded-Host", "public.example"), ("X-Forwarded-Proto", "https")],
     {"HTTP_HOST": "public.example", "SERVER_NAME": "public.example", "SERVER_PORT": "443",
      "wsgi.url_scheme": "https"}),
    # X-Forwarded-Port: the client's URL had that port
    ([("X-Forwarded-Port", "8443")],
     {"HTTP_HOST": "example.com:8443", "SERVER_NAME": "example.com", "SERVER_PORT": "8443"}),
    ([("X-Forwarded-Port", "443"), ("X-Forwarded-Proto", "https")],
     {"SERVER_NAME": "example.com", "SERVER_PORT": "443", "wsgi.url_scheme": "https"}),
    ([("X-Forwarded-Host", "public.example"), ("X-Forwarded-Port", "8443")],
     {"HTTP_HOST": "public.example:8443", "SERVER_NAME": "public.example",
      "SERVER_PORT": "8443"}),
    ([("X-Forwarded-Host", "public.example:8443"), ("X-Forwarded-Port", "8443")],
     {"HTTP_HOST": "public.example:8443", "SERVER_NAME": "public.example",
      "SERVER_PORT": "8443"}),
])
def test_host_and_port(headers, expected):
    changed, reasons = forward(headers)
    assert changed == {**peer_keys(), **expected}
    assert reasons == []


def test_forwarded_port_replaces_the_upstream_port_in_host():
    # nginx's default "Host: $proxy_host" names the upstream; the client used 443.
    changed, reasons = forward([("X-Forwarded-Proto", "https"), ("X-Forwarded-Port", "443")],
                               host="127.0.0.1:8000")
    assert changed == {"HTTP_HOST": "127.0.0.1", "SERVER_PORT": "443",
                       "wsgi.url_scheme": "https", **peer_keys()}
    assert reasons == []


def test_forwarded_port_contradicting_the_forwarded_host():
    changed, reasons = forward([("X-Forwarded-Host", "public.example:8080"),
                                ("X-Forwarded-Port", "443")])
    assert changed == {"HTTP_HOST": "public.example:8080", "SERVER_NAME": "public.example",
                       "SERVER_PORT": "8080", **peer_keys()}
    assert reasons == ["X-Forwarded-Port 443 not applied: the forwarded host says 8080"]


@pytest.mark.parametrize("value", [
    "evil example", "a/b", "a@b", "a?b", "a#b", "[zz::1]", "[2001:db8::1", "public.example:",
    "public.example:99999", "public.example:x", "a%2", "a%zz", ":80", "", "a, b",
    "public.example\x85", "[2001:db8::1%eth0]",
])
def test_x_forwarded_host_not_applied(value):
    changed, reasons = forward([("X-Forwarded-Host", value)])
    assert changed == peer_keys()
    assert len(reasons) == 1 and reasons[0].startswith("X-Forwarded-Host not applied")


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1", "1 2", "80, 443", ""])
def test_x_forwarded_port_not_applied(value):
    changed, reasons = forward([("X-Forwarded-Port", value)])
    assert changed == peer_keys()
    assert len(reasons) == 1 and reasons[0].startswith("X-Forwarded-Port not applied")


def test_nginx_seed_deployment():
    """What the nginx config in examples/deploy sends for a browser on https."""
    changed, reasons = forward(
        [("X-Forwarded-For", "198.51.100.7"), ("X-Forwarded-Proto", "https")],
        host="shop.example")
    assert changed == {"REMOTE_ADDR": "198.51.100.7", "REMOTE_PORT": "",
                       "wsgi.url_scheme": "https", "SERVER_NAME": "shop.example",
                       "SERVER_PORT": "443", **peer_keys()}
    assert reasons == []


# -- Forwarded (RFC 7239) ---------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("for=198.51.100.7", client("198.51.100.7")),
    ("For=198.51.100.7", client("198.51.100.7")),
    ('for="198.51.100.7"', client("198.51.100.7")),
    ('for="198.51.100.7:4711"', client("198.51.100.7", "4711")),
    ('for="[2001:db8:cafe::17]:4711"', client("2001:db8:cafe::17", "4711")),
    ('for="[2001:db8:cafe::17]"', client("2001:db8:cafe::17")),
    ('for="198.51.100.7:_hidden"', client("198.51.100.7")),
    ("for=198.51.100.7;proto=https;by=203.0.113.43",
     https(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="")),
    ("for=198.51.100.7;PROTO=HTTPS", https(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="")),
    ('for=198.51.100.7;proto=https;host="public.example:8443"',
     https(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="", HTTP_HOST="public.example:8443",
           SERVER_NAME="public.example", SERVER_PORT="8443")),
    ("proto=https;host=public.example",
     https(HTTP_HOST="public.example", SERVER_NAME="public.example")),
    # whitespace around ";" and ",", empty elements and unknown parameters are harmless
    (" , for=198.51.100.7 ; proto=https ;; ext=1 ,", https(REMOTE_ADDR="198.51.100.7",
                                                          REMOTE_PORT="")),
    # a quoted string may hold "," ";" "=" and escapes; none of it splits the element
    ('for=198.51.100.7;ext="a, for=6.6.6.6; proto=http \\" x"',
     client("198.51.100.7")),
    ('for=198.51.100.7;host="pub\\lic.example"',
     http(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="", HTTP_HOST="public.example",
          SERVER_NAME="public.example")),
    # chains: the right-most element not from a trusted proxy is the client's hop, and
    # its proto and host are the ones the client used
    ("for=198.51.100.7;proto=https, for=10.0.0.2;proto=http",
     https(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="")),
    ("for=192.0.2.43, for=198.51.100.17", client("198.51.100.17")),
    ("for=6.6.6.6;proto=https;host=evil.example, for=198.51.100.7;proto=http",
     http(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="")),
    ('for="[::1]", for=10.0.0.3', client("::1")),
    ("for=10.0.0.5;proto=https, for=10.0.0.2;proto=http",
     https(REMOTE_ADDR="10.0.0.5", REMOTE_PORT="")),
    ("proto=https, for=198.51.100.7", client("198.51.100.7")),
    ("for=_hidden, for=198.51.100.7", client("198.51.100.7")),
])
def test_forwarded(value, expected):
    changed, reasons = forward([("Forwarded", value)])
    assert changed == expected
    assert reasons == []


def test_forwarded_over_several_header_lines():
    changed, _ = forward([("Forwarded", "for=6.6.6.6;proto=https"),
                          ("Forwarded", "for=198.51.100.7;proto=http")])
    assert changed == http(REMOTE_ADDR="198.51.100.7", REMOTE_PORT="")


@pytest.mark.parametrize("value, expected, reason", [
    ("for=unknown;proto=https", https(), "Forwarded for= not applied: the client is 'unknown'"),
    ("for=UNKNOWN", peer_keys(), "Forwarded for= not applied: the client is 'UNKNOWN'"),
    ('for="_gazonk"', peer_keys(), "Forwarded for= not applied: the client is '_gazonk'"),
    ('for="_x:80", for=10.0.0.2', peer_keys(), "Forwarded for= not applied"),
    ("for=198.51.100.7;proto=ftp", client("198.51.100.7"), "Forwarded proto= not applied"),
    ('for=198.51.100.7;host="evil example"', client("198.51.100.7"),
     "Forwarded host= not applied"),
])
def test_forwarded_partly_applied(value, expected, reason):
    changed, reasons = forward([("Forwarded", value)])
    assert changed == expected
    assert len(reasons) == 1 and reasons[0].startswith(reason)


@pytest.mark.parametrize("value", [
    "for=[2001:db8::1]",            # RFC 7239 §6: IPv6 and ports must be quoted
    "for=198.51.100.7:80",
    'for="198.51.100.7',
    'for="198.51.100.7"x',
    "for=198.51.100.7 proto=http",
    "for=198.51.100.7;for=198.51.100.8",
    "for=198.51.100.7;FOR=198.51.100.8",
    'for="[2001:db8::1"',
    'for="[2001:db8::1]x"',
    'for="[198.51.100.7]"',
    'for="[zz::1]:80"',
    'for="[fe80::1%eth0 x]"',        # RFC 7239 §6: an IPv6address has no zone
    'for="999.1.1.1"',
    'for="01.2.3.4"',
    'for="198.51.100.7:99999"',
    'for="198.51.100.7:0"',
    'for="198.51.100.7:"',
    'for="198.51.100.7:x"',
    'for="2001:db8::1"',             # unbracketed IPv6 is not a node
    'for=""',
    "for=",
    "for",
    "=198.51.100.7",
    "for=198.51.100.7;by=nobody",
    "for=198.51.100.7,\x80",
    "for=198.51.100.7, garbage",     # garbage from anywhere: the split cannot be trusted
    "garbage, for=198.51.100.7",
    'for=198.51.100.7;a="\\',
])
def test_forwarded_not_applied(value):
    changed, reasons = forward([("Forwarded", value)])
    assert changed == peer_keys()
    assert len(reasons) == 1 and reasons[0].startswith("Forwarded not applied")


def test_x_forwarded_headers_win_over_forwarded():
    changed, reasons = forward([("Forwarded", "for=6.6.6.6;proto=https;host=evil.example"),
                                ("X-Forwarded-For", "198.51.100.7")])
    assert changed == client("198.51.100.7")
    assert reasons == ["Forwarded ignored: X-Forwarded-* headers take precedence"]


def test_any_x_forwarded_header_disables_forwarded():
    # A proxy that sets only X-Forwarded-Proto passes a client's Forwarded through.
    changed, reasons = forward([("Forwarded", "for=127.0.0.1"), ("X-Forwarded-Proto", "https")])
    assert changed == https()
    assert reasons == ["Forwarded ignored: X-Forwarded-* headers take precedence"]


# -- X-Forwarded-Prefix ------------------------------------------------------------------------

@pytest.mark.parametrize("prefix, root_path, script_name", [
    ("/app", "", "/app"),
    ("/app/", "", "/app"),
    (" /a/b ", "", "/a/b"),
    ("/app", "/inner", "/app/inner"),
    ("/caf%C3%A9", "", "/caf\u00c3\u00a9"),  # decoded, bytes as latin-1 (PEP 3333)
    ("/a%20b", "", "/a b"),
    ("/~user/x:y@z", "", "/~user/x:y@z"),
])
def test_prefix(prefix, root_path, script_name):
    changed, reasons = forward([("X-Forwarded-Prefix", prefix)], root_path=root_path)
    assert changed == {"SCRIPT_NAME": script_name, **peer_keys()}
    assert reasons == []


def test_prefix_of_only_a_slash_adds_nothing():
    changed, reasons = forward([("X-Forwarded-Prefix", "/")])
    assert changed == peer_keys() and reasons == []


@pytest.mark.parametrize("prefix", [
    "app", "", "/a b", "/a/../b", "/a/./b", "/..", "/a/%2e%2e/b", "/%2E%2E", "//evil.example",
    "/%2Fevil.example", "/a//b", "/a%5cb", "/%5C%5Cevil", "/a%00", "/a%0d%0aX: y", "/a%7f",
    "/a?b", "/a#b", "/a%zz", "/a\\b", "/app, /app", "https://evil.example/",
])
def test_prefix_not_applied(prefix):
    changed, reasons = forward([("X-Forwarded-Prefix", prefix)])
    assert changed == peer_keys()
    assert len(reasons) == 1 and reasons[0].startswith("X-Forwarded-Prefix not applied")


# -- never an exception -----------------------------------------------------------------------

_HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xff,
                                      blacklist_characters="\x7f"), max_size=80)
_ADDRESS_TEXT = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]:{ip.packed[0] + 1}"),
    st.sampled_from(["unknown", "_x", "127.0.0.1", "10.0.0.1", "", "[", "]", ":"]))
_CHAIN = st.lists(_ADDRESS_TEXT, max_size=5).map(", ".join)
_FORWARDED_VALUE = st.lists(
    st.lists(st.tuples(st.sampled_from(["for", "by", "proto", "host", "x"]),
                       st.one_of(_ADDRESS_TEXT, _HEADER_VALUE)), max_size=3)
    .map(lambda pairs: ";".join(f'{name}="{value}"' for name, value in pairs)),
    max_size=4).map(", ".join)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Ssl",
                     "X-Forwarded-Scheme", "X-Forwarded-Host", "X-Forwarded-Port",
                     "X-Forwarded-Prefix", "Forwarded"]),
    st.one_of(_HEADER_VALUE, _CHAIN, _FORWARDED_VALUE), max_size=8),
    st.sampled_from(["127.0.0.1", "10.1.2.3", "203.0.113.5", ""]),
    st.sampled_from([DEFAULT_TRUST, "*", "unix", ""]))
def test_random_headers_never_raise(headers, peer, trust):
    headers = [(name, value.strip(" \t")) for name, value in headers.items()]
    environ = make_environ(headers, peer=peer)
    before = dict(environ)
    reasons = apply_forwarded(environ, TrustedProxies.parse(trust))
    assert all(isinstance(reason, str) for reason in reasons)
    assert environ["wsgi.url_scheme"] in ("http", "https")
    if environ["REMOTE_ADDR"] != peer:
        ipaddress.ip_address(environ["REMOTE_ADDR"])
        assert environ["REMOTE_PORT"] == "" or 0 < int(environ["REMOTE_PORT"]) < 65536
    assert environ["SERVER_PORT"].isdigit()
    assert environ["SCRIPT_NAME"] == "" or environ["SCRIPT_NAME"].startswith("/")
    assert "//" not in environ["SCRIPT_NAME"]
    if not TrustedProxies.parse(trust).trusts(peer):
        assert environ == before
    for key, value in environ.items():
        if key.isupper():
            assert isinstance(value, str)


# =============================================================================================
# PROXY protocol
# =============================================================================================

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def v2(command=0x1, family=0x11, block=b"", length=None, version=0x2):
    """A version 2 header: signature, version/command, family/transport, length, block."""
    if length is None:
        length = len(block)
    return (V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", length)
            + block)


def inet(src, dst, src_port, dst_port):
    return (ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
            + struct.pack("!HH", src_port, dst_port))


def unix_paths(src, dst):
    return src.ljust(108, b"\0") + dst.ljust(108, b"\0")


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def splits(data):
    """The input whole, byte by byte, and cut in two at every position."""
    yield [data]
    yield [data[i:i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def read_header(pieces, **kwargs):
    """Feed pieces; ('header', fields, rest), ('pending',) or ('error', message)."""
    parser = ProxyProtocolParser(**kwargs)
    for index, piece in enumerate(pieces):
        try:
            header = parser.feed(piece)
        except ProxyProtocolError as exc:
            with pytest.raises(ProxyProtocolError) as again:
                parser.feed(b"more")
            assert again.value is exc  # an error is final
            return ("error", str(exc))
        if header is not None:
            assert parser.header is header
            rest = parser.rest + b"".join(pieces[index + 1:])
            with pytest.raises(RuntimeError):
                parser.feed(b"")
            return ("header", fields(header), rest)
    return ("pending",)


def fields(header):
    return (header.version, header.command, header.family, header.transport, header.src_addr,
            header.src_port, header.dst_addr, header.dst_port, header.tlvs, header.client)


def outcome_every_way(data, **kwargs):
    """The outcome, checked to be the same however the bytes arrive."""
    outcomes = {repr(read_header(pieces, **kwargs)) for pieces in splits(data)}
    assert len(outcomes) == 1, outcomes
    return read_header([data], **kwargs)


def test_error_class():
    assert issubclass(ProxyProtocolError, ProtocolError)
    assert ProxyProtocolError("x").status == 400


MAX_V6 = ":".join(["ffff"] * 8)

VALID = {
    "v1 tcp4": (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
                (1, "PROXY", "TCP4", "STREAM", "192.168.0.1", 56324, "192.168.0.11", 443, (),
                 ("192.168.0.1", "56324"))),
    "v1 tcp4 longest": (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
                        (1, "PROXY", "TCP4", "STREAM", "255.255.255.255", 65535,
                         "255.255.255.255", 65535, (), ("255.255.255.255", "65535"))),
    "v1 tcp4 zeros": (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n",
                      (1, "PROXY", "TCP4", "STREAM", "0.0.0.0", 0, "10.0.0.1", 0, (),
                       ("0.0.0.0", "0"))),
    "v1 tcp6": (b"PROXY TCP6 2001:db8::1 2001:DB8::2 1 65535\r\n",
                (1, "PROXY", "TCP6", "STREAM", "2001:db8::1", 1, "2001:db8::2", 65535, (),
                 ("2001:db8::1", "1"))),
    "v1 tcp6 longest": (f"PROXY TCP6 {MAX_V6} {MAX_V6} 65535 65535\r\n".encode(),
                        (1, "PROXY", "TCP6", "STREAM", MAX_V6, 65535, MAX_V6, 65535, (),
                         (MAX_V6, "65535"))),
    "v1 tcp6 mapped": (b"PROXY TCP6 ::ffff:192.0.2.1 ::1 80 81\r\n",
                       (1, "PROXY", "TCP6", "STREAM", "::ffff:c000:201", 80, "::1", 81, (),
                        ("::ffff:c000:201", "80"))),
    "v1 unknown": (b"PROXY UNKNOWN\r\n",
                   (1, "PROXY", "UNKNOWN", "UNSPEC", None, None, None, None, (), None)),
    "v1 unknown longest": (f"PROXY UNKNOWN {MAX_V6} {MAX_V6} 65535 65535\r\n".encode(),
                           (1, "PROXY", "UNKNOWN", "UNSPEC", None, None, None, None, (),
                            None)),
    "v1 unknown anything": (b"PROXY UNKNOWN \x00\xff\n\r garbage\r\n",
                            (1, "PROXY", "UNKNOWN", "UNSPEC", None, None, None, None, (),
                             None)),
    "v2 tcp4": (v2(block=inet("192.0.2.1", "192.0.2.2", 56324, 443)),
                (2, "PROXY", "AF_INET", "STREAM", "192.0.2.1", 56324, "192.0.2.2", 443, (),
                 ("192.0.2.1", "56324"))),
    "v2 udp4": (v2(family=0x12, block=inet("192.0.2.1", "192.0.2.2", 53, 53)),
                (2, "PROXY", "AF_INET", "DGRAM", "192.0.2.1", 53, "192.0.2.2", 53, (), None)),
    "v2 tcp6": (v2(family=0x21, block=inet("2001:db8::1", "2001:db8::2", 0, 65535)),
                (2, "PROXY", "AF_INET6", "STREAM", "2001:db8::1", 0, "2001:db8::2", 65535, (),
                 ("2001:db8::1", "0"))),
    "v2 udp6": (v2(family=0x22, block=inet("2001:db8::1", "2001:db8::2", 1, 2)),
                (2, "PROXY", "AF_INET6", "DGRAM", "2001:db8::1", 1, "2001:db8::2", 2, (),
                 None)),
    "v2 unix stream": (v2(family=0x31, block=unix_paths(b"/run/client.sock", b"/run/gs.sock")),
                       (2, "PROXY", "AF_UNIX", "STREAM", "/run/client.sock", None,
                        "/run/gs.sock", None, (), ("", ""))),
    "v2 unix abstract": (v2(family=0x31, block=unix_paths(b"\0abstract", b"")),
                         (2, "PROXY", "AF_UNIX", "STREAM", "\0abstract", None, "", None, (),
                          ("", ""))),
    "v2 unix dgram": (v2(family=0x32, block=unix_paths(b"/a", b"/b")),
                      (2, "PROXY", "AF_UNIX", "DGRAM", "/a", None, "/b", None, (), None)),
    "v2 local": (v2(command=0x0, family=0x00),
                 (2, "LOCAL", "AF_UNSPEC", "UNSPEC", None, None, None, None, (), None)),
    "v2 local with addresses": (v2(command=0x0, block=inet("192.0.2.1", "192.0.2.2", 1, 2)),
                                (2, "LOCAL", "AF_INET", "STREAM", None, None, None, None, (),
                                 None)),
    "v2 local with junk": (v2(command=0x0, family=0x00, block=b"\xff" * 7),
                           (2, "LOCAL", "AF_UNSPEC", "UNSPEC", None, None, None, None, (),
                            None)),
    "v2 proxy unspec": (v2(family=0x00, block=b"whatever"),
                        (2, "PROXY", "AF_UNSPEC", "UNSPEC", None, None, None, None, (), None)),
    "v2 proxy inet unspec transport": (v2(family=0x10, block=b"x"),
                                       (2, "PROXY", "AF_INET", "UNSPEC", None, None, None,
                                        None, (), None)),
    "v2 tlvs": (v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0x01, b"http/1.1")
                   + tlv(0x02, b"example.com") + tlv(0x04, b"") + tlv(0x20, b"\x01" + b"\0" * 4)),
                (2, "PROXY", "AF_INET", "STREAM", "192.0.2.1", 1, "192.0.2.2", 2,
                 ((0x01, b"http/1.1"), (0x02, b"example.com"), (0x04, b""),
                  (0x20, b"\x01\0\0\0\0")), ("192.0.2.1", "1"))),
    "v2 largest allowed": (v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2)
                              + tlv(0x04, b"\0" * (V2_MAX_HEADER - 16 - 12 - 3))),
                           (2, "PROXY", "AF_INET", "STREAM", "192.0.2.1", 1, "192.0.2.2", 2,
                            ((0x04, b"\0" * (V2_MAX_HEADER - 31)),), ("192.0.2.1", "1"))),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_header(name):
    data, expected = VALID[name]
    assert outcome_every_way(data) == ("header", expected, b"")
    # what follows the header is handed on untouched, however it arrives
    assert outcome_every_way(data + REQUEST) == ("header", expected, REQUEST)


def test_v1_line_of_exactly_107_bytes():
    data = VALID["v1 unknown longest"][0]
    assert len(data) == V1_MAX_LINE
    assert outcome_every_way(data)[0] == "header"


def test_v2_header_of_exactly_the_limit():
    data = VALID["v2 largest allowed"][0]
    assert len(data) == V2_MAX_HEADER


def test_the_request_after_the_header_parses():
    data, _ = VALID["v2 tcp6"]
    parser = ProxyProtocolParser()
    header = parser.feed(data + REQUEST)
    assert header.client == ("2001:db8::1", "0")
    http = RequestParser()
    http.feed(parser.rest)
    assert http.next_request().host == b"example.com"


@pytest.mark.parametrize("data", [
    b"",
    b"P",
    b"PROXY",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r",
    b"PROXY UNKNOWN" + b" " * 80,
    V2_SIGNATURE[:5],
    V2_SIGNATURE,
    v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2))[:27],
    v2(length=100, block=b"\0" * 99),
])
def test_incomplete_header_waits(data):
    assert outcome_every_way(data) == ("pending",)


INVALID = {
    # not a PROXY header at all (section 2.2: the connection must be dropped)
    "http request": (REQUEST, "no PROXY protocol header: 'G'"),
    "tls hello": (b"\x16\x03\x01\x02\x00\x01", "no PROXY protocol header: '\\x16'"),
    "lower case": (b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "no PROXY protocol header: 'p'"),
    "no space": (b"PROXY\r\n", "no PROXY protocol header: 'PROXY\\r'"),
    "tab": (b"PROXY\tTCP4", "no PROXY protocol header: 'PROXY\\t'"),
    "bad v2 signature": (b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x00",
                         "no PROXY protocol header: '\\r\\n\\r\\n\\x00\\r\\nQUIX'"),
    "v2 signature then http": (b"\r\n\r\nGET", "no PROXY protocol header: '\\r\\n\\r\\nG'"),
    # version 1
    "v1 lf only": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n" + REQUEST, "PROXY v1: malformed line"),
    "v1 lone cr": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r" + REQUEST, "PROXY v1: malformed line"),
    "v1 two spaces": (b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1: malformed line"),
    "v1 two spaces inside": (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "PROXY v1: malformed"),
    "v1 trailing space": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "PROXY v1: malformed line"),
    "v1 missing port": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "PROXY v1: malformed line"),
    "v1 extra field": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", "PROXY v1: malformed line"),
    "v1 empty": (b"PROXY \r\n", "PROXY v1: malformed line"),
    "v1 unknown family": (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1: malformed line"),
    "v1 udp": (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1: malformed line"),
    "v1 lower family": (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXY v1: malformed line"),
    "v1 unknownx": (b"PROXY UNKNOWNX\r\n", "PROXY v1: malformed line"),
    "v1 leading zero address": (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                                "PROXY v1: bad IPv4 source address '01.2.3.4'"),
    "v1 octet 256": (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n",
                     "PROXY v1: bad IPv4 destination address '5.6.7.256'"),
    "v1 three octets": (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "PROXY v1: bad IPv4 source"),
    "v1 five octets": (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "PROXY v1: bad IPv4 source"),
    "v1 v6 in tcp4": (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "PROXY v1: bad IPv4 source"),
    "v1 v4 in tcp6": (b"PROXY TCP6 ::1 5.6.7.8 1 2\r\n", "PROXY v1: bad IPv6 destination"),
    "v1 bad v6": (b"PROXY TCP6 2001:db8:::1 ::1 1 2\r\n", "PROXY v1: bad IPv6 source"),
    "v1 v6 too long": (b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", "PROXY v1: bad IPv6"),
    "v1 v6 group": (b"PROXY TCP6 12345::1 ::1 1 2\r\n", "PROXY v1: bad IPv6 source"),
    "v1 v6 zone": (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "PROXY v1: malformed line"),
    "v1 v6 brackets": (b"PROXY TCP6 [::1] ::1 1 2\r\n", "PROXY v1: malformed line"),
    "v1 port leading zero": (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "PROXY v1: malformed"),
    "v1 port too big": (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
                        "PROXY v1: port out of range"),
    "v1 port six digits": (b"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", "PROXY v1: malformed"),
    "v1 negative port": (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "PROXY v1: malformed"),
    "v1 nul": (b"PROXY TCP4 1.2.3.4\x00 5.6.7.8 1 2\r\n", "PROXY v1: malformed line"),
    "v1 108 bytes": (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "PROXY v1: no CRLF in the first "
                                                               "107 bytes"),
    "v1 endless": (b"PROXY UNKNOWN " + b"x" * 500, "PROXY v1: no CRLF in the first 107"),
    "v1 endless tcp4": (b"PROXY TCP4 " + b"1" * 200, "PROXY v1: no CRLF in the first 107"),
    # version 2
    "v2 version 1": (v2(version=0x1), "PROXY v2: version 1, not 2"),
    "v2 version 3": (v2(version=0x3), "PROXY v2: version 3, not 2"),
    "v2 version 0": (v2(version=0x0, command=0x0), "PROXY v2: version 0, not 2"),
    "v2 command 2": (v2(command=0x2), "PROXY v2: unknown command 0x2"),
    "v2 command f": (v2(command=0xF), "PROXY v2: unknown command 0xf"),
    "v2 family 4": (v2(family=0x41), "PROXY v2: unknown address family 0x4"),
    "v2 family f": (v2(family=0xF1), "PROXY v2: unknown address family 0xf"),
    "v2 transport 3": (v2(family=0x13), "PROXY v2: unknown transport 0x3"),
    "v2 local transport 3": (v2(command=0x0, family=0x03), "PROXY v2: unknown transport"),
    "v2 over limit": (v2(length=V2_MAX_HEADER - 15), f"PROXY v2: a {V2_MAX_HEADER + 1}-byte "
                                                     f"header is over the"),
    "v2 largest length": (v2(length=65535), "PROXY v2: a 65551-byte header is over the"),
    "v2 short inet": (v2(block=b"\0" * 11), "PROXY v2: 11 address bytes, AF_INET over STREAM "
                                            "needs 12"),
    "v2 short inet6": (v2(family=0x21, block=b"\0" * 35), "PROXY v2: 35 address bytes"),
    "v2 short unix": (v2(family=0x31, block=b"\0" * 215), "PROXY v2: 215 address bytes"),
    "v2 no addresses": (v2(), "PROXY v2: 0 address bytes"),
    "v2 stray tlv bytes": (v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x04\x00"),
                           "PROXY v2: 2 stray bytes after the TLVs"),
    "v2 tlv too long": (v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2) + b"\x04\x00\x05abc"),
                        "PROXY v2: TLV 0x04 of 5 bytes runs past the header"),
    "v2 second tlv too long": (v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(1, b"h2")
                                  + b"\x02\xff\xff"),
                               "PROXY v2: TLV 0x02 of 65535 bytes runs past the header"),
}


@pytest.mark.parametrize("name", INVALID)
def test_invalid_header(name):
    data, message = INVALID[name]
    outcome = outcome_every_way(data + REQUEST)
    assert outcome[0] == "error"
    assert outcome[1].startswith(message), outcome[1]


def test_invalid_header_is_rejected_before_more_bytes_arrive():
    # Section 2.1: "abort the connection as soon as possible".
    for data in (b"G", V2_SIGNATURE + b"\x11", V2_SIGNATURE + b"\x21\x41", b"PROXY\t",
                 v2(length=65535)[:16], b"PROXY UNKNOWN " + b"x" * 93):
        assert read_header([data])[0] == "error", data


def test_smaller_v2_limit():
    data = v2(block=inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(4, b"\0" * 600))
    assert outcome_every_way(data)[0] == "header"
    outcome = outcome_every_way(data, max_v2_header=536)
    assert outcome == ("error", "PROXY v2: a 631-byte header is over the 536-byte limit")


def test_header_repr():
    header = ProxyProtocolParser().feed(VALID["v1 tcp4"][0])
    assert isinstance(header, ProxyHeader)
    assert repr(header) == ("<ProxyHeader v1 PROXY TCP4/STREAM 192.168.0.1:56324 -> "
                            "192.168.0.11:443>")


def _random_split(data, cuts):
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


_PREFIXES = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN",
                             V2_SIGNATURE, V2_SIGNATURE + b"\x21", V2_SIGNATURE + b"\x21\x11",
                             V2_SIGNATURE + b"\x20\x31\x00\xd8", V2_SIGNATURE + b"\x21\x21"])


@settings(max_examples=1500, deadline=None)
@given(_PREFIXES, st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_only_ever_raise_the_typed_error(prefix, garbage, cuts):
    data = prefix + garbage
    whole = read_header([data])  # raises nothing but ProxyProtocolError (caught inside)
    assert read_header(_random_split(data, cuts)) == whole
    if whole[0] == "header":
        assert len(data) - len(whole[2]) <= V2_MAX_HEADER


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2]), st.ip_addresses(), st.ip_addresses(), st.integers(0, 65535),
       st.integers(0, 65535), st.binary(max_size=40))
def test_round_trip(version, src, dst, src_port, dst_port, after):
    if src.version != dst.version:
        dst = src
    if version == 1:
        family = "TCP4" if src.version == 4 else "TCP6"
        data = f"PROXY {family} {src} {dst} {src_port} {dst_port}\r\n".encode()
    else:
        data = v2(family=0x11 if src.version == 4 else 0x21,
                  block=inet(str(src), str(dst), src_port, dst_port))
    parser = ProxyProtocolParser()
    header = parser.feed(data + after)
    assert header.client == (str(src), str(src_port))
    assert (header.dst_addr, header.dst_port) == (str(dst), dst_port)
    assert parser.rest == after


# =============================================================================================
# Corners: caches at their bounds, hosts that are not quite IPv6 literals
# =============================================================================================

def test_repr_names_the_setting():
    assert repr(TrustedProxies.parse("127.0.0.1,unix")) == "TrustedProxies('127.0.0.1,unix')"


def test_peer_cache_is_bounded_and_still_right():
    proxies = TrustedProxies.parse("10.0.0.0/8")
    for i in range(3000):  # more distinct peers than the cache holds
        assert proxies.trusts(f"10.{i // 256}.{i % 256}.1")
        assert not proxies.trusts(f"11.{i // 256}.{i % 256}.1")


def test_a_long_chain_is_applied_without_being_cached():
    chain = ", ".join(["10.0.0.1"] * 100 + ["203.0.113.7"] + ["10.0.0.2"] * 10)
    for _ in range(2):
        changed, _ = forward([("X-Forwarded-For", chain)])
        assert changed["REMOTE_ADDR"] == "203.0.113.7"


@pytest.mark.parametrize("host", ["[zz::1]", "[::1", "[::1]x", "[1::2::3]", "[1::2::3]:80"])
def test_malformed_ipv6_forwarded_host_is_not_applied(host):
    changed, reasons = forward([("X-Forwarded-Host", host)])
    assert "HTTP_HOST" not in changed and reasons
