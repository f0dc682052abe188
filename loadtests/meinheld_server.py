"""The meinheld peer (C, greenlets), configured as loadtests/README.md describes.

    python -m loadtests.meinheld_server MODULE:APP --bind 127.0.0.1:PORT

meinheld patches nothing here: the app runs in meinheld's own greenlets, so a blocking call such
as ``time.sleep`` in the app blocks the whole server (that is what the sleep row shows).
"""

import argparse
import resource
import sys

from meinheld import server

from loadtests.appspec import AppSpecError, load_app

# meinheld's own default is 0, which turns keep-alive off and closes every connection after one
# response; 30 s is what gunicorn gets in this harness, so both keep connections the same way.
KEEP_ALIVE_S = 30
# picoev refuses descriptors above its limit (4096 by default); let the process's open-file
# limit be the only cap, as it is for the other servers (1000 sleepers and 1000 idle
# connections both go past 1024).
MAX_FD_CAP = 65536


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app")
    parser.add_argument("--bind", default="127.0.0.1:8000")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    try:
        app = load_app(args.app)
    except AppSpecError as exc:
        print(f"meinheld_server: {exc}", file=sys.stderr)
        return 2
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = MAX_FD_CAP if soft == resource.RLIM_INFINITY else min(soft, MAX_FD_CAP)
    server.set_picoev_max_fd(max(limit, 4096))
    server.set_keepalive(KEEP_ALIVE_S)
    server.set_access_logger(None)  # every server here runs without an access log
    server.listen((host, int(port)))  # its 4096-entry listen backlog is left as it is
    print(f"meinheld listening on {host}:{port} (port 0: the kernel picks)", file=sys.stderr,
          flush=True)
    # SIGTERM keeps its default action (exit), which is how the harness stops a server.
    server.run(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
