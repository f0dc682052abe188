"""Instructions one server spends per keep-alive hello request, counted without the client.

The server (greenserve serving ``examples/hello.py``, or a bare gevent loop for comparison)
runs in this process; the client is a child process on one keep-alive connection, so under
callgrind only the server's user-space instructions are counted: no client, no kernel.
``--callgrind`` runs valgrind at N and 3N requests and prints the difference per request, so
start-up and imports cancel out::

    python3 -m loadtests.server_instructions --callgrind              # greenserve
    python3 -m loadtests.server_instructions --callgrind --server floor
    python3 -m loadtests.server_instructions --callgrind --server floor-wait

``floor`` receives and sends canned bytes with no HTTP at all; ``floor-wait`` first waits
for the socket to become readable, as greenserve does between keep-alive requests, so the
difference between the two is one trip through gevent's hub. Under valgrind the client
outruns the server, so the next request has usually arrived before the server reads: the
figures are of the server's own work, not of waiting.
"""

import argparse
import shutil
import subprocess
import sys

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
          b"Date: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\nHello, world!")
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
WARM_UP = 300


def client(port, count):
    """The child: ``count`` requests on one keep-alive connection, each answer read whole."""
    import socket
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(count):
            sock.sendall(REQUEST)
            data = sock.recv(65536)
            while b"Hello, world!" not in data:
                more = sock.recv(65536)
                if not more:
                    raise SystemExit("client: the server closed the connection")
                data += more


def serve(kind, count):
    """Serve a warm-up connection and then ``count`` requests from a client child process."""
    from gevent import monkey
    monkey.patch_all()
    if kind == "greenserve":
        from examples.hello import app
        from greenserve.server import Server
        server = Server(app, bind="127.0.0.1:0", keep_alive=30)
    else:
        from gevent.server import StreamServer
        server = StreamServer(("127.0.0.1", 0), _floor_handler(kind == "floor-wait"))
    server.start()
    port = server.address[1]
    for requests in (WARM_UP, count):
        subprocess.run([sys.executable, "-m", "loadtests.server_instructions", "--client",
                        str(port), str(requests)], check=True)
    server.stop()


def _floor_handler(wait_first):
    def handle(sock, _address):
        raw, wait, readable = sock._sock, sock._wait, sock._read_event
        while True:
            try:
                data = raw.recv(65536)
            except BlockingIOError:
                wait(readable)
                continue
            if not data:
                return
            raw.send(ANSWER)
            if wait_first:
                wait(readable)
    return handle


def callgrind(kind, low, high):
    """Instructions per request: callgrind's total at ``high`` minus at ``low``, divided."""
    from loadtests.hotpath import instructions_per_request
    return instructions_per_request(
        lambda count: [sys.executable, "-m", "loadtests.server_instructions", str(count),
                       "--server", kind],
        low, high, "server_instructions")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="server_instructions",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("count", nargs="?", type=int, default=2000, help="requests to serve")
    parser.add_argument("--server", choices=("greenserve", "floor", "floor-wait"),
                        default="greenserve")
    parser.add_argument("--callgrind", action="store_true",
                        help="instructions per request under valgrind (at count and 3x count)")
    parser.add_argument("--client", nargs=2, type=int, metavar=("PORT", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        client(*args.client)
        return 0
    if args.callgrind:
        if shutil.which("valgrind") is None:
            print("server_instructions: valgrind is not installed (apt-get install valgrind)",
                  file=sys.stderr)
            return 2
        per = callgrind(args.server, args.count, 3 * args.count)
        print(f"{args.server}: {per:,.0f} instructions per request (server only)")
        return 0
    serve(args.server, args.count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
