"""Forwarded headers (``X-Forwarded-*`` and RFC 7239 ``Forwarded``): who the client really
is when a proxy stands between it and us. Sans-IO, stdlib only.

``TrustedProxies`` says which peers may set them, ``apply_forwarded()`` rewrites one
request's environ from them. Bad values are never an error for the client: they are
skipped and reported as reasons the caller may log. (The PROXY protocol, the other way a
proxy names the client, is ``proxy.py``.)
"""

import ipaddress
import re
from urllib.parse import unquote_to_bytes

__all__ = ["TrustedProxies", "apply_forwarded", "FORWARDED_KEYS"]


# =============================================================================================
# Trusted peers
# =============================================================================================

# Peer addresses and forwarded chains whose verdict is remembered; a bound, since on a
# public port every client is a new peer, and only short chains are kept.
_MAX_CACHED = 1024
_MAX_CACHED_CHAIN = 256


class TrustedProxies:
    """The peers whose forwarded headers are believed: addresses, networks, ``*``, ``unix``.

    Built once from the setting; ``trusts(peer)`` is then asked per request (or once per
    connection), ``trusts_hop(ip)`` for each proxy named in a forwarded chain.

    ``*`` believes any direct peer but adds no hop: behind it, the client is the entry the
    peer itself added to the chain. Were every hop trusted too, the client would be the
    left-most entry, which is whatever the client chose to send.
    """

    __slots__ = ("everyone", "unix", "_ranges", "_cache", "_chains", "text")

    def __init__(self, networks=(), unix=False, everyone=False, text=""):
        self.everyone = everyone
        self.unix = unix
        # (version, first, last) as integers: a comparison per network, no object churn.
        self._ranges = tuple((net.version, int(net.network_address), int(net.broadcast_address))
                             for net in networks)
        self._cache = {}
        # Forwarded chains already read, with what they gave: a client on keep-alive (or
        # any client of the same proxy chain) sends the same value on every request.
        self._chains = {}
        self.text = text

    @classmethod
    def parse(cls, text):
        """Parse ``"127.0.0.1,::1,10.0.0.0/8,unix"`` (or a list of such entries).

        ``*`` trusts every direct peer, ``unix`` the peers of a unix socket. Raises
        ValueError with a one-line message naming the bad entry.
        """
        entries = text.split(",") if isinstance(text, str) else list(text)
        networks = []
        unix = everyone = False
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            if entry == "*":
                everyone = True
            elif entry.lower() == "unix":
                unix = True
            else:
                networks.append(_parse_network(entry))
        shown = text if isinstance(text, str) else ",".join(entries)
        return cls(networks, unix=unix, everyone=everyone, text=shown)

    def trusts(self, peer):
        """True if the direct peer at ``peer`` may set forwarded headers.

        ``peer`` is the text of an IP address; ``""`` (or None) is a unix-socket peer, as
        the connection shows those in REMOTE_ADDR. Anything else is not trusted.
        """
        if self.everyone:
            return True
        if not peer:
            return self.unix
        known = self._cache.get(peer)
        if known is not None:
            return known
        try:
            result = self.trusts_hop(ipaddress.ip_address(peer))
        except ValueError:
            result = False
        _remember(self._cache, peer, result)
        return result

    def trusts_hop(self, ip):
        """True if the ``ipaddress`` address ``ip`` is in a trusted address or network."""
        version, number = ip.version, int(ip)
        for net_version, first, last in self._ranges:
            if net_version == version and first <= number <= last:
                return True
        # RFC 4291 §2.5.5.2: an IPv4 client of a dual-stack listener, seen as ::ffff:a.b.c.d.
        mapped = ip.ipv4_mapped if version == 6 else None
        return mapped is not None and self.trusts_hop(mapped)

    def __repr__(self):
        return f"TrustedProxies({self.text!r})"


def _remember(cache, key, value):
    if len(cache) >= _MAX_CACHED:
        cache.clear()
    cache[key] = value


