"""One line of a request head (RFC 9112 §3, §5): its grammar, what it parses into, and a memo
of lines already checked.

Stateless: these functions see one complete (or, for the ``check_unfinished`` ones, partly
received) line and either return what it means or raise the ``ProtocolError`` it deserves.
The incremental state machine that finds the lines and applies the rules about a request as
a whole is ``parser.py``.
"""

import re

from ..errors import BadRequest, HeaderTooLarge, NotImplementedByServer, URITooLong, \
    VersionNotSupported

# RFC 9110 §5.6.2: token = 1*tchar.
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = rb"[" + _TCHAR + rb"]+"
# RFC 9110 §5.6.4: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE.
QUOTED = rb"\"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*\""
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, single spaces, and
# §2.3: HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive. Targets are visible ASCII
# but "#": RFC 9112 §3.2: a fragment is never part of a request-target.
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([!\"$-~]+) HTTP/([0-9])\.([0-9])")
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS; field-value is visible
# characters, obs-text, SP and HTAB (RFC 9110 §5.5), so CR, LF, NUL and other CTLs fail here.
# The OWS is stripped afterwards: matching it here too ("[ \t]*" before a class that also
# holds SP) backtracks quadratically, 0.3 s for one 8 KiB line of spaces and a NUL.
FIELD_LINE = re.compile(rb"(" + TOKEN + rb"):([\t\x20-\x7e\x80-\xff]*)")
_FIELD_NAME = re.compile(TOKEN)
# Octets that can never occur in a request-line (RFC 9112 §3: tokens, a URI and SPs only) or
# in a field line / chunk line (RFC 9110 §5.5: no CTL but HTAB; CR and LF only as CRLF).
NOT_IN_REQUEST_LINE = re.compile(rb"[^\x20-\x7e]")
NOT_IN_FIELD_LINE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 §3.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ], where uri-host is an
# IP-literal or a reg-name of unreserved, pct-encoded and sub-delims (IPv4 is a reg-name too).
# "%" is checked separately with _BAD_PERCENT (rare; a per-octet alternation is 2x slower).
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_ABSOLUTE_FORM = re.compile(rb"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?#]*)((?:/[^?#]*)?)(?:\?([^#]*))?")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")

# Real traffic repeats its request-lines and most header lines (Host, User-Agent, Accept...)
# request after request. A line that passed every check of its own is remembered with what
# was parsed from it, so the next copy skips the regexes. Only checks that depend on nothing
# but the line's bytes are skipped: the limits (line length, field count, head size) and
# every rule about the request as a whole run each time, so every parser of the process can
# share the memos whatever its Limits. A line that failed is never stored; entries are
# immutable tuples of bytes.
# Bounded: a client sending only new lines costs one clear per MEMO_ENTRIES of them, and
# the memos never hold more than about 2 MB (a few KB for real traffic).
MEMO_ENTRIES = 512
MEMO_LINE = 512  # longer lines (big cookies, tokens) are rarely repeated and cost memory
REQUEST_LINES = {}  # request-line -> (method, target, version, path, query, authority)
FIELD_LINES = {}  # field line -> ((name, stripped value), lowercase name if noted, valid Host)


def remember_request_line(line, parsed):
    """Keep a request-line that passed every check of its own, with what it parsed into."""
    if len(line) <= MEMO_LINE:
        if len(REQUEST_LINES) >= MEMO_ENTRIES:
            REQUEST_LINES.clear()
        REQUEST_LINES[line] = parsed


def forget_lines():
    """Empty the memos of request-lines and header lines (tests compare warm and cold)."""
    REQUEST_LINES.clear()
    FIELD_LINES.clear()


