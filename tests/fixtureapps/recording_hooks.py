"""Server hooks that record every call, for the hook tests.

Each call appends one line to the file named by $HOOK_LOG: ``HOOK PID PPID DETAIL``. The
lines of every process land in that one file in the order they happened (each is one
``write`` with O_APPEND). A hook named in $HOOK_RAISE (comma-separated) raises instead.
"""

import os


def _record(name, detail=""):
    if name in os.environ.get("HOOK_RAISE", "").split(","):
        raise RuntimeError(f"{name} failed on purpose")
    line = f"{name} {os.getpid()} {os.getppid()} {detail}".rstrip() + "\n"
    fd = os.open(os.environ["HOOK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def on_starting(server):
    _record("on_starting", f"addresses={len(server.addresses)} master={server.pid}")


def when_ready(server):
    _record("when_ready", f"addresses={len(server.addresses)} master={server.pid}")


def post_fork(server, worker):
    _record("post_fork", f"slot={worker.slot} master={server.pid} "
                         f"app={worker.app is not None}")


def post_worker_init(worker):
    worker.marker = f"from-init-{worker.pid}"  # the same object reaches pre_request
    _record("post_worker_init", f"slot={worker.slot} app={worker.app is not None}")


def worker_exit(server, worker):
    _record("worker_exit", f"slot={worker.slot} master={server.pid}")


def on_exit(server):
    _record("on_exit", f"master={server.pid}")


def pre_request(worker, environ):
    _record("pre_request", f"{environ['PATH_INFO']} marker={getattr(worker, 'marker', '-')}")


def post_request(worker, environ, status):
    _record("post_request", f"{environ['PATH_INFO']} status={status!r}")


def gunicorn_post_request(worker, req, environ, resp):
    """gunicorn's signature: greenserve refuses it at start-up."""


not_a_function = 42
