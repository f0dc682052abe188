"""greenserve's request parser against h11 over a seeded sample of mutated requests.

greenserve may refuse what h11 takes (stricter), never the reverse: every request greenserve
reads to its end, h11 must read the same way (method, target, version, headers, body,
trailers, keep-alive, 100-continue). A request greenserve accepts and h11 refuses or reads
differently is a parser bug, unless it is one of the RFC-permitted differences below.

RFC-permitted differences (greenserve takes them, h11 0.16 does not):

1. Empty lines before a request-line, at the start or between pipelined requests. RFC 9112
   §2.2: a server SHOULD ignore at least one; greenserve ignores up to MAX_EMPTY_LINES, h11
   refuses ("no request line received"). The h11 driver below skips them at the message
   boundaries h11 itself found.
2. HTTP/1.0 with "Connection: keep-alive". RFC 9112 §9.3 and Appendix C.2.2 let it persist;
   h11 closes every HTTP/1.0 connection. Comparison stops after such a request.
3. Empty list elements in Transfer-Encoding, and the list split over several lines
   (", chunked ,"; "Transfer-Encoding:" then "Transfer-Encoding: chunked"). RFC 9110 §5.6.1.2:
   a recipient MUST parse and ignore a reasonable number of empty list elements; §5.3: a list
   may be split across lines. h11 compares the whole value with "chunked".
4. Content-Length values that are the same number written differently ("05", "5, 005",
   25 digits of leading zeros). RFC 9110 §8.6: Content-Length = 1*DIGIT, and a list of the same
   decimal value may be replaced by that value. h11 compares the strings and caps them at 20
   digits.
5. Chunk sizes with more than 20 digits of leading zeros. RFC 9112 §7.1: chunk-size = 1*HEXDIG;
   greenserve bounds the significant digits instead (overflow is what must be prevented).
6. Whitespace around ";" and "=" in chunk extensions. RFC 9112 §7.1.1: chunk-ext =
   *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ); h11 wants ";" right after
   the size.
7. Trailer fields that cannot apply after the content (Content-Length, Transfer-Encoding, Host,
   ...): RFC 9110 §6.5.1 lets a recipient ignore them; greenserve drops them after checking
   the field-line syntax only, h11 validates their values as if they framed the message.

For 3-7 each failing sample is rewritten by the matching normalizer (greenserve must read the
rewrite exactly as it read the original, which proves the rewrite kept the meaning), and h11 must
then agree. What no normalizer explains is a finding.

Not differences but h11's presentation, ignored by the comparison: h11 drops repeated
Content-Length lines and rewrites its value, lowercases Transfer-Encoding values, and keeps the
trailer fields greenserve drops. Bodies are compared, so framing is still checked.
"""

import random
import re

import h11
import pytest

import test_parser
from greenserve.protocol.lines import forget_lines
from greenserve.protocol.parser import _NOT_TRAILERS, MAX_EMPTY_LINES
from test_parser import CASES, VALID, _mutate, run

SAMPLES = 4000

# Whole field lines a careless or hostile client sends, inserted between head lines.
_FIELD_LINES = [
    b"Transfer-Encoding: chunked", b"Transfer-Encoding: Chunked", b"Transfer-Encoding: ,chunked",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, identity",
    b"Transfer-Encoding:", b"Transfer-Encoding : chunked", b"Transfer-Encoding: \x0bchunked",
    b"Transfer-Encoding: chunked\x00", b" chunked", b"\tchunked", b"Content-Length: 0",
    b"Content-Length: 5", b"Content-Length: 05", b"Content-Length: 5, 5", b"Content-Length: 5,6",
    b"Content-Length: -1", b"Content-Length: +5", b"Content-Length: 5 5", b"Content-Length:",
    b"Content-Length: 0x5", b"Content-Length: 1e1", b"Host: h", b"Host: a b", b"Host: h:80",
    b"Connection: close", b"Connection: keep-alive", b"Connection: Upgrade", b"Upgrade: h2c",
    b"Expect: 100-continue", b"Expect: 100-Continue, x", b"Content-Type: a", b"Authorization: b",
    b"X-A: \x01", b"X-A: \x7f", b"X-A: \xff", b"X-A:\tv\t", b"X-A: v\r", b"X-A", b": v",
    b"X A: v", b"X-A:: v", b"Trailer: X-T", b"TE: trailers",
]


def mutated_request(rng):
    """A corpus request (mostly a valid one, sometimes two pipelined) with a few edits."""
    data = rng.choice(VALID if rng.random() < 0.75 else CASES).data
    if rng.random() < 0.2:
        data += rng.choice(VALID).data
    edit = rng.random()
    if edit < 0.6:
        lines = data.split(b"\r\n")
        head_lines = lines.index(b"") if b"" in lines else len(lines)
        for _ in range(rng.randint(1, 2)):
            lines.insert(rng.randint(1, max(1, head_lines)), rng.choice(_FIELD_LINES))
        data = b"\r\n".join(lines)
    if edit > 0.4:
        data = _mutate(rng, data)
    return data