# Request fields RFC 9110 defines as one value, not a list (§5.6.1): a repeated line would
# reach the application joined into one value that neither sender nor grammar allows.
# Host (RFC 9112 §3.2) and Content-Length (RFC 9110 §8.6 allows identical repeats) are
# handled with the framing fields; Cookie is joined with "; " (RFC 6265 §5.4); fields that
# only responses carry (ETag, Location, Retry-After, ...) mean nothing to an application here.
SINGLETON_FIELDS = (
    b"authorization",        # §11.6.2 credentials
    b"proxy-authorization",  # §11.7.2 credentials
    b"content-type",         # §8.3 media-type
    b"content-location",     # §8.7 absolute-URI / partial-URI
    b"content-range",        # §14.4 range-unit SP range-resp
    b"date",                 # §6.6.1 HTTP-date
    b"from",                 # §10.1.2 mailbox
    b"if-modified-since",    # §13.1.3 HTTP-date
    b"if-unmodified-since",  # §13.1.4 HTTP-date
    b"if-range",             # §13.1.5 entity-tag / HTTP-date
    b"max-forwards",         # §7.6.2 1*DIGIT
    b"range",                # §14.2 ranges-specifier
    b"referer",              # §10.1.3 absolute-URI / partial-URI
    b"user-agent",           # §10.1.5 product *( RWS ( product / comment ) )
)
# A bit for each, so _parse_head finds a repeat with a mask, not a set built per request.
SINGLETON_BITS = {name: 1 << bit for bit, name in enumerate(SINGLETON_FIELDS)}
# The fields _parse_head looks at: framing, connection control, and the singletons.
_NOTED_FIELDS = frozenset((b"host", b"content-length", b"transfer-encoding", b"connection",
                           b"expect", *SINGLETON_FIELDS))


def parse_request_line(line):
    """(method, target, version) of a request-line already within the length limit."""
    match = REQUEST_LINE.fullmatch(line)
    if match is None:
        if re.fullmatch(rb"\S+ \S*#\S* HTTP/[0-9]\.[0-9]", line):
            raise BadRequest(f"fragment in request target {quote(line)}")
        raise BadRequest(f"malformed request line {quote(line)}")
    method, target, major, minor = match.groups()
    # RFC 9110 §2.5, §15.6.6: only major version 1 is spoken here (505 otherwise), and a
    # higher minor version is handled as the highest one implemented, 1.1.
    if major != b"1":
        raise VersionNotSupported(f"HTTP/{major.decode()}.{minor.decode()} is not supported")
    return method, target, 0 if minor == b"0" else 1


def parse_target(method, target):
    """(path, query, authority or None) of a request-target (RFC 9112 §3.2)."""
    authority = None
    # RFC 9112 §3.2.1: origin-form, the usual case. RFC 9110 §9.3.6: CONNECT asks for a
    # tunnel, which this origin server does not offer (RFC 9110 §9.1: 501), whatever target.
    if target[0] == 47 and method != b"CONNECT":  # "/"
        path, _, query = target.partition(b"?")
    elif method == b"CONNECT":
        raise NotImplementedByServer("CONNECT is not supported")
    elif target == b"*":
        # RFC 9112 §3.2.4: asterisk-form is only used for a server-wide OPTIONS.
        if method != b"OPTIONS":
            raise BadRequest("asterisk-form target is only allowed with OPTIONS")
        path, query = b"*", b""
    else:
        # RFC 9112 §3.2.2: a server MUST accept absolute-form and then MUST ignore Host in
        # favour of the target's authority; only http(s) URIs name this origin (RFC 9110 §4.2).
        match = _ABSOLUTE_FORM.fullmatch(target)
        if match is None or match.group(1).lower() not in (b"http", b"https"):
            raise BadRequest(f"invalid request target {quote(target)}")
        authority = match.group(2)
        # RFC 9110 §4.2.1: an empty host is invalid; §4.2.4: userinfo is an error.
        if not authority or authority[0] == 58 or _HOST.fullmatch(authority) is None \
                or b"%" in authority and _BAD_PERCENT.search(authority):
            raise BadRequest(f"invalid authority in request target {quote(target)}")
        path = match.group(3) or b"/"
        query = match.group(4) or b""
    # RFC 3986 §2.1: "%" must start a percent-encoding, or the decoded path is ambiguous.
    if b"%" in target and _BAD_PERCENT.search(target):
        raise BadRequest(f"invalid percent-encoding in {quote(target)}")
    return path, query, authority