def _parse_network(entry):
    try:
        return ipaddress.ip_network(entry)
    except ValueError:
        pass
    try:
        fixed = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address, a network like 10.0.0.0/8, "
                         f"'*' or 'unix'") from None
    raise ValueError(f"{entry!r} has bits set after the prefix length "
                     f"(did you mean {fixed}?)")


# =============================================================================================
# Forwarded headers
# =============================================================================================

_XFF = "HTTP_X_FORWARDED_FOR"
_XPROTO = "HTTP_X_FORWARDED_PROTO"
_XSSL = "HTTP_X_FORWARDED_SSL"
_XSCHEME = "HTTP_X_FORWARDED_SCHEME"
_XHOST = "HTTP_X_FORWARDED_HOST"
_XPORT = "HTTP_X_FORWARDED_PORT"
_XPREFIX = "HTTP_X_FORWARDED_PREFIX"
_FORWARDED = "HTTP_FORWARDED"
# The X-Forwarded-* fields that say what Forwarded would say (Prefix has no Forwarded twin).
_X_GROUP = frozenset((_XFF, _XPROTO, _XSSL, _XSCHEME, _XHOST, _XPORT))
FORWARDED_KEYS = _X_GROUP | {_XPREFIX, _FORWARDED}

_DEFAULT_PORTS = {"http": "80", "https": "443"}
_NOTHING = ()

# RFC 9110 §5.6.2: token = 1*tchar.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string (RFC 9110
# §5.6.4: qdtext and quoted-pair). Whitespace is allowed around ";" as well as ",": it
# cannot change the meaning, and some senders put it there.
_PAIR = re.compile(
    r"[ \t]*([" + _TCHAR + r"]+)=([" + _TCHAR + r"]+|\"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]"
    r"|\\[\t \x21-\x7e\x80-\xff])*\")[ \t]*")
_OWS = re.compile(r"[ \t]*")
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
# RFC 7239 §6: obfnode / obfport = "_" 1*( ALPHA / DIGIT / "." / "_" / "-" ).
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._\-]+")
# RFC 7239 §6: node-port = port / obfport; port = 1*5DIGIT.
_NODE_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._\-]+")
# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [ ":" port ]; uri-host is an IP-literal or a
# reg-name of unreserved, pct-encoded and sub-delims ("," excepted: it separates list
# members). An IPv4 address is a reg-name too.
_HOST = re.compile(
    r"(\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+;=]|%[0-9A-Fa-f]{2})+)(?::([0-9]{1,5}))?")
_PORT = re.compile(r"[0-9]{1,5}")
# RFC 3986 §3.3: path-abempty = *( "/" segment ); segment = *pchar; pchar = unreserved /
# pct-encoded / sub-delims / ":" / "@".
_PREFIX = re.compile(r"(?:/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|%[0-9A-Fa-f]{2})*)+")
# Octets a decoded prefix may not hold: controls (RFC 3986 §2: never data in a URI
# component) and "\", which browsers read as "/" (a "/\host" prefix would redirect away).
_BAD_IN_PREFIX = re.compile(r"[\x00-\x1f\x7f\\]")