# -- the two parsers, read to comparable records ----------------------------------------------

def _project(method, target, version, headers, body, trailers, keep_alive, expect_continue):
    """The part of a request both parsers must agree on."""
    return {"method": method, "target": target, "version": version,
            "headers": [(name, value) for name, value in headers
                        if name.lower() not in (b"content-length", b"transfer-encoding")],
            "body": body,
            "trailers": [(name, value) for name, value in trailers or ()
                         if name.lower() not in _NOT_TRAILERS],
            "keep_alive": keep_alive, "expect_continue": expect_continue}


def greenserve_requests(data):
    """Requests greenserve reads to their end (with default limits), and how it stopped."""
    finished = []
    _, outcome = run(data, [data], finished=finished)
    return [_project(r["method"], r["target"], r["version"], r["headers"], r["body"],
                     r["trailers"], r["keep_alive"], r["expect_continue"])
            for r in finished], outcome


def h11_requests(data):
    """Requests h11 reads to their end, and why it stopped (an error's text or a state).

    Each request gets a fresh h11 connection fed what the previous one left over, so empty
    lines between requests can be skipped as greenserve does (difference 1).
    """
    records = []
    rest = data
    while True:
        for _ in range(MAX_EMPTY_LINES):
            if rest.startswith(b"\r\n"):
                rest = rest[2:]
        if not rest:
            return records, "idle"
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        conn.receive_data(rest)
        record = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                return records, f"error {exc.error_status_hint}: {exc}"
            if event is h11.NEED_DATA:
                return records, "pending"
            if isinstance(event, h11.Request):
                record = {"method": event.method, "target": event.target,
                          "version": 0 if event.http_version == b"1.0" else 1,
                          "headers": list(event.headers.raw_items()), "body": b"",
                          "expect_continue": conn.they_are_waiting_for_100_continue}
            elif isinstance(event, h11.Data):
                record["body"] += event.data
            else:
                assert isinstance(event, h11.EndOfMessage), event
                # A 404 never switches protocols (CONNECT, Upgrade), so the cycle ends here.
                conn.send(h11.Response(status_code=404, headers=[(b"content-length", b"0")]))
                conn.send(h11.EndOfMessage())
                keep_alive = conn.our_state is h11.DONE
                records.append(_project(
                    record["method"], record["target"], record["version"], record["headers"],
                    record["body"], event.headers.raw_items(), keep_alive,
                    record["expect_continue"]))
                if not keep_alive:
                    return records, "closed"
                rest = conn.trailing_data[0]
                break


def disagreement(data):
    """None if h11 reads every request greenserve accepts the same way; else what differs."""
    ours, outcome = greenserve_requests(data)
    theirs, why = h11_requests(data)
    for index, record in enumerate(ours):
        if index >= len(theirs):
            return f"request {index}: greenserve accepts, h11 stops with {why}"
        other = dict(theirs[index])
        if record["version"] == 0 and record["keep_alive"] and not other["keep_alive"]:
            # Difference 2: h11 closes every HTTP/1.0 connection; compare up to here.
            other["keep_alive"] = True
            return None if record == other else f"request {index}: {record} != {other}"
        if record != other:
            return f"request {index}: {record} != {other}"
        if not record["keep_alive"]:
            return None
    return None


# -- normalizers for the RFC-permitted differences 3-7 ----------------------------------------

_TE_LINE = re.compile(rb"(?im)^(Transfer-Encoding:)([ \t,]*)(chunked)?([ \t,]*)\r\n")
_CL_LINE = re.compile(rb"(?im)^(Content-Length:)[ \t]*([0-9][0-9 \t,]*?)[ \t]*\r\n")
_CHUNK_LINE = re.compile(rb"(?m)^([0-9A-Fa-f]+)((?:[ \t]*;[^\r\n]*)?)\r\n")
_TRAILERS = re.compile(rb"(?m)^0+((?:;[^\r\n]*)?)\r\n((?:[^\r\n]+\r\n)*)\r\n")


def _te_list(match):
    """Difference 3: "Transfer-Encoding: , chunked ," -> "chunked"; a line of commas goes."""
    name, before, coding, after = match.groups()
    if coding is None:
        return b""
    if before.strip(b" \t") or after.strip(b" \t"):
        return name + b" " + coding + b"\r\n"
    return match.group()


def _cl_value(match):
    """Difference 4: a list of one decimal value written differently -> that value."""
    name, values = match.groups()
    if re.fullmatch(rb"[0-9]+(?:[ \t]*,[ \t]*[0-9]+)*", values):
        numbers = {int(item) for item in values.split(b",")}
        if len(numbers) == 1:
            return name + b" %d\r\n" % numbers.pop()
    return match.group()


