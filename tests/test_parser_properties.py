"""Properties of the request parser, checked by hypothesis on generated and mutated requests.

- A generated valid request (or a pipeline of them) parses to exactly the request it was built
  from, whatever the optional whitespace, case, leading zeros and chunking chosen.
- Random and mutated input only ever raises the protocol's own errors (ProtocolError).
- Every split of the input into received pieces, and every read size, gives the same result.
- A parsed request re-serialised canonically parses to the same request, and serialising that
  again gives the same bytes.
- The work is linear in the input: a head, line or body grown 32-fold costs at most ten times
  what 32 of the small ones cost, a bound a cost growing with the square of the input breaks
  once it dominates (the margin of ten is what a busy machine needs).

The unit run uses the "ci" profile: a fixed, derandomized set of examples taking a few seconds.
``GREENSERVE_HYPOTHESIS=fuzz`` draws many more random examples (docs/CONTRIBUTING.md).
The seeded random tests in test_parser.py cover the corpus mutations; these add generation,
shrinking, re-serialisation and timing.
"""

import os
import time
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import test_parser
from greenserve.errors import ProtocolError
from greenserve.protocol.lines import SINGLETON_FIELDS, forget_lines
from greenserve.protocol.parser import _NOT_TRAILERS, Limits, RequestParser
from test_parser import CASES, _ALPHABET, run, split_bytes

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, max_examples=40, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "fuzz", derandomize=False, database=None, deadline=None, max_examples=5000,
    print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROFILE = settings.get_profile(os.environ.get("GREENSERVE_HYPOTHESIS", "ci"))


def examples(fraction=1.0):
    """The profile's settings with ``fraction`` of its examples (for the costly properties)."""
    return settings(PROFILE, max_examples=max(3, int(PROFILE.max_examples * fraction)))


@pytest.fixture(autouse=True, scope="module", params=["cold", "warm"])
def memo(request):
    """Every property twice: with the parser's memos of checked lines emptied before each
    run(), then warmed with the whole corpus and kept from one example to the next."""
    test_parser.MEMO = request.param
    forget_lines()
    if request.param == "warm":
        for case in CASES:
            run(case.data, [case.data], case.limits)
    yield request.param
    test_parser.MEMO = "warm"


# Limits that never get in the way: the properties here are about meaning, not size.
ROOMY = {"request_line": 1 << 20, "field_size": 1 << 20, "fields": 10000, "head": 1 << 22}

# -- generating valid requests ------------------------------------------------------------------

_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PCHAR = "abcXYZ019-._~!$&'()*+,;=:@"
_VCHAR = [bytes([octet]) for octet in list(range(0x21, 0x7f)) + list(range(0x80, 0x100))]

tokens = st.text(st.sampled_from(_TCHAR), min_size=1, max_size=8).map(str.encode)
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
# A field value (no CTLs, no outer whitespace) as the parser should report it.
field_values = st.lists(st.sampled_from(_VCHAR + [b" ", b"\t"]), max_size=12).map(
    lambda parts: b"".join(parts).strip(b" \t"))
letter_case = st.integers(0, 255)


@lru_cache(maxsize=None)
def integers(low, high):
    """Strategies are built once: building them per draw made generation ten times slower."""
    return st.integers(low, high)


def recase(draw, word):
    """``word`` with the letter case of a careless client (names and tokens are caseless)."""
    flips = draw(letter_case)
    return bytes(c ^ 0x20 if flips >> (i % 8) & 1 and chr(c).isalpha() else c
                 for i, c in enumerate(word))


host_names = st.one_of(st.text(st.sampled_from("abcxyz0189.-"), max_size=12).map(str.encode),
                       st.sampled_from([b"[::1]", b"127.0.0.1", b"%41b"]))
hosts = st.tuples(host_names, st.sampled_from([b"", b":", b":80", b":8080"])).map(b"".join)
authorities = hosts.filter(lambda host: host and host[:1] != b":")
path_segments = st.lists(st.text(st.sampled_from(_PCHAR), max_size=6).map(str.encode),
                         max_size=3)
path_ends = st.sampled_from([b"", b"%2F", b"%e9"])
queries = st.one_of(st.none(), st.text(st.sampled_from(_PCHAR + "/?"), max_size=8)
                    .map(str.encode))
schemes = st.sampled_from([b"http", b"https", b"HTTP"])
methods = st.one_of(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                                     b"HEAD"]), tokens.filter(lambda m: m != b"CONNECT"))
minors = st.sampled_from([b"1", b"1", b"0", b"2", b"9"])
singletons = st.lists(st.sampled_from(SINGLETON_FIELDS), unique=True, max_size=3)
connections = st.sampled_from([None, b"close", b"keep-alive", b"Upgrade, Keep-Alive",
                               b"foo,  CLOSE", b",,"])
