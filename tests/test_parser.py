"""The request parser against the corpus in tests/corpus, under every way of splitting the bytes.

The parser is sans-IO: whatever the split of the input into received pieces, it must produce the
same requests, headers, bodies and trailers, or raise the same error status, as if everything had
arrived at once. Errors stay raised: after one the connection is closed and no later byte is
ever parsed as a request.
"""

import random
import sys
import time

import pytest

from corpus_format import Case, CorpusError, load_corpus
from greenserve.config import Config
from greenserve.errors import ProtocolError
from greenserve.protocol import lines
from greenserve.protocol import writer
from greenserve.protocol.lines import forget_lines
from greenserve.protocol.parser import MAX_CHUNK_LINE, Limits, RequestParser

CASES = load_corpus()
VALID = [case for case in CASES if case.error is None and not case.pending]
INVALID = [case for case in CASES if case.error is not None]

# The parser remembers the request-lines and header lines that passed their checks. "warm":
# run() starts with whatever earlier runs left there (a server's steady state); "cold": run()
# empties them first. Tests switch it to run the same checks both ways.
MEMO = "warm"


# -- driver -------------------------------------------------------------------------------------

def _record(request):
    return {"method": request.method, "target": request.target, "version": request.version,
            "path": request.path, "query": request.query, "host": request.host,
            "keep_alive": request.keep_alive,
            "framing": "chunked" if request.chunked else f"length {request.content_length}",
            "expect_continue": request.expect_continue, "body": b"",
            "headers": list(request.headers), "trailers": [] if request.chunked else None}


def run(data, pieces, limits=None, sizes=(65536,), finished=None, errors=None):
    """Feed ``pieces`` (which join to ``data``) and read every request and body to the end.

    ``sizes`` cycles through the ``max_bytes`` passed to ``read_body``. Returns the list of
    request records and the outcome: ``("error", status)``, ``("pending",)`` or ``("idle",)``.
    Records whose body was read to its end are also appended to ``finished`` if given, and
    the error raised to ``errors``.
    """
    assert b"".join(pieces) == data
    if MEMO == "cold":
        forget_lines()
    parser = RequestParser(Limits(**(limits or {})))
    records = []
    current = None
    calls = 0
    for piece in pieces:
        parser.feed(piece)
        try:
            while True:
                if current is None:
                    request = parser.next_request()
                    if request is None:
                        break
                    assert parser.request is request
                    current = _record(request)
                    records.append(current)
                    continue
                size = sizes[calls % len(sizes)]
                calls += 1
                body = parser.read_body(size)
                if body is None:
                    assert not parser.body_done
                    break
                assert isinstance(body, bytes) and len(body) <= size
                if body:
                    current["body"] += body
                    continue
                assert parser.body_done
                assert parser.read_body(size) == b""  # and stays complete
                if parser.request.chunked:
                    current["trailers"] = list(parser.request.trailers)
                else:
                    assert parser.request.trailers is None
                if finished is not None:
                    finished.append(current)
                current = None
        except ProtocolError as exc:
            _assert_stays_failed(parser, exc.status)
            if errors is not None:
                errors.append(exc)
            return records, ("error", exc.status)
    if current is None and parser.buffered == 0:
        return records, ("idle",)
    return records, ("pending",)


def _assert_stays_failed(parser, status):
    """After an error the parser refuses everything, even a perfectly good request."""
    parser.feed(b"GET /after-error HTTP/1.1\r\nHost: example.com\r\n\r\n")
    for call in (parser.next_request, parser.read_body):
        with pytest.raises(ProtocolError) as info:
            call()
        assert info.value.status == status


def expected(case):
    if case.error is not None:
        outcome = ("error", case.error)
    else:
        outcome = ("pending",) if case.pending else ("idle",)
    return case.requests, outcome


# -- split strategies ---------------------------------------------------------------------------

def split_whole(data):
    return [data]