def apply_forwarded(environ, trusted):
    """Rewrite ``environ`` from the forwarded headers, if its direct peer is trusted.

    Returns a sequence of reasons (short strings, for a debug log): headers that were
    ignored and why. Never raises for header values. Runs on every request, so a request
    without any forwarded header costs one set test, and one from an untrusted peer is
    left untouched.

    From a trusted peer (``trusted.trusts(REMOTE_ADDR)``; ``""`` is a unix-socket peer):

    - ``REMOTE_ADDR``/``REMOTE_PORT`` become the client's. The chain is walked from the
      right (the entry our peer added) to the left, past entries that are themselves
      trusted proxies (``trusted.trusts_hop``: listed addresses and networks, never ``*``);
      the first other address is the client, so whatever a client wrote further left is
      never read. If every entry is a trusted proxy, the left-most is the client. A port
      given with the address becomes ``REMOTE_PORT``, else it is ``""``.
    - ``wsgi.url_scheme`` (``http``/``https`` only), ``HTTP_HOST``, ``SERVER_NAME`` and
      ``SERVER_PORT`` (the host's port, else ``X-Forwarded-Port``, else the scheme's).
    - ``SCRIPT_NAME`` gets ``X-Forwarded-Prefix`` put in front (``PATH_INFO`` is left
      as the proxy sent it: the proxy is expected to have stripped the prefix).
    - The peer's own address and port are kept in ``greenserve.peer_addr`` and
      ``greenserve.peer_port``.

    Precedence: ``X-Forwarded-*`` win. If any of ``X-Forwarded-For``, ``-Proto``, ``-Ssl``,
    ``-Scheme``, ``-Host`` or ``-Port`` is present, ``Forwarded`` is ignored as a whole.
    They are what nginx, Apache, cloud balancers and gunicorn/werkzeug deployments use, and
    a proxy that sets them usually passes a client's own ``Forwarded`` through untouched;
    believing that one would let the client pick its address. A proxy that speaks only
    ``Forwarded`` must therefore remove clients' ``X-Forwarded-*`` headers.

    With ``Forwarded``, the element found by the walk (the hop that met the client)
    supplies ``proto`` and ``host`` as well. A header that does not parse (RFC 7239 §4)
    is not applied at all: with quoted strings one cannot tell where a client's garbage
    ends. Two different values where one is expected (``X-Forwarded-Proto: http, https``,
    or ``-Proto`` disagreeing with ``-Ssl``) apply neither.
    """
    if environ.keys().isdisjoint(FORWARDED_KEYS):
        return _NOTHING
    peer = environ.get("REMOTE_ADDR", "")
    if not trusted.trusts(peer):
        return (f"forwarded headers from untrusted peer {peer or 'on the unix socket'} "
                f"ignored",)
    reasons = []
    get = environ.get
    environ["greenserve.peer_addr"] = peer
    environ["greenserve.peer_port"] = get("REMOTE_PORT", "")
    client = scheme = host = port = None
    if not environ.keys().isdisjoint(_X_GROUP):
        if _FORWARDED in environ:
            reasons.append("Forwarded ignored: X-Forwarded-* headers take precedence")
        if _XFF in environ:
            client = _cached(_client_from_x_forwarded_for, environ[_XFF], trusted, reasons)
        scheme = _scheme_from_x_forwarded(environ, reasons)
        if _XHOST in environ:
            host = _one_value(environ[_XHOST], "X-Forwarded-Host", reasons, _valid_host)
        if _XPORT in environ:
            port = _one_value(environ[_XPORT], "X-Forwarded-Port", reasons, _valid_port)
    elif _FORWARDED in environ:
        client, scheme, host = _cached(_from_forwarded, environ[_FORWARDED], trusted, reasons)

    if client is not None:
        environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = client
    if scheme is not None:
        environ["wsgi.url_scheme"] = scheme
    if scheme is not None or host is not None or port is not None:
        _apply_host(environ, host, port, reasons)
    if _XPREFIX in environ:
        prefix = _prefix(environ[_XPREFIX], reasons)
        if prefix:
            environ["SCRIPT_NAME"] = prefix + get("SCRIPT_NAME", "")
    return reasons


def _cached(read, value, trusted, reasons):
    """``read(value, trusted, reasons)``, remembered per TrustedProxies for short values."""
    key = (read, value)
    known = trusted._chains.get(key)
    if known is None:
        found = []
        known = (read(value, trusted, found), tuple(found))
        if len(value) <= _MAX_CACHED_CHAIN:
            _remember(trusted._chains, key, known)
    reasons.extend(known[1])
    return known[0]


# -- X-Forwarded-* -------------------------------------------------------------------------------