def _chunk_line(match):
    """Differences 5 and 6: at most 20 size digits, no whitespace in the extensions.

    Lines that need neither are left alone: chunk data can look like a chunk line too.
    """
    size, extensions = match.groups()
    if len(size) > 20:
        size = size.lstrip(b"0").rjust(1, b"0")
    extensions = re.sub(rb"[ \t]*([;=])[ \t]*", rb"\1", extensions)
    return size + extensions + b"\r\n"


def _trailer_section(match):
    """Difference 7: drop the trailer fields greenserve ignores."""
    kept = [line for line in match.group(2).split(b"\r\n")[:-1]
            if line.partition(b":")[0].lower() not in _NOT_TRAILERS]
    return b"0" + match.group(1) + b"\r\n" + b"".join(line + b"\r\n" for line in kept) + b"\r\n"


NORMALIZERS = {
    "transfer-encoding list": lambda data: _TE_LINE.sub(_te_list, data),
    "content-length spelling": lambda data: _CL_LINE.sub(_cl_value, data),
    "chunk line": lambda data: _CHUNK_LINE.sub(_chunk_line, data),
    "dropped trailers": lambda data: _TRAILERS.sub(_trailer_section, data),
}


def _same_for_greenserve(data, rewritten):
    """greenserve reads both the same way (Content-Length / Transfer-Encoding spelling aside)."""
    return greenserve_requests(data) == greenserve_requests(rewritten)


def explain(data):
    """The normalizers that make h11 agree, or None when the difference is unexplained."""
    rewritten, used = data, []
    for name, normalize in NORMALIZERS.items():
        candidate = normalize(rewritten)
        if candidate != rewritten and _same_for_greenserve(rewritten, candidate):
            rewritten = candidate
            used.append(name)
    if used and disagreement(rewritten) is None:
        return used
    return None


# -- tests -------------------------------------------------------------------------------------

@pytest.fixture(params=["cold", "warm"])
def memo(request, monkeypatch):
    """greenserve's memos of checked lines emptied before each parse, or warmed with the
    whole corpus and kept from one sample to the next."""
    monkeypatch.setattr(test_parser, "MEMO", request.param)
    forget_lines()
    if request.param == "warm":
        for case in CASES:
            run(case.data, [case.data], case.limits)
    return request.param


def test_greenserve_is_never_more_lenient_than_h11(memo):
    rng = random.Random(9110)
    findings, both_accept = [], 0
    for _ in range(SAMPLES):
        data = mutated_request(rng)
        problem = disagreement(data)
        if problem is None:
            both_accept += bool(greenserve_requests(data)[0])
            continue
        if explain(data) is None:
            findings.append((data, problem))
    assert not findings, "\n".join(f"{data!r}\n    {problem}" for data, problem in findings[:5])
    # The sample must exercise the comparison, not only error paths.
    assert both_accept > SAMPLES // 10, both_accept


@pytest.mark.parametrize("data, normalizer", [
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: , chunked ,\r\n\r\n1\r\na\r\n0\r\n\r\n",
     "transfer-encoding list"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"1\r\na\r\n0\r\n\r\n", "transfer-encoding list"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 01\r\n\r\na", "content-length spelling"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"0" * 24 + b"1\r\n\r\na",
     "content-length spelling"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 24
     + b"1\r\na\r\n0\r\n\r\n", "chunk line"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1 ; a = b\r\na\r\n"
     b"0\r\n\r\n", "chunk line"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
     b"Content-Length: x\r\nX-T: 1\r\n\r\n", "dropped trailers"),
])
def test_each_permitted_difference_is_real_and_explained(data, normalizer):
    # greenserve reads it, h11 refuses it, and only the named normalizer reconciles them.
    assert greenserve_requests(data)[1] == ("idle",)
    assert disagreement(data) is not None
    rewritten = NORMALIZERS[normalizer](data)
    assert rewritten != data and _same_for_greenserve(data, rewritten)
    assert disagreement(rewritten) is None
    assert explain(data) == [normalizer]


def test_empty_lines_and_http10_keep_alive_are_handled_by_the_driver():
    # Difference 1: h11 itself refuses empty lines before a request-line.
    data = b"\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    with pytest.raises(h11.RemoteProtocolError):
        conn.next_event()
    assert disagreement(data) is None
    # Difference 2: a kept-alive HTTP/1.0 request; what follows is not compared.
    data = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n"
    assert [r["target"] for r in greenserve_requests(data)[0]] == [b"/", b"/2"]
    assert [r["keep_alive"] for r in h11_requests(data)[0]] == [False]
    assert disagreement(data) is None


def test_normalizers_keep_the_meaning_of_every_valid_case():
    canonical = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" \
        b"a;x=1\r\nhello, you\r\n0\r\nX-T: 1\r\n\r\n"
    assert all(normalize(canonical) == canonical for normalize in NORMALIZERS.values())
    rewritten = 0
    for case in CASES:
        for normalize in NORMALIZERS.values():
            if case.error is None and not case.pending and normalize(case.data) != case.data:
                rewritten += 1
                assert _same_for_greenserve(case.data, normalize(case.data)), case.name
    assert rewritten >= 8
