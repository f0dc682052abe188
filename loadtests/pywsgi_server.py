"""The gevent.pywsgi peer, configured as loadtests/README.md describes.

    python -m loadtests.pywsgi_server MODULE:APP --bind 127.0.0.1:PORT [--nodelay]

Patches first (as gunicorn's gevent worker and greenserve do), serves with a Pool(10000) and no
access log, and with --nodelay sets TCP_NODELAY on each accepted socket: plain pywsgi writes headers
and body separately, so without it Nagle plus delayed ACK add ~40 ms to each keep-alive request.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after patching on purpose)
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Pool  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from loadtests.appspec import AppSpecError, load_app  # noqa: E402


class NoDelayServer(WSGIServer):
    def handle(self, sock, address):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return super().handle(sock, address)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app")
    parser.add_argument("--bind", default="127.0.0.1:8000")
    parser.add_argument("--nodelay", action="store_true")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    try:
        app = load_app(args.app)
    except AppSpecError as exc:
        print(f"pywsgi_server: {exc}", file=sys.stderr)
        return 2
    cls = NoDelayServer if args.nodelay else WSGIServer
    server = cls((host, int(port)), app, spawn=Pool(10000), log=None)
    server.start()
    print(f"Listening at http://{host}:{server.server_port}", file=sys.stderr, flush=True)
    # SIGTERM: stop accepting, give in-flight requests a moment, then exit.
    gevent.signal_handler(signal.SIGTERM, server.stop, 5)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