def _client_from_x_forwarded_for(value, trusted, reasons):
    """(addr, port) of the client in an X-Forwarded-For chain, or None."""
    found = None
    # X-Forwarded-For: a comma-separated list, one address appended per proxy (RFC 9110
    # §5.6.1 list rules: empty members are ignored). Walk from the right: see the docstring.
    for member in reversed(value.split(",")):
        member = member.strip(" \t")
        if not member:
            continue
        if member.lower() == "unknown":
            reasons.append("X-Forwarded-For not applied: the client's address is 'unknown'")
            return None
        parsed = _address_and_port(member)
        if parsed is None:
            reasons.append(f"X-Forwarded-For not applied: {_show(member)} is not an address")
            return None
        ip, port = parsed
        found = (str(ip), port)
        if not trusted.trusts_hop(ip):
            return found
    if found is None:
        reasons.append("X-Forwarded-For not applied: no address in it")
    return found


def _address_and_port(text):
    """(ipaddress, port text) for "1.2.3.4", "1.2.3.4:80", "2001:db8::1", "[2001:db8::1]:80"."""
    port = ""
    if text.startswith("["):
        # RFC 3986 §3.2.2: an IPv6 address with a port is written in brackets.
        host, close, rest = text[1:].partition("]")
        if not close:
            return None
        if rest:
            port = _valid_port(rest[1:]) if rest[0] == ":" else None
            if port is None:
                return None
        parse = ipaddress.IPv6Address
    elif text.count(":") == 1:
        host, port = text.split(":")
        port = _valid_port(port)
        if port is None:
            return None
        parse = ipaddress.IPv4Address
    else:
        host, parse = text, ipaddress.ip_address
    try:
        ip = parse(host)
    except ValueError:
        return None
    # Python accepts an IPv6 zone of any text but "%" ("fe80::1%<anything>"); no proxy
    # writes one (RFC 3986 §3.2.2 has no zone), and it would put that text in REMOTE_ADDR.
    return None if getattr(ip, "scope_id", None) is not None else (ip, port)


def _scheme_from_x_forwarded(environ, reasons):
    proto = environ.get(_XPROTO)
    if proto in _DEFAULT_PORTS and _XSCHEME not in environ and _XSSL not in environ:
        return proto  # the usual case: nginx's "X-Forwarded-Proto: $scheme" alone
    schemes = []
    if _XPROTO in environ:
        scheme = _one_value(environ[_XPROTO], "X-Forwarded-Proto", reasons, _valid_scheme)
        if scheme is not None:
            schemes.append(("X-Forwarded-Proto", scheme))
    if _XSCHEME in environ:
        scheme = _one_value(environ[_XSCHEME], "X-Forwarded-Scheme", reasons, _valid_scheme)
        if scheme is not None:
            schemes.append(("X-Forwarded-Scheme", scheme))
    if _XSSL in environ:
        ssl = _one_value(environ[_XSSL], "X-Forwarded-Ssl", reasons, _valid_ssl)
        if ssl is not None:
            schemes.append(("X-Forwarded-Ssl", ssl))
    if not schemes:
        return None
    if len({scheme for _, scheme in schemes}) > 1:
        said = ", ".join(f"{name} says {scheme}" for name, scheme in schemes)
        reasons.append(f"scheme not applied: {said}")
        return None
    return schemes[0][1]


def _one_value(value, name, reasons, check):
    """The single value of a field that proxies may have appended to; None if unusable.

    ``check(text)`` returns the normalised value or None when it is malformed.
    """
    if "," not in value:
        # The usual case: one proxy, one value.
        normal = check(value.strip(" \t"))
        if normal is None:
            reasons.append(f"{name} not applied: {_show(value)} is malformed")
        return normal
    members = [member.strip(" \t") for member in value.split(",")]
    members = [member for member in members if member]
    if not members:
        reasons.append(f"{name} not applied: empty")
        return None
    checked = []
    for member in members:
        normal = check(member)
        if normal is None:
            reasons.append(f"{name} not applied: {_show(member)} is malformed")
            return None
        checked.append(normal)
    # Host names and schemes are case-insensitive (RFC 3986 §3.1, §3.2.2).
    if len({normal.lower() for normal in checked}) > 1:
        reasons.append(f"{name} not applied: conflicting values {_show(value)}")
        return None
    return checked[0]


def _valid_scheme(text):
    # Only the two schemes a WSGI server can stand for (PEP 3333 wsgi.url_scheme).
    lowered = text.lower()
    return lowered if lowered in _DEFAULT_PORTS else None