bodies = st.binary(max_size=40)
length_forms = st.sampled_from(["{0}", "{0}, {0}", "{0},{1}"])
te_values = st.sampled_from([b"chunked", b"Chunked", b", chunked", b"chunked ,"])
chunk_cuts = st.sets(st.integers(1, 39), max_size=3)
extensions = st.sampled_from([b"", b";a", b";a=b", b' ; a = "x y"', b";n;m=1"])


def target(draw, method):
    """(target, path, query, authority or None)."""
    if method == b"OPTIONS" and draw(st.booleans()):
        return b"*", b"*", b"", None
    path = b"/" + b"/".join(draw(path_segments)) + draw(path_ends)
    query = draw(queries)
    tail = path + (b"" if query is None else b"?" + query)
    if draw(integers(0, 4)) == 0:
        authority = draw(authorities)
        if path == b"/" and draw(st.booleans()):
            tail = tail[1:]  # path-abempty may be empty: "http://h?q" means "/"
        return draw(schemes) + b"://" + authority + tail, path, query or b"", authority
    return tail, path, query or b"", None


@st.composite
def requests(draw):
    """(wire bytes, expected record as test_parser.run reports it) for one valid request."""
    method = draw(methods)
    target_, path, query, authority = target(draw, method)
    minor = draw(minors)
    version = 0 if minor == b"0" else 1
    fields = []  # (wire name, wire value with OWS, reported value)

    def add(name, value):
        fields.append((name, draw(ows) + value + draw(ows), value))

    host = None
    if version or draw(st.booleans()):
        host = draw(hosts)
        add(recase(draw, b"Host"), host)
    for name in draw(singletons):
        add(recase(draw, name), draw(field_values))
    for _ in range(draw(integers(0, 4))):
        add(b"X-" + draw(tokens), draw(field_values))
    keep_alive = bool(version)
    connection = draw(connections)
    if connection is not None:
        add(recase(draw, b"Connection"), connection)
        options = {option.strip(b" \t").lower() for option in connection.split(b",")}
        keep_alive = b"close" not in options and (bool(version) or b"keep-alive" in options)
    expect_continue = bool(version) and draw(st.booleans())
    if expect_continue:
        add(b"Expect", recase(draw, b"100-continue"))

    body = draw(bodies)
    kind = draw(integers(0, 2 if version else 1))
    trailers = None
    wire_body = b""
    if kind == 1:
        digits = "0" * draw(integers(0, 3)) + str(len(body))
        add(recase(draw, b"Content-Length"),
            draw(length_forms).format(digits, len(body)).encode())
        wire_body = body
        framing = f"length {len(body)}"
    elif kind == 2:
        add(recase(draw, b"Transfer-Encoding"), draw(te_values))
        framing = "chunked"
        cuts = sorted(cut for cut in draw(chunk_cuts) if cut < len(body))
        pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
        for piece in [piece for piece in pieces if piece] + [b""]:
            size = b"0" * draw(integers(0, 2)) + (b"%x" if draw(st.booleans()) else b"%X") \
                % len(piece)
            wire_body += size + draw(extensions) + b"\r\n" + (piece + b"\r\n" if piece else b"")
        trailers = []
        for _ in range(draw(integers(0, 2))):
            name, value = b"X-T" + draw(tokens), draw(field_values)
            wire_body += name + b":" + draw(ows) + value + draw(ows) + b"\r\n"
            trailers.append((name, value))
        wire_body += b"\r\n"
    else:
        body = b""
        framing = "length 0"
    order = draw(st.randoms(use_true_random=False))
    order.shuffle(fields)

    wire = (b"\r\n" * draw(integers(0, 2)) + method + b" " + target_ + b" HTTP/1." + minor
            + b"\r\n" + b"".join(name + b":" + value + b"\r\n" for name, value, _ in fields)
            + b"\r\n" + wire_body)
    record = {"method": method, "target": target_, "version": version, "path": path,
              "query": query, "host": authority if authority is not None else host,
              "keep_alive": keep_alive, "framing": framing, "expect_continue": expect_continue,
              "body": body, "headers": [(name, value) for name, _, value in fields],
              "trailers": trailers}
    return wire, record


pipelines = st.lists(requests(), min_size=1, max_size=3).map(
    lambda items: (b"".join(wire for wire, _ in items), [record for _, record in items]))

# -- mutating input -----------------------------------------------------------------------------


alphabet = st.sampled_from(_ALPHABET)
corpus = st.sampled_from(CASES)


