"""The per-request hot path in one process, without sockets: what the server's Python costs.

Each request goes through what a connection does with it: the parser, the environ, a small
WSGI app calling ``start_response`` (status and header checks) and the response bytes. Three
request kinds:

- ``wrk``: ``GET /`` with only a Host field, answered "Hello, World!" (the wrk hello bench);
- ``browser``: a page request with the dozen fields a browser sends, answered with four fields;
- ``browser-unique``: the same with a number in every line, new for each request (what a
  client that never repeats a line costs: the memos only miss; the generation of the
  numbered bytes is part of the figure, for the server before the memos too).

Run it under callgrind for a figure that does not depend on the machine's load (instructions
are counted, not time): ``--callgrind`` runs valgrind twice, at N and 3N requests, and prints
the difference per request, so start-up and imports cancel out::

    python3 loadtests/hotpath.py --callgrind            # every kind
    python3 loadtests/hotpath.py 3000 --kind browser    # just run it (for your own valgrind)
    python3 loadtests/hotpath.py 20000 --profile        # cProfile, top entries by own time
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

BROWSER = (
    b"GET /shop/items?page=2&sort=price HTTP/1.1\r\n"
    b"Host: shop.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b"sec-ch-ua: \"Chromium\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n"
    b"sec-ch-ua-mobile: ?0\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    b" Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,"
    b"image/webp,*/*;q=0.8\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Referer: https://shop.example.com/shop/items?page=1\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Cookie: session=4f2a9c1e77d04b6b; theme=dark\r\n"
    b"\r\n")


def numbered(head):
    """``head`` with "%d" at the end of each field line and in the request-line's query."""
    lines = head[:-4].split(b"\r\n")
    request_line = lines[0].replace(b" HTTP/", b"&n=%d HTTP/")
    return b"\r\n".join([request_line] + [line + b"%d" for line in lines[1:]]) + b"\r\n\r\n"


KINDS = {"wrk": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n", "browser": BROWSER,
         "browser-unique": numbered(BROWSER)}

HELLO = b"Hello, World!"
PAGE = b"<!doctype html><title>items</title><p>page 2</p>\n" * 20


def hello_app(environ, start_response):
    """What loadtests/apps.py answers on ``GET /``."""
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def page_app(environ, start_response):
    """A framework-like page: a few more fields, one of them varying in value."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(PAGE))),
                              ("Cache-Control", "no-cache"),
                              ("Vary", "Accept-Encoding, Cookie")])
    return [PAGE]


def serve(kind, count):
    """Run ``count`` requests of ``kind`` through the hot path; returns the bytes sent."""
    from greenserve.protocol.parser import Limits, RequestParser
    from greenserve.protocol.response import Response
    from greenserve.protocol.writer import SERVER_LINE
    from greenserve.wsgi import (EMPTY_INPUT, base_environ, build_environ, check_headers,
                                 check_status, is_upgrade)

    class Listener:
        root_path = ""
        url_scheme = "http"

    data = KINDS[kind]
    app = hello_app if kind == "wrk" else page_app
    base = base_environ(Listener, "127.0.0.1", "8000", False, errors=sys.stderr)
    parser = RequestParser(Limits())  # one keep-alive connection
    box = [None, None]

    def start_response(status, headers, exc_info=None):
        code = check_status(status, False)
        info = check_headers(headers)
        request = box[0]
        box[1] = Response(status, code, headers, info, request.method == b"HEAD",
                          request.version, request.keep_alive, SERVER_LINE)

    places = data.count(b"%d")
    sent = 0
    for i in range(count):
        parser.feed(data % ((i,) * places) if places else data)
        request = parser.next_request()
        box[0] = request
        environ = build_environ(base, request, "", "127.0.0.1", "54321")
        request.headers = None
        if "HTTP_UPGRADE" in environ and is_upgrade(environ):
            raise AssertionError("no upgrade here")
        environ["wsgi.input"] = EMPTY_INPUT
        body = app(environ, start_response)
        sent += len(box[1].whole(body[0], False))
    return sent


def callgrind(kind, low, high):
    """Instructions per request: callgrind's total at ``high`` minus at ``low``, divided."""
    return instructions_per_request(
        lambda count: [sys.executable, os.path.abspath(__file__), str(count), "--kind", kind],
        low, high, "hotpath")


def instructions_per_request(command, low, high, prog):
    """Run ``command(count)`` under callgrind at ``low`` and ``high`` counts; the difference
    of the totals per count (start-up and imports cancel out). ``prog`` names the caller in
    the error that ends the run if valgrind fails."""
    totals = []
    for count in (low, high):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "callgrind.out")
            proc = subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 *command(count)],
                capture_output=True, text=True, check=False,
                # The same string hashes every run: dict probe sequences stay the same.
                env={**os.environ, "PYTHONHASHSEED": "0"})
            found = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode or not found:
                sys.exit(f"{prog}: valgrind failed:\n{proc.stderr[-2000:]}")
            totals.append(int(found.group(1)))
    return (totals[1] - totals[0]) / (high - low)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="hotpath", description=__doc__.split("\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=1000, help="requests to run")
    parser.add_argument("--kind", choices=sorted(KINDS) + ["all"], default="all")
    parser.add_argument("--profile", action="store_true", help="print a cProfile view")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per request under valgrind (at count and 3x count)")
    args = parser.parse_args(argv)
    kinds = sorted(KINDS) if args.kind == "all" else [args.kind]
    if args.callgrind:
        if shutil.which("valgrind") is None:
            print("hotpath: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
            return 2
        for kind in kinds:
            per = callgrind(kind, args.count, 3 * args.count)
            print(f"{kind}: {per:,.0f} instructions per request")
        return 0
    if args.profile:
        import cProfile
        import pstats
        for kind in kinds:
            serve(kind, 100)  # warm the caches first: the profile is of the steady state
            profile = cProfile.Profile()
            profile.runcall(serve, kind, args.count)
            print(f"== {kind}: {args.count} requests")
            pstats.Stats(profile).sort_stats("tottime").print_stats(14)
        return 0
    for kind in kinds:
        serve(kind, args.count)
    return 0


if __name__ == "__main__":
    # Run as a script from anywhere: the package is the directory above this one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