def _valid_ssl(text):
    # X-Forwarded-Ssl: "on" means the client spoke TLS to the proxy, "off" that it did not.
    lowered = text.lower()
    if lowered == "on":
        return "https"
    if lowered == "off":
        return "http"
    return None


def _valid_port(text):
    # RFC 3986 §3.2.3: port = *DIGIT; one that TCP can carry (1-65535, RFC 793).
    if _PORT.fullmatch(text) is None or not 0 < int(text) < 65536:
        return None
    return str(int(text))


def _valid_host(text):
    # RFC 9110 §7.2: Host = uri-host [ ":" port ], with RFC 3986 §3.2.2 hosts.
    match = _HOST.fullmatch(text)
    if match is None:
        return None
    name, port = match.groups()
    if name.startswith("["):
        try:
            ipaddress.IPv6Address(name[1:-1])
        except ValueError:
            return None
    if port is not None and _valid_port(port) is None:
        return None
    return text


# -- Forwarded (RFC 7239) ------------------------------------------------------------------------

class _Malformed(ValueError):
    pass


def _from_forwarded(value, trusted, reasons):
    """(client, scheme, host) from a Forwarded header; None for each part not applied."""
    try:
        elements = _parse_forwarded(value)
    except _Malformed as exc:
        reasons.append(f"Forwarded not applied: {exc}")
        return None, None, None
    if not elements:
        reasons.append("Forwarded not applied: no element in it")
        return None, None, None
    chosen = None
    for element in reversed(elements):
        chosen = element
        node = element.get("for")
        # RFC 7239 §5.2: "for" names the node that made the request to the proxy that added
        # this element; a trusted proxy there means the element to its left is from it.
        if node is None or node[0] is None or not trusted.trusts_hop(node[0]):
            break
    client = None
    node = chosen.get("for")
    if node is not None:
        if node[0] is None:
            # RFC 7239 §6.2, §6.3: "unknown" or an obfuscated identifier hides the client.
            reasons.append(f"Forwarded for= not applied: the client is {_show(node[2])}")
        else:
            client = (str(node[0]), node[1])
    scheme = host = None
    proto = chosen.get("proto")
    if proto is not None:
        scheme = _valid_scheme(proto)
        if scheme is None:
            reasons.append(f"Forwarded proto= not applied: {_show(proto)}")
    if "host" in chosen:
        # RFC 7239 §5.3: the value is the Host header field the proxy received.
        host = _valid_host(chosen["host"])
        if host is None:
            reasons.append(f"Forwarded host= not applied: {_show(chosen['host'])} "
                           f"is not a valid Host")
    return client, scheme, host


def _parse_forwarded(value):
    """The non-empty elements of a Forwarded value, as dicts of lower-cased names.

    for= and by= become (ipaddress or None, port text, original text).
    """
    elements = []
    element = {}
    pos, end = 0, len(value)
    while True:
        match = _PAIR.match(value, pos)
        if match is not None:
            # RFC 7239 §4: parameter names are case-insensitive.
            name = match.group(1).lower()
            raw = match.group(2)
            # RFC 7239 §4: each parameter MUST NOT occur more than once per element.
            if name in element:
                raise _Malformed(f"{name}= given twice in one element")
            text = _QUOTED_PAIR.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
            if name in ("for", "by"):
                element[name] = _parse_node(text, name)
            else:
                element[name] = text
            pos = match.end()
        else:
            pos = _OWS.match(value, pos).end()
        if pos == end:
            break
        # RFC 7239 §4: pairs are separated by ";", elements by "," (RFC 9110 §5.6.1 list).
        char = value[pos]
        if char == ",":
            if element:
                elements.append(element)
                element = {}
        elif char != ";":
            raise _Malformed(f"unexpected {_show(value[pos:pos + 20])} at offset {pos}")
        pos += 1
    if element:
        elements.append(element)
    return elements