@st.composite
def mutated(draw):
    """A generated request or a corpus case, with a few edits hypothesis can shrink."""
    data = draw(pipelines)[0] if draw(st.booleans()) else draw(corpus).data
    data = bytearray(data)
    for _ in range(draw(integers(1, 4))):
        pos = draw(integers(0, len(data)))
        kind = draw(integers(0, 3))
        if kind == 0 and pos < len(data):
            del data[pos:pos + draw(integers(1, 4))]
        elif kind == 1:
            data[pos:pos] = draw(alphabet)
        elif kind == 2 and pos < len(data):
            data[pos] = draw(integers(0, 255))
        else:
            data[pos:pos] = data[pos:pos + draw(integers(1, 30))]
    return bytes(data)


garbage = st.lists(st.one_of(alphabet, st.binary(min_size=1, max_size=3)),
                   max_size=40).map(b"".join)

small_limits = st.one_of(
    st.none(),
    st.fixed_dictionaries({"request_line": st.integers(8, 60), "field_size": st.integers(4, 40),
                           "fields": st.integers(0, 5), "head": st.integers(16, 200),
                           "body": st.integers(0, 30)}))


@st.composite
def splits(draw, data):
    """Pieces joining to ``data``, cut where hypothesis likes."""
    cuts = sorted(draw(st.sets(integers(1, max(1, len(data) - 1)), max_size=12)))
    cuts = [cut for cut in cuts if cut < len(data)]
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


read_sizes = st.lists(st.integers(1, 70000), min_size=1, max_size=4).map(tuple)

# -- helpers ------------------------------------------------------------------------------------


def serialize(record):
    """A parsed request in canonical form: single spaces, "Name: value", one chunk."""
    head = b"%s %s HTTP/1.%d\r\n" % (record["method"], record["target"], record["version"])
    head += b"".join(name + b": " + value + b"\r\n" for name, value in record["headers"])
    body = record["body"]
    if record["framing"] == "chunked":
        chunks = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n"
        trailers = b"".join(name + b": " + value + b"\r\n" for name, value in record["trailers"])
        return head + b"\r\n" + chunks + trailers + b"\r\n"
    return head + b"\r\n" + body


