"""The bridge's memos: a status, an app's header field or a request header remembered gives
exactly what checking it afresh gives, the same error included, and the memos stay bounded.

Pure functions on values (no sockets): the same checks through a real server are
test_wsgi_contract.py's, which runs every test cold and warm.
"""

import pytest

from greenserve import wsgi
from greenserve.protocol.response import ResponseHeaders
from greenserve.protocol.parser import RequestParser
from greenserve.wsgi import base_environ, build_environ, check_headers, check_status, forget_memos
from test_parser import VALID


def outcome(check, *args, **kwargs):
    """What ``check`` returns, or the class and text of what it raises."""
    try:
        result = check(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    if isinstance(result, ResponseHeaders):
        return {name: getattr(result, name) for name in ResponseHeaders.__slots__}
    return result


def cold_then_warm(check, *args, **kwargs):
    """The outcome with the memos empty, then again: both the same."""
    forget_memos()
    cold = outcome(check, *args, **kwargs)
    assert outcome(check, *args, **kwargs) == cold
    return cold


class Text(str):
    """A str subclass: PEP 3333 wants plain str, cold or warm."""


class Impostor(str):
    """Compares and hashes like the text it names, holds something else."""

    def __new__(cls, text, pretends):
        self = super().__new__(cls, text)
        self.pretends = pretends
        return self

    def __eq__(self, other):
        return other == self.pretends

    def __hash__(self):
        return hash(self.pretends)


# -- statuses -------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [
    "200 OK", "404 Not Found", "599 Whatever", "200", "2000 OK", "999 Beyond", "103 Early Hints",
    "101 Switching Protocols", "200 OK\r\nX: y", Text("200 OK"), b"200 OK",
    Impostor("200 OK\r\nSet-Cookie: x", "200 OK"),
])
def test_a_status_is_judged_the_same_cold_and_warm(status):
    warmed = cold_then_warm(check_status, status)
    # With the plain text remembered first, a look-alike of another type is still refused.
    forget_memos()
    check_status("200 OK")
    assert outcome(check_status, status) == warmed


def test_101_is_never_remembered_for_another_request():
    forget_memos()
    assert check_status("101 Switching Protocols", switching=True) == 101
    assert wsgi._checked_statuses == {}
    assert outcome(check_status, "101 Switching Protocols") == (
        ValueError, "status '101 Switching Protocols': a WSGI app cannot send 1xx interim "
        "responses")


def test_str_subclasses_do_not_hit_a_remembered_status_or_field():
    forget_memos()
    check_status("200 OK")
    check_headers([("X-A", "1")])
    with pytest.raises(TypeError, match="status must be a str, not Text"):
        check_status(Text("200 OK"))
    with pytest.raises(ValueError, match="invalid header name"):
        check_headers([(Text("X-A"), "1")])
    with pytest.raises(TypeError, match="value must be a str, not Text"):
        check_headers([("X-A", Text("1"))])
    # One that hashes and compares like the remembered field but holds CR LF.
    with pytest.raises(TypeError, match="value must be a str, not Impostor"):
        check_headers([("X-A", Impostor("1\r\nSet-Cookie: x", "1"))])


# -- response header fields -----------------------------------------------------------------

HEADER_LISTS = [
    [("Content-Type", "text/plain"), ("Content-Length", "13")],
    [("Content-Length", "13"), ("content-length", "13")],           # one value, sent once
    [("Content-Length", "13"), ("Content-Length", "14")],           # conflict
    [("Content-Length", " 13 ")], [("Content-Length", "013")], [("Content-Length", "0")],
    [("Content-Length", "-1")], [("Content-Length", "1" * 20)], [("Content-Length", "")],
    [("Connection", "close")], [("Connection", "Close ")], [("Connection", "keep-alive")],
    [("Transfer-Encoding", "chunked")], [("Upgrade", "websocket")], [("Keep-Alive", "5")],
    [("Date", "x"), ("Server", "mine")],
    [("X-A", "1\r\nSet-Cookie: evil")], [("X-A", "\u20ac")], [("X A", "1")], [("", "1")],
    [(b"X-A", "1")], [("X-A", b"1")], [("X-A", 1)], [["X-A", "1"]], [("X-A", "1", "2")],
    ("X-A", "1"), [("X-A", "v" * 5000)], [("X-" + "a" * 2000, "v")],
]