def _parse_node(text, name):
    """RFC 7239 §6: node = nodename [ ":" node-port ]."""
    port = ""
    if text.startswith("["):
        # RFC 7239 §6: an IPv6 nodename is "[" IPv6address "]".
        close = text.find("]")
        if close < 0:
            raise _Malformed(f"{name}={_show(text)} has no closing ']'")
        host, rest = text[1:close], text[close + 1:]
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            ip = None
        # RFC 7239 §6: "[" IPv6address "]", without a zone (Python accepts any text as one).
        if ip is None or ip.scope_id is not None:
            raise _Malformed(f"{name}={_show(text)} is not an IPv6 address")
    else:
        host, colon, rest = text.partition(":")
        rest = colon + rest
        ip = None
        # RFC 7239 §6: "unknown" and obfnode are the other nodenames.
        if host.lower() != "unknown" and _OBFUSCATED.fullmatch(host) is None:
            try:
                ip = ipaddress.IPv4Address(host)
            except ValueError:
                raise _Malformed(f"{name}={_show(text)} is not a node") from None
    if rest:
        if rest[0] != ":" or _NODE_PORT.fullmatch(rest[1:]) is None:
            raise _Malformed(f"{name}={_show(text)} has a bad port")
        if rest[1] != "_":
            port = _valid_port(rest[1:])
            if port is None:
                raise _Malformed(f"{name}={_show(text)} has a bad port")
        # else RFC 7239 §6.3: an obfuscated port tells nothing.
    return ip, port, text


# -- host, port, prefix --------------------------------------------------------------------------

def _apply_host(environ, host, port, reasons):
    """Set HTTP_HOST, SERVER_NAME and SERVER_PORT from a forwarded host and/or port."""
    default = _DEFAULT_PORTS.get(environ.get("wsgi.url_scheme"), "80")
    if host is not None:
        environ["HTTP_HOST"] = host
    current = environ.get("HTTP_HOST")
    if not current:
        environ["SERVER_PORT"] = port or default
        return
    name, host_port = _split_host(current)
    if port is not None:
        if host is not None and host_port:
            # The forwarded host names its port; a different X-Forwarded-Port contradicts it.
            if host_port != port:
                reasons.append(f"X-Forwarded-Port {port} not applied: the forwarded host "
                               f"says {host_port}")
        else:
            # The client's URL had this port; the default one is left out, as a browser
            # does in Host and Origin (a CSRF check compares them).
            host_port = "" if port == default else port
            environ["HTTP_HOST"] = name + (":" + host_port if host_port else "")
    environ["SERVER_NAME"] = name
    environ["SERVER_PORT"] = host_port or default


def _split_host(host):
    """("name", "port" or "") of a Host value; IPv6 literals keep their brackets."""
    if host.startswith("["):
        # Hosts here were validated, so a literal has its "]"; were one missing, the whole
        # text would be the name.
        close = host.find("]") + 1 or len(host)
        rest = host[close:]
        return host[:close], rest[1:] if rest.startswith(":") else ""
    name, _, port = host.partition(":")
    return name, port


def _prefix(value, reasons):
    """The SCRIPT_NAME prefix from X-Forwarded-Prefix, decoded; None if unusable."""
    raw = value.strip(" \t")
    # RFC 3986 §3.3: an absolute path, made of pchars and "/".
    if _PREFIX.fullmatch(raw) is None:
        reasons.append(f"X-Forwarded-Prefix not applied: {_show(raw)} is not a path")
        return None
    # PEP 3333: SCRIPT_NAME is decoded, as PATH_INFO is, bytes as latin-1.
    decoded = unquote_to_bytes(raw).decode("latin-1").rstrip("/")
    # RFC 3986 §5.2.4: "." and ".." segments would move the app elsewhere; an empty segment
    # would make "//host" (a network-path reference) of the prefix.
    if _BAD_IN_PREFIX.search(decoded) or any(
            segment in ("", ".", "..") for segment in decoded.split("/")[1:]):
        reasons.append(f"X-Forwarded-Prefix not applied: {_show(raw)} is not a plain path")
        return None
    return decoded


def _show(text, limit=60):
    """A header value for a reason, quoted and shortened."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")