def check_every_split(data, limits, want, pieces, sizes):
    """The whole-input result ``want`` again under each way of cutting ``data``."""
    assert run(data, split_bytes(data), limits, (1, 3, 65536)) == want
    assert run(data, pieces, limits, sizes) == want
    offsets = range(1, len(data))
    if len(data) > 80:
        offsets = offsets[::len(data) // 40]
    for offset in offsets:
        assert run(data, [data[:offset], data[offset:]], limits) == want, offset


def check_round_trip(finished):
    """Finished requests, re-serialised, parse to themselves; serialising again is stable."""
    if not finished:
        return
    canonical = b"".join(serialize(record) for record in finished)
    again, outcome = run(canonical, [canonical], ROOMY)
    assert outcome == ("idle",)
    # Trailer fields the parser drops (RFC 9110 §6.5.1) are not in the records to begin with.
    assert again == finished
    assert b"".join(serialize(record) for record in again) == canonical


# -- the properties -----------------------------------------------------------------------------

@examples()
@given(pipelines, st.data())
def test_generated_requests_parse_to_what_was_built_and_round_trip(pipeline, choose):
    wire, expected = pipeline
    want = (expected, ("idle",))
    finished = []
    assert run(wire, [wire], finished=finished) == want
    check_every_split(wire, None, want, choose.draw(splits(wire)), choose.draw(read_sizes))
    check_round_trip(finished)


@examples(0.5)
@given(requests(), st.sampled_from(SINGLETON_FIELDS), st.data())
def test_a_repeated_singleton_field_is_refused(request, name, choose):
    # RFC 9110 §5.3: a field that is not a list, sent twice, has no one value to give the app.
    _, record = request
    lines = serialize(record).split(b"\r\n")
    blank = lines.index(b"")
    for _ in range(2):
        at = choose.draw(integers(1, blank), label="line")
        lines.insert(at, recase(choose.draw, name) + b": " + choose.draw(field_values))
        blank += 1
    data = b"\r\n".join(lines)
    want = ([], ("error", 400))
    assert run(data, [data]) == want
    check_every_split(data, None, want, choose.draw(splits(data)), choose.draw(read_sizes))


@examples(2)
@given(st.one_of(mutated(), garbage), small_limits, st.data())
def test_mutated_input_only_raises_protocol_errors_whatever_the_split(data, limits, choose):
    # run() lets anything but a ProtocolError escape, and checks the error stays final.
    finished = []
    want = run(data, [data], limits, finished=finished)
    check_every_split(data, limits, want, choose.draw(splits(data)), choose.draw(read_sizes))
    # The same with the memos emptied (when warm, they held the lines of earlier examples).
    forget_lines()
    assert run(data, [data], limits) == want
    check_round_trip(finished)
    # RFC 9110 §6.5.1: trailer fields that cannot apply after the content never get through.
    assert not [name for record in finished for name, _ in record["trailers"] or ()
                if name.lower() in _NOT_TRAILERS]


# -- linear time --------------------------------------------------------------------------------

# A request grown GROWTH-fold must cost at most ten times GROWTH small ones: ten is the margin a
# busy machine needs, and a cost growing with the square of the input shows GROWTH-fold.
GROWTH = 32
_GROW_AT = [b"method", b"target", b"query", b"value", b"lines", b"empty", b"te-list",
            b"cl-list", b"chunk-ext", b"chunks", b"trailers"]


def _grown(where, unit, count):
    """A request with ``unit`` repeated ``count`` times at one place of its anatomy."""
    many = unit * count
    head, body = b"Host: h\r\n", b""
    method, target = b"POST", b"/"
    if where == b"method":
        method = b"P" + many.replace(b" ", b"")
    elif where == b"target":
        target = b"/" + many
    elif where == b"query":
        target = b"/?" + many
    elif where == b"value":
        head += b"X-V: a" + many + b"a\r\n"
    elif where == b"lines":
        head += (b"X-L: " + unit + b"\r\n") * count
    elif where == b"empty":
        return (b"\r\n" * count + b"GET / HTTP/1.1\r\n" + head + b"\r\n") * 2
    elif where == b"te-list":
        head += b"Transfer-Encoding: " + many + b"chunked\r\n"
        body = b"0\r\n\r\n"
    elif where == b"cl-list":
        head += b"Content-Length: " + many + b"0\r\n"
    elif where == b"chunk-ext":
        head += b"Transfer-Encoding: chunked\r\n"
        body = b"1;" + many + b"\r\na\r\n0\r\n\r\n"
    elif where == b"chunks":
        head += b"Transfer-Encoding: chunked\r\n"
        body = (b"1\r\n" + unit[:1] + b"\r\n") * count + b"0\r\n\r\n"
    else:
        head += b"Transfer-Encoding: chunked\r\n"
        body = b"0\r\n" + (b"X-T: " + unit + b"\r\n") * count + b"\r\n"
    return method + b" " + target + b" HTTP/1.1\r\n" + head + b"\r\n" + body


def roomy_parser():
    return RequestParser(Limits(**{**ROOMY, "fields": 1 << 20}))


def _read_all(parser):
    """Read requests and bodies until the parser needs more bytes."""
    while True:
        if parser.body_done:
            if parser.next_request() is None:
                return
        elif parser.read_body() is None:
            return


def _cpu(make_parser, inputs, piece, give_up=float("inf")):
    """CPU time to read all of ``inputs``, each fed in ``piece``-sized parts to a new parser;
    infinity once it passes ``give_up`` seconds (a quadratic parser would take minutes)."""
    started = time.process_time()
    for data in inputs:
        parser = make_parser()
        for offset in range(0, len(data), piece):
            parser.feed(data[offset:offset + piece])
            try:
                _read_all(parser)
            except ProtocolError:
                break
            if time.process_time() - started > give_up:
                return float("inf")
    return time.process_time() - started


def is_linear(where, unit, piece, make_parser=roomy_parser, size=256, growth=GROWTH):
    """Whether the request grown ``growth``-fold costs at most ten times ``growth`` small ones."""
    count = max(1, size // len(unit))
    small, large = _grown(where, unit, count), _grown(where, unit, count * growth)
    for _ in range(3):  # a busy machine gets three chances; a quadratic parser fails all
        # The least of three: a slowed-down measure here would raise the bound.
        bound = 10 * min(_cpu(make_parser, [small] * growth, piece) for _ in range(3)) + 0.001
        if _cpu(make_parser, [large], piece, bound) <= bound:
            return True
    return False


@pytest.mark.parametrize("where", _GROW_AT)
@examples(0.05)
@given(st.lists(st.sampled_from(_ALPHABET + [b"a", b" ", b"\t"]), min_size=1, max_size=4)
       .map(b"".join), st.sampled_from([1 << 20, 7, 256]))
def test_cost_is_linear_in_the_input(where, unit, piece):
    # One octet at a time is test_parser.py's test_head_fed_byte_by_byte_is_linear.
    assert is_linear(where, unit, piece)


class ForgetfulParser(RequestParser):
    """The first version's bug: progress through an unfinished head was not kept."""

    __slots__ = ()

    def feed(self, data):
        super().feed(data)
        self._checked = self._clean = self._lines = 0


def test_linearity_check_catches_a_quadratic_parser():
    def forgetful():
        return ForgetfulParser(Limits(**ROOMY))

    assert is_linear(b"lines", b"a", 64, size=32, growth=128)
    assert not is_linear(b"lines", b"a", 64, forgetful, size=32, growth=128)