@pytest.mark.parametrize("upgrade", [False, True])
@pytest.mark.parametrize("headers", HEADER_LISTS)
def test_a_header_list_is_judged_the_same_cold_and_warm(headers, upgrade):
    cold = cold_then_warm(check_headers, headers, upgrade=upgrade)
    # Warmed with every list first (each field that passed its own checks remembered),
    # under the other upgrade setting too.
    for other in HEADER_LISTS:
        outcome(check_headers, other, upgrade=not upgrade)
        outcome(check_headers, other, upgrade=upgrade)
    assert outcome(check_headers, headers, upgrade=upgrade) == cold


def test_hop_by_hop_fields_remembered_in_a_101_are_refused_in_other_responses():
    forget_memos()
    fields = [("Connection", "Upgrade"), ("Upgrade", "websocket")]
    check_headers(fields, upgrade=True)
    assert ("Upgrade", "websocket") in wsgi._checked_fields
    for field in fields:
        with pytest.raises(ValueError, match="hop-by-hop header"):
            check_headers([field])


def test_only_fields_that_pass_their_checks_are_remembered():
    forget_memos()
    for headers in HEADER_LISTS:
        outcome(check_headers, headers)
    for status in ("200 OK", "200", "999 x", "103 Early Hints", "200 OK\r\n"):
        outcome(check_status, status)
    for (name, value), lname in wsgi._checked_fields.items():
        assert type(name) is str and type(value) is str
        assert wsgi._TOKEN.fullmatch(name) and wsgi._FIELD_VALUE.fullmatch(value)
        assert lname == name.lower()
    assert wsgi._checked_statuses == {"200 OK": 200}
    assert {value: int(value) for value in ("13", "0")}.items() <= \
        wsgi._plain_lengths.items()
    assert all(value == str(length) for value, length in wsgi._plain_lengths.items())


def test_memos_stay_bounded_whatever_the_app_sends():
    forget_memos()
    bound = wsgi._MEMO_ENTRIES
    for i in range(10000):
        assert check_status(f"200 OK {i}") == 200
        check_headers([(f"X-{i}", str(i)), ("Content-Length", str(i))])
        assert len(wsgi._checked_statuses) <= bound
        assert len(wsgi._checked_fields) <= bound
        assert len(wsgi._plain_lengths) <= bound
    assert "200 OK 9999" in wsgi._checked_statuses
    # Long ones are not kept at all.
    forget_memos()
    check_status("200 " + "x" * 2000)
    check_headers([("X-Long", "v" * 2000)])
    assert not wsgi._checked_statuses and not wsgi._checked_fields


# -- request headers in the environ ---------------------------------------------------------

class Listener:
    root_path = ""
    url_scheme = "http"


BASE = base_environ(Listener, "127.0.0.1", "8000", False, errors=object())


def environs(data):
    parser = RequestParser()
    parser.feed(data)
    found = []
    while True:
        request = parser.next_request()
        if request is None:
            return found
        while parser.read_body():
            pass
        found.append(build_environ(BASE, request, "", "127.0.0.1", "5000"))


PLAIN = [case for case in VALID if not case.limits]


@pytest.mark.parametrize("case", PLAIN, ids=[case.name for case in PLAIN])
def test_an_environ_is_the_same_cold_and_warm(case):
    forget_memos()
    cold = environs(case.data)
    assert environs(case.data) == cold
    for other in PLAIN:  # warmed with the header fields of every valid case
        environs(other.data)
    assert environs(case.data) == cold


def test_environ_fields_are_remembered_boundedly():
    forget_memos()
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX_Under: 1\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n"
    first = environs(data)
    assert first == environs(data)
    assert first[0]["HTTP_COOKIE"] == "a=1; b=2" and "HTTP_X_UNDER" not in first[0]
    assert ((b"X_Under", b"1"), (None, "1")) in wsgi._environ_fields.items()
    for i in range(3000):
        environs(b"GET / HTTP/1.1\r\nHost: h\r\nX-%d: %d\r\n\r\n" % (i, i))
        assert len(wsgi._environ_fields) <= wsgi._MEMO_ENTRIES
    forget_memos()
    environs(b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: " + b"v" * 2000 + b"\r\n\r\n")
    assert list(wsgi._environ_fields) == [(b"Host", b"h")]