def parse_field_line(line):
    """((name, value), lowercase name if _parse_head notes the field else None, whether it
    is a valid Host) of a complete header line within the size limit; remembered for the next
    head that has it."""
    # RFC 9112 §5: field-line = field-name ":" OWS field-value OWS (the value's CTLs fail).
    match = FIELD_LINE.fullmatch(line)
    if match is None:
        raise BadRequest(diagnose_field_line(line))
    name, value = match.groups()
    value = value.strip(b" \t")
    lname = name.lower()
    if lname not in _NOTED_FIELDS:
        field = ((name, value), None, False)
    elif lname != b"host":
        field = ((name, value), lname, False)
    else:
        # RFC 9112 §3.2: the Host value is checked once the head is complete (after the
        # count of Host lines), so its verdict travels with the line; only good ones are kept.
        valid = _HOST.fullmatch(value) is not None \
            and not (b"%" in value and _BAD_PERCENT.search(value))
        field = ((name, value), lname, valid)
        if not valid:
            return field
    if len(line) <= MEMO_LINE:
        if len(FIELD_LINES) >= MEMO_ENTRIES:
            FIELD_LINES.clear()
        FIELD_LINES[line] = field
    return field


def check_request_line(line, limit):
    """Every check of a complete request-line, in the order a byte-wise reader meets them."""
    # RFC 9112 §3: tokens, a URI and single SPs only; longer than the limit gets 414.
    bad = NOT_IN_REQUEST_LINE.search(line, 0, limit)
    if bad:
        raise BadRequest(forbidden(bad, "request line"))
    if len(line) > limit:
        raise URITooLong(f"request line over {limit} bytes")
    parse_request_line(line)


def check_field_line(line, index, limits, what="header"):
    """Every check of complete field line number ``index``, in byte order."""
    # RFC 6585 §5: too many fields get 431, whatever the line holds.
    if index > limits.fields:
        raise HeaderTooLarge(f"more than {limits.fields} {what} fields")
    # RFC 9110 §5.5: no CTL but HTAB, CR or LF only as the line end; then the size, the syntax.
    bad = NOT_IN_FIELD_LINE.search(line, 0, limits.field_size)
    if bad:
        raise BadRequest(forbidden(bad, f"{what} line"))
    if len(line) > limits.field_size:
        raise HeaderTooLarge(f"{what} line over {limits.field_size} bytes")
    if FIELD_LINE.fullmatch(line) is None:
        raise BadRequest(diagnose_field_line(line))


def check_unfinished_field(buf, start, clean, end, index, limits, what="header"):
    """Checks of field line ``index`` received up to ``end`` (its octets before ``clean``
    were found clean already)."""
    # RFC 6585 §5 and RFC 9110 §5.5, as for a complete line; nothing after this can fix them.
    if index > limits.fields:
        raise HeaderTooLarge(f"more than {limits.fields} {what} fields")
    bad = NOT_IN_FIELD_LINE.search(buf, clean, min(end, start + limits.field_size))
    if bad:
        raise BadRequest(forbidden(bad, f"{what} line"))
    if end - start > limits.field_size:
        raise HeaderTooLarge(f"{what} line over {limits.field_size} bytes")


def forbidden(match, where):
    octet = match.group()
    name = {b"\n": "bare LF", b"\r": "bare CR", b"\0": "NUL", b"\t": "HTAB"}.get(octet)
    # RFC 9112 §2.2: lines end with CRLF only; RFC 9110 §5.5: no CTLs inside.
    return f"{name or 'invalid octet ' + repr(octet)[1:]} in {where}"


def diagnose_field_line(line):
    """Explain why a field line failed to parse (the cold path, so it can take its time)."""
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: obs-fold is refused with 400 outside message/http.
        return f"obsolete line folding in {quote(line)}"
    name, colon, value = line.partition(b":")
    if not colon:
        return f"header line without a colon {quote(line)}"
    if name != name.rstrip(b" \t"):
        # RFC 9112 §5.1: whitespace between field name and colon MUST be rejected (400).
        return f"whitespace before the colon in {quote(line)}"
    if not _FIELD_NAME.fullmatch(name):
        return f"invalid header name {quote(name)}"
    # RFC 9110 §5.5: CR, LF and NUL (and other controls) are invalid in field values.
    return f"invalid character in the value of {quote(name)}"


def quote(data, limit=60):
    """Show the offending bytes in an error message, shortened."""
    text = repr(bytes(data[:limit]))[1:]
    return text + ("..." if len(data) > limit else "")