def split_lines(data):
    pieces = data.split(b"\n")
    return [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def split_bytes(data):
    return [data[i:i + 1] for i in range(len(data))]


def split_random(data, seed):
    rng = random.Random(seed)
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, max(1, len(data) // 4))
        pieces.append(data[pos:pos + size])
        pos += size
    return pieces


STRATEGIES = {
    "whole": (split_whole, (65536,)),
    "lines": (split_lines, (65536,)),
    "bytes": (split_bytes, (1, 65536)),
}
for _seed in range(5):
    STRATEGIES[f"random{_seed}"] = (lambda data, seed=_seed: split_random(data, seed),
                                    (1, 3, 7, 65536)[_seed % 4:] + (2,))


# -- the corpus ---------------------------------------------------------------------------------

def test_corpus_is_big_and_cites_the_rfc():
    assert len(CASES) >= 120
    assert len(VALID) >= 50 and len(INVALID) >= 60
    for case in CASES:
        assert any("RFC" in line for line in case.rfc), case.name


@pytest.fixture(params=["cold", "warm"])
def memo(request, monkeypatch):
    """Run the test with the line memos emptied before each run(), or kept."""
    monkeypatch.setattr(sys.modules[__name__], "MEMO", request.param)
    forget_lines()
    return request.param


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus(case, strategy, memo):
    split, sizes = STRATEGIES[strategy]
    if memo == "warm":
        # Its own lines seen before, as when a client sends the same request again.
        run(case.data, [case.data], case.limits)
    assert run(case.data, split(case.data), case.limits, sizes) == expected(case)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_corpus_every_two_piece_split(case):
    data = case.data
    offsets = range(1, len(data))
    if len(data) > 1500:
        offsets = random.Random(len(data)).sample(offsets, 300)
    want = expected(case)
    for offset in offsets:
        assert run(data, [data[:offset], data[offset:]], case.limits) == want, offset


@pytest.mark.parametrize("case", INVALID, ids=[case.name for case in INVALID])
def test_error_is_final_whatever_follows(case):
    # An error is only raised once it is certain, so bytes arriving after it never change it,
    # and the good request after it is never parsed.
    data = case.data + b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n"
    for pieces in ([data], split_bytes(data)):
        assert run(data, pieces, case.limits) == expected(case)


def test_pipelined_valid_requests_parse_in_order():
    plain = [case for case in VALID if not case.limits]
    rng = random.Random(1)
    for _ in range(40):
        chosen = [rng.choice(plain) for _ in range(rng.randint(2, 6))]
        data = b"".join(case.data for case in chosen)
        want = ([request for case in chosen for request in case.requests], ("idle",))
        for pieces in (split_whole(data), split_random(data, rng.random())):
            assert run(data, pieces) == want, [case.name for case in chosen]


def test_request_after_chunked_body():
    data = (b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    for split, sizes in STRATEGIES.values():
        records, outcome = run(data, split(data), sizes=sizes)
        assert outcome == ("idle",)
        assert [(r["target"], r["body"], r["trailers"]) for r in records] == [
            (b"/a", b"abc", [(b"X-T", b"1")]), (b"/b", b"", None)]


# -- limits the corpus cannot express compactly -------------------------------------------------

@pytest.mark.parametrize("extra, outcome", [(0, ("idle",)), (1, ("error", 414))])
def test_default_request_line_limit(extra, outcome):
    head = b"GET /" + b"a" * (8192 - 14 + extra) + b" HTTP/1.1"
    assert len(head) == 8192 + extra
    data = head + b"\r\nHost: h\r\n\r\n"
    for pieces in ([data], split_random(data, 3), [data[:8192], data[8192:]]):
        assert run(data, pieces)[1] == outcome


@pytest.mark.parametrize("extra, outcome", [(0, ("idle",)), (1, ("error", 400))])
def test_chunk_line_limit(extra, outcome):
    line = b"1;" + b"e" * (MAX_CHUNK_LINE - 2 + extra)
    data = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + line + \
        b"\r\nx\r\n0\r\n\r\n"
    for pieces in ([data], split_random(data, 4), split_lines(data)):
        assert run(data, pieces)[1] == outcome


def test_default_field_count_limit():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(99))
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n"
    assert run(data, [data])[1] == ("idle",)
    data = data[:-2] + b"X-Last: v\r\n\r\n"
    assert run(data, [data])[1] == ("error", 431)
    assert run(data, split_lines(data))[1] == ("error", 431)


def test_next_request_refuses_while_a_body_is_unread():
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab")
    assert parser.next_request().content_length == 3
    with pytest.raises(RuntimeError):
        parser.next_request()
    assert parser.read_body() == b"ab"
    assert parser.read_body() is None
    parser.feed(b"c")
    assert parser.read_body() == b"c"
    assert parser.body_done and parser.read_body() == b""


def test_head_fed_byte_by_byte_is_linear():
    # A slowloris client sending a 64 KiB head one octet per packet must not cost seconds of
    # CPU: progress through an unfinished head is kept between calls (the first version of
    # this parser rescanned it every time and took 20 s here; now about 0.2 s).
    fields = b"".join(b"X-F%02d: %s\r\n" % (i, b"v" * 640) for i in range(99))
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + fields + b"\r\n"
    assert 60000 < len(data) <= Limits().head
    parser = RequestParser()
    started = time.process_time()
    for i in range(len(data) - 1):
        parser.feed(data[i:i + 1])
        assert parser.next_request() is None
    parser.feed(data[-1:])
    assert len(parser.next_request().headers) == 100
    assert time.process_time() - started < 4


@pytest.mark.parametrize("field, status", [
    (b"X-A:" + b" " * 8000 + b"\0", 400),
    (b"X-A: a" + b"\t" * 8000 + b"\x01", 400),
    (b"Transfer-Encoding: gzip," + b" " * 8000 + b"(", 400),
])
def test_no_regex_backtracking_blowup(field, status):
    # Each of these lines cost 0.3-0.5 s of CPU in regexes with two adjacent "[ \t]*" runs;
    # a head carries up to 100 of them.
    data = b"POST / HTTP/1.1\r\nHost: h\r\n" + field + b"\r\n\r\n"
    started = time.process_time()
    assert run(data, [data]) == ([], ("error", status))
    assert time.process_time() - started < 0.1


# -- property-style tests -----------------------------------------------------------------------

_ALPHABET = [b"\r\n", b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b"=", b",", b"/", b"?",
             b"%", b"\"", b"\0", b"\x7f", b"\xe9", b"GET", b"HTTP/1.1", b"HTTP/1.0", b"Host",
             b"Content-Length", b"Transfer-Encoding", b"chunked", b"0", b"5", b"a", b"F", b"*",
             b"Expect", b"100-continue", b"Connection", b"close", b"\r\n\r\n"]


def _garbage(rng):
    parts = [rng.choice(_ALPHABET) if rng.random() < 0.8 else bytes([rng.randrange(256)])
             for _ in range(rng.randint(1, 60))]
    if rng.random() < 0.5:
        parts.insert(0, b"POST /x HTTP/1.1\r\nHost: h\r\n")
    return b"".join(parts)


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(data) + 1)
        kind = rng.randrange(4)
        if kind == 0 and pos < len(data):
            del data[pos]
        elif kind == 1:
            data[pos:pos] = rng.choice(_ALPHABET)
        elif kind == 2 and pos < len(data):
            data[pos] = rng.randrange(256)
        else:
            data[pos:pos] = data[pos:pos + rng.randint(1, 20)]
    return bytes(data)


def _assert_split_independent(data, limits=None):
    """Only ProtocolError may escape, and the result must not depend on the split."""
    want = run(data, [data], limits)
    assert run(data, split_bytes(data), limits, (1, 2, 65536)) == want, data
    assert run(data, split_random(data, len(data)), limits, (5, 65536)) == want, data
    return want


def test_random_garbage_only_raises_protocol_error():
    rng = random.Random(9112)
    limits = {"request_line": 40, "field_size": 30, "fields": 4, "head": 120, "body": 50}
    for _ in range(600):
        data = _garbage(rng)
        _assert_split_independent(data)
        _assert_split_independent(data, limits)


def test_mutated_corpus_requests_are_split_independent():
    rng = random.Random(9110)
    for _ in range(1500):
        case = rng.choice(CASES)
        _assert_split_independent(_mutate(rng, case.data), case.limits)


def test_body_unread_counts_what_is_left():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\n"
                b"Content-Length: 5\r\n\r\nab")
    parser.next_request()
    assert parser.body_unread == 0
    parser.next_request()
    assert parser.body_unread == 5
    assert parser.read_body() == b"ab" and parser.body_unread == 3
    parser.feed(b"cde")
    assert parser.read_body() == b"cde" and parser.body_unread == 0
    # Chunked: how much is left is not known until the last chunk.
    parser.feed(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert parser.next_request().chunked and parser.body_unread is None


@pytest.mark.parametrize("data, is_head", [
    (b"HEAD / HTTP/1.1\r\n\r\n", True),                          # 400: no Host
    (b"\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\nX: \x01\r\n\r\n", True),  # after empty lines
    (b"HEAD /" + b"a" * 9000 + b" HTTP/1.1\r\n", True),           # 414 before the line ends
    (b"GET / HTTP/1.1\r\n\r\n", False),
    (b"HEADER / HTTP/1.1\r\n\r\n", False),
    (b"head / HTTP/1.1\r\n\r\n", False),                          # methods are case-sensitive
    (b"\r\n", False),
])
def test_a_failed_head_tells_whether_it_was_a_head_request(data, is_head):
    """RFC 9110 §9.3.2: the error answer to a HEAD carries no content, even when the head
    failed to parse; every split of the bytes gives the same answer."""
    for cut in range(len(data) + 1):
        parser = RequestParser()
        for piece in (data[:cut], data[cut:]):
            parser.feed(piece)
            try:
                parser.next_request()
            except ProtocolError:
                pass
        assert parser.begins_head_request() is is_head, cut


def test_limits_follow_the_config():
    config = Config(limit_request_line=11, limit_request_field_size=12,
                    limit_request_fields=13, limit_request_head=14, max_body_size=15)
    limits = Limits.from_config(config)
    assert [getattr(limits, name) for name in Limits.__slots__] == [11, 12, 13, 14, 15]
    defaults = Limits.from_config(Config())
    assert [getattr(defaults, name) for name in Limits.__slots__] == \
        [getattr(Limits(), name) for name in Limits.__slots__]


def test_request_repr_names_the_request_line():
    parser = RequestParser()
    parser.feed(b"OPTIONS * HTTP/1.0\r\n\r\n")
    assert repr(parser.next_request()) == "<Request b'OPTIONS' b'*' HTTP/1.0>"


def test_corpus_format_rejects_typos():
    with pytest.raises(CorpusError, match="unknown key 'requets'"):
        Case("typo", "# rfc: RFC 9112\n# requets: GET / HTTP/1.1\nGET / HTTP/1.1\\r\\n\\r\\n\n")
    with pytest.raises(CorpusError, match="unknown escape"):
        Case("bad-escape", "# rfc: RFC 9112\n# error: 400\nGET /\\q\n")
    case = Case("ok", "# rfc: RFC 9112\n# error: 400\nA\\r\\n\\0\\x80\\\\\n\\t\n")
    assert case.data == b"A\r\n\0\x80\\\t"


# -- the memos of checked lines -----------------------------------------------------------------

def in_full(data, limits=None, pieces=None):
    """run()'s result with the error in full: its class, status, reason and detail."""
    errors = []
    records, outcome = run(data, pieces or [data], limits, errors=errors)
    return records, outcome, [(type(e), e.status, e.reason, e.detail) for e in errors]


def remembered():
    """Every line the memos hold."""
    return set(lines.REQUEST_LINES) | set(lines.FIELD_LINES)


def test_errors_are_the_same_whatever_the_memos_hold():
    # The same error in full (class, status, reason, detail) for the same pieces. (The detail
    # may quote less of a line that arrived in pieces, so whole and split are not compared.)
    shapes = {"whole": split_whole, "bytes": split_bytes, "lines": split_lines}
    cold = {}
    for case in CASES:
        for shape, split in shapes.items():
            forget_lines()
            cold[case.name, shape] = in_full(case.data, case.limits, split(case.data))
            # Its own good lines remembered now: the same bytes again.
            again = in_full(case.data, case.limits, split(case.data))
            assert again == cold[case.name, shape], (case.name, shape)
    # Now with the lines of the cases that came before (the memos are bounded, not emptied).
    for case in CASES:
        run(case.data, [case.data], case.limits)
    assert len(remembered()) > 100
    for case in CASES:
        for shape, split in shapes.items():
            warm = in_full(case.data, case.limits, split(case.data))
            assert warm == cold[case.name, shape], (case.name, shape)


def test_mutated_requests_read_the_same_cold_and_warm():
    rng = random.Random(9112)
    for _ in range(1500):
        case = rng.choice(CASES)
        data = _mutate(rng, case.data)
        for pieces in ([data], split_random(data, len(data))):
            forget_lines()
            cold = in_full(data, case.limits, pieces)
            assert in_full(data, case.limits, pieces) == cold, data


def test_only_lines_that_pass_their_checks_are_remembered():
    forget_lines()
    rng = random.Random(9110)
    for case in CASES:
        run(case.data, split_lines(case.data), case.limits)
    for _ in range(1500):
        case = rng.choice(CASES)
        data = _mutate(rng, case.data)
        run(data, [data], case.limits)
    # Each entry is what a fresh parse of its line gives, and the line is valid on its own.
    for line, entry in lines.REQUEST_LINES.items():
        method, target, version = lines.parse_request_line(line)
        assert entry == (method, target, version, *lines.parse_target(method, target))
    for line, entry in lines.FIELD_LINES.items():
        match = lines.FIELD_LINE.fullmatch(line)
        name, value = match.group(1), match.group(2).strip(b" \t")
        assert entry[0] == (name, value)
        if name.lower() == b"host":
            assert entry[2] and lines._HOST.fullmatch(value)
    # Lines that fail, each after good ones of its request.
    for bad in (b"Host: a b", b"Host: a%zz", b"X-A: \x01", b"X-A: v\r", b" folded",
                b"X A: v", b"X-A : v"):
        data = _head(b"User-Agent: u", bad, b"Host: h" if bad[:5] != b"Host:" else b"X-B: 1")
        assert run(data, [data])[1] == ("error", 400)
        assert b"User-Agent: u" in lines.FIELD_LINES
        assert bad not in lines.FIELD_LINES
    for bad, status in ((b"GET / HTTP/2.0", 505), (b"CONNECT a:1 HTTP/1.1", 501),
                        (b"GET /a%zz HTTP/1.1", 400), (b"GET * HTTP/1.1", 400),
                        (b"GET http://a@b/ HTTP/1.1", 400), (b"GET  / HTTP/1.1", 400)):
        data = _head(b"Host: h", request_line=bad)
        assert run(data, [data])[1] == ("error", status)
        assert bad not in lines.REQUEST_LINES


def _head(*lines, request_line=b"GET / HTTP/1.1"):
    return b"\r\n".join((request_line,) + lines) + b"\r\n\r\n"


# (what is sent first and accepted, what is sent next with the same lines, limits, status)
PER_REQUEST_RULES = [
    # RFC 9110 §5.3: a singleton field twice.
    (_head(b"Host: h", b"User-Agent: x"), _head(b"Host: h", b"User-Agent: x", b"User-Agent: x"),
     None, 400),
    # RFC 9112 §3.2: two Host lines, or none in HTTP/1.1.
    (_head(b"Host: h"), _head(b"Host: h", b"Host: h"), None, 400),
    (_head(b"Host: h", b"X-A: 1"), _head(b"X-A: 1"), None, 400),
    # RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 (both lines were fine in other requests).
    (_head(b"Host: h", b"Transfer-Encoding: chunked", request_line=b"POST / HTTP/1.1")
     + b"0\r\n\r\n" + _head(b"Content-Length: 0", request_line=b"POST / HTTP/1.0"),
     _head(b"Transfer-Encoding: chunked", request_line=b"POST / HTTP/1.0"), None, 400),
    # RFC 9112 §6.3: Content-Length and Transfer-Encoding; two different Content-Lengths.
    (_head(b"Host: h", b"Transfer-Encoding: chunked") + b"0\r\n\r\n"
     + _head(b"Host: h", b"Content-Length: 1") + b"a",
     _head(b"Host: h", b"Content-Length: 1", b"Transfer-Encoding: chunked"), None, 400),
    (_head(b"Host: h", b"Content-Length: 1") + b"a" + _head(b"Host: h", b"Content-Length: 2")
     + b"ab", _head(b"Host: h", b"Content-Length: 1", b"Content-Length: 2") + b"ab", None, 400),
    # RFC 9110 §10.1.1: an expectation ignored in HTTP/1.0 gets 417 in HTTP/1.1.
    (_head(b"Host: h", b"Expect: x-foo", request_line=b"GET / HTTP/1.0") + _head(b"Host: h"),
     _head(b"Host: h", b"Expect: x-foo"), None, 417),
    # RFC 9112 §3.2: an absolute-form target does not excuse a bad or repeated Host.
    (_head(b"Host: x", request_line=b"GET http://a/ HTTP/1.1"),
     _head(b"Host: a b", request_line=b"GET http://a/ HTTP/1.1"), None, 400),
    (_head(b"Host: x", request_line=b"GET http://a/ HTTP/1.1"),
     _head(b"Host: x", b"Host: x", request_line=b"GET http://a/ HTTP/1.1"), None, 400),
    # RFC 9112 §5.2: obs-fold after a remembered line.
    (_head(b"Host: h", b"X-A: v"), _head(b"Host: h", b"X-A: v", b" more"), None, 400),
    # The limits of another server: lines remembered under the defaults break smaller ones.
    (_head(b"Host: h", b"Accept: */*"), _head(b"Host: h", b"Accept: */*"),
     {"fields": 1}, 431),
    (_head(b"Host: h", b"User-Agent: a-long-one"), _head(b"Host: h", b"User-Agent: a-long-one"),
     {"field_size": 12}, 431),
    (_head(b"Host: h", request_line=b"GET /abcdefghij HTTP/1.1"),
     _head(b"Host: h", request_line=b"GET /abcdefghij HTTP/1.1"), {"request_line": 20}, 414),
    (_head(b"Host: h", b"Accept: */*"), _head(b"Host: h", b"Accept: */*"), {"head": 30}, 431),
    (_head(b"Host: h", b"Content-Length: 5") + b"abcde",
     _head(b"Host: h", b"Content-Length: 5") + b"abcde", {"body": 4}, 413),
]


@pytest.mark.parametrize("first, then, limits, status", PER_REQUEST_RULES, ids=[
    "singleton", "two-hosts", "no-host", "te-http10", "cl-and-te", "cl-conflict", "expect",
    "absolute-bad-host", "absolute-two-hosts", "obs-fold", "fields", "field-size",
    "request-line", "head", "body"])
def test_remembered_lines_still_meet_every_rule_of_the_request(first, then, limits, status):
    forget_lines()
    cold = in_full(then, limits)
    assert cold[1] == ("error", status)
    forget_lines()
    assert run(first, [first])[1] == ("idle",)
    assert then.split(b"\r\n")[0] in lines.REQUEST_LINES
    for pieces in ([then], split_bytes(then), split_lines(then)):
        assert in_full(then, limits, pieces) == cold


def test_remembered_lines_read_the_same_in_each_request():
    forget_lines()
    first = _head(b"Host: h", b"Connection: keep-alive", request_line=b"GET /a?b HTTP/1.1")
    again = _head(b"Host: h", b"Connection: keep-alive", request_line=b"GET /a?b HTTP/1.0")
    data = first + first + again + _head(b"Host: h", b"Connection: close") + again
    want = run(data, [data])
    forget_lines()
    assert run(data, split_bytes(data)) == want
    assert [(r["version"], r["keep_alive"], r["host"]) for r in want[0]] == [
        (1, True, b"h"), (1, True, b"h"), (0, True, b"h"), (1, False, b"h"), (0, True, b"h")]
    absolute = _head(b"Host: x", request_line=b"GET http://a:1/p?q HTTP/1.1")
    for _ in range(2):
        records, outcome = run(absolute, [absolute])
        assert (records[0]["host"], records[0]["path"], records[0]["query"]) == \
            (b"a:1", b"/p", b"q")


def test_memos_stay_bounded_whatever_the_client_sends():
    # 10,000 different header lines, and as many request-lines: one clear per
    # _MEMO_ENTRIES new lines, never more entries than that.
    forget_lines()
    bound = lines.MEMO_ENTRIES
    parser = RequestParser()
    for i in range(100):
        fields = b"".join(b"X-%d: %d\r\n" % (j, i) for j in range(99))
        parser.feed(b"GET /%d HTTP/1.1\r\nHost: h\r\n%s\r\n" % (i, fields))
        assert len(parser.next_request().headers) == 100
        assert len(lines.FIELD_LINES) <= bound
    for i in range(10000):
        parser.feed(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        assert parser.next_request().path == b"/%d" % i
        assert len(lines.REQUEST_LINES) <= bound
    # 10,000 different lines were added: emptied each time it was full, the latest kept.
    assert len(lines.REQUEST_LINES) == (10000 - 1) % bound + 1
    assert b"GET /9999 HTTP/1.1" in lines.REQUEST_LINES


def _size(thing):
    """Bytes held by a memo: its table, keys, values and what they hold."""
    if isinstance(thing, (tuple, dict)):
        items = thing.items() if isinstance(thing, dict) else thing
        return sys.getsizeof(thing) + sum(_size(item) for item in items)
    return sys.getsizeof(thing)


def test_memos_hold_a_few_mb_at_worst():
    # The longest lines that are remembered, all different, until each memo is full.
    forget_lines()
    longest = lines.MEMO_LINE
    memos = {"request-lines": lines.REQUEST_LINES,
             "field lines": lines.FIELD_LINES}
    full = {}
    parser = RequestParser()
    for i in range(3 * lines.MEMO_ENTRIES):
        target = b"/%08d?" % i
        target += b"q" * (longest - len(target) - len(b"GET  HTTP/1.1"))
        value = b"%08d" % i
        value += b"v" * (longest - len(value) - len(b"X-Long: "))
        parser.feed(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nX-Long: " + value
                    + b"\r\n\r\n")
        assert len(b"X-Long: " + parser.next_request().headers[1][1]) == longest
        for name, memo in memos.items():
            if name not in full and len(memo) == lines.MEMO_ENTRIES:
                assert max(len(line) for line in memo) == longest
                full[name] = _size(memo)
    assert len(full) == 2
    assert sum(full.values()) < 3 * 1024 * 1024, full
    # Lines longer than that are not kept.
    forget_lines()
    parser.feed(b"GET /" + b"a" * longest + b" HTTP/1.1\r\nHost: h\r\nX-A: " + b"v" * longest
                + b"\r\n\r\n")
    parser.next_request()
    assert remembered() == {b"Host: h"}


def test_a_bytearray_fed_reads_like_bytes():
    data = _head(b"Host: h", b"X-A: 1") * 2
    want = run(data, [data])
    parser = RequestParser()
    parser.feed(bytearray(data))
    for _ in range(2):
        request = parser.next_request()
        assert _record(request) == want[0][0]
        assert all(type(part) is bytes for header in request.headers for part in header)


# -- writer.py: response bytes (to move next to protocol/response.py's table test) -------------

PINNED = 784111777  # Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110 §5.6.7's example


@pytest.fixture
def pinned_clock(monkeypatch):
    """The writer's clock stopped at PINNED, with its once-a-second Date cache emptied."""
    monkeypatch.setattr(writer.time, "time", lambda: PINNED + 0.25)
    monkeypatch.setattr(writer, "_date_second", 0)


def test_http_date_is_formatted_once_a_second(pinned_clock, monkeypatch):
    first = writer.http_date()
    assert first == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert writer.http_date() is first  # cached within the second
    monkeypatch.setattr(writer.time, "time", lambda: PINNED + 1.0)
    assert writer.http_date() == "Sun, 06 Nov 1994 08:49:38 GMT"


def test_date_line_follows_the_clock(pinned_clock, monkeypatch):
    assert writer.date_line() == "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
    assert writer.date_line() is writer.date_line()  # cached within the second
    monkeypatch.setattr(writer.time, "time", lambda: PINNED + 1.0)
    assert writer.date_line() == "Date: Sun, 06 Nov 1994 08:49:38 GMT\r\n"


def test_server_line():
    assert writer.server_line("edge/1") == "Server: edge/1\r\n"
    assert writer.server_line("") == ""
    assert b"Server:" not in writer.error_response(400, server="")


def test_format_head_and_chunks():
    assert writer.format_head("200 OK", [("A", "1"), ("B", "\xe9")], "C: 2\r\n") == \
        b"HTTP/1.1 200 OK\r\nA: 1\r\nB: \xe9\r\nC: 2\r\n\r\n"
    assert writer.format_head("204 No Content", (), "") == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert writer.frame_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert writer.CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_status_line():
    assert writer.status_line(431) == "431 Request Header Fields Too Large"
    assert writer.status_line(599) == "599 Unknown"


def test_error_response_bytes(pinned_clock):
    head = (b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: greenserve\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n")
    assert writer.error_response(400, "bad \u2603") == (
        b"HTTP/1.1 400 Bad Request\r\n" + head + b"Content-Length: 22\r\n"
        b"Connection: close\r\n\r\n400 Bad Request\nbad ?\n")
    assert writer.error_response(503, reason="Draining", keep_alive=True) == (
        b"HTTP/1.1 503 Draining\r\n" + head + b"Content-Length: 13\r\n"
        b"Connection: keep-alive\r\n\r\n503 Draining\n")
    # RFC 9110 §9.3.2: the same header fields for HEAD, without the content.
    assert writer.error_response(404, head=True) == (
        b"HTTP/1.1 404 Not Found\r\n" + head + b"Content-Length: 14\r\n"
        b"Connection: close\r\n\r\n")
