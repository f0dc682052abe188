"""Server hooks through the real command: which process runs each hook, when, with what.

The hooks are ``tests/fixtureapps/recording_hooks.py``: every call appends
``HOOK PID PPID DETAIL`` to one file shared by the master and its workers, so the file's
order is the order things happened.
"""

import signal

import pytest

import procs
from procs import environment, wait_until

ALL_HOOKS = ("on_starting", "when_ready", "post_fork", "post_worker_init", "worker_exit",
             "on_exit", "pre_request", "post_request")


def hook_flags(*names, function=None):
    return [arg for name in names for arg in
            (f"--{name.replace('_', '-')}", f"recording_hooks:{function or name}")]


@pytest.fixture
def hook_log(tmp_path):
    return tmp_path / "hooks.log"


@pytest.fixture
def processes(tmp_path):
    with procs.Processes(cwd=tmp_path) as started:
        yield started


def records(path):
    """The recorded calls: [(hook, pid, ppid, detail)], in order."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        hook, pid, ppid, *detail = line.split(" ", 3)
        rows.append((hook, int(pid), int(ppid), detail[0] if detail else ""))
    return rows


def run(args, cwd, env):
    return procs.run(procs.greenserve_command(*args), cwd=cwd, env=env)


def assert_user_error(result, message):
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"greenserve: error: {message}"


# -- each hook in its process, at its time ------------------------------------------------------

def test_every_hook_under_a_master_with_two_workers(processes, hook_log):
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve("parity_app:app", "-b", "127.0.0.1:0", "-w", "2",
                                  *hook_flags(*ALL_HOOKS), env=env)
    address = server.address()
    master = server.pid
    wait_until(lambda: any(row[0] == "when_ready" for row in records(hook_log)),
               what="when_ready")
    status, body, _ = procs.get(address, "/pid")
    assert status == 200
    served_by = int(body.split()[0])
    wait_until(lambda: any(row[0] == "post_request" for row in records(hook_log)),
               what="post_request")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0

    rows = records(hook_log)
    hooks = [row[0] for row in rows]
    # The master's hooks: first, once every worker is ready, and last.
    assert hooks[0] == "on_starting" and rows[0][1] == master
    assert rows[0][3] == f"addresses=0 master={master}"  # before the listeners are bound
    assert hooks[-1] == "on_exit" and rows[-1][1] == master
    ready = hooks.index("when_ready")
    assert rows[ready][1] == master and rows[ready][3] == f"addresses=1 master={master}"
    assert hooks.count("when_ready") == 1

    # Each worker: post_fork (no app yet), post_worker_init (app loaded), before when_ready;
    # worker_exit at the end; all in the worker's own process, a child of the master.
    workers = {row[1] for row in rows if row[0] == "post_fork"}
    assert len(workers) == 2 and master not in workers
    for pid in workers:
        own = [row for row in rows if row[1] == pid]
        assert [row[0] for row in own if row[0] not in ("pre_request", "post_request")] == [
            "post_fork", "post_worker_init", "worker_exit"]
        assert all(row[2] == master for row in own)
        assert own[0][3].endswith(f"master={master} app=False")
        assert own[1][3].endswith("app=True")
        assert rows.index(own[1]) < ready
    assert {row[3] for row in rows if row[0] in ("post_fork", "post_worker_init")} >= {
        "slot=0 app=True", "slot=1 app=True"}

    # The request's hooks ran in the worker that answered, around the request, and
    # pre_request saw what post_worker_init left on the same worker object.
    pre = [row for row in rows if row[0] == "pre_request"]
    post = [row for row in rows if row[0] == "post_request"]
    assert [(row[1], row[3]) for row in pre] == [
        (served_by, f"/pid marker=from-init-{served_by}")]
    assert [(row[1], row[3]) for row in post] == [(served_by, "/pid status='200 OK'")]
    assert rows.index(pre[0]) < rows.index(post[0])


def test_hooks_in_a_single_process(processes, hook_log):
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve(
        "parity_app:app", "-b", "127.0.0.1:0",
        *hook_flags("on_starting", "when_ready", "on_exit", "pre_request", "post_request"),
        env=env)
    address = server.address()
    assert server.listening()["pid"] == str(server.pid)  # no master was started
    assert procs.get(address, "/boom")[0] == 500
    wait_until(lambda: any(row[0] == "post_request" for row in records(hook_log)),
               what="post_request")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0
    rows = records(hook_log)
    assert [row[0] for row in rows] == ["on_starting", "when_ready", "pre_request",
                                        "post_request", "on_exit"]
    assert {row[1] for row in rows} == {server.pid}
    assert rows[1][3] == f"addresses=1 master={server.pid}"
    # The app raised before it called start_response: post_request hears None.
    assert rows[3][3] == "/boom status=None"


@pytest.mark.parametrize("hook", ["post_fork", "post_worker_init", "worker_exit"])
def test_a_worker_hook_starts_a_master(processes, hook_log, hook):
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve("parity_app:app", "-b", "127.0.0.1:0", *hook_flags(hook),
                                  env=env)
    server.wait_for(rf"starting a master process \(as --supervise does\): "
                    rf"--{hook.replace('_', '-')} needs one")
    server.wait_for(r"worker 0 \(pid \d+\) booted")
    assert procs.get(server.address(), "/")[0] == 200
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert [row[0] for row in records(hook_log)] == [hook]


def test_with_preload_post_fork_already_has_the_app(processes, hook_log):
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve("parity_app:app", "-b", "127.0.0.1:0", "--preload",
                                  *hook_flags("post_fork"), env=env)
    server.address()
    wait_until(lambda: records(hook_log), what="post_fork")
    assert records(hook_log)[0][3] == f"slot=0 master={server.pid} app=True"


def test_hooks_from_the_config_file_in_gunicorn_spelling(processes, hook_log, tmp_path):
    (tmp_path / "gs.toml").write_text(
        'post_fork = "recording_hooks:post_fork"\n'
        'when-ready = "recording_hooks:when_ready"\n')
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve("parity_app:app", "-b", "127.0.0.1:0", "-c", "gs.toml",
                                  env=env)
    server.address()
    wait_until(lambda: [row[0] for row in records(hook_log)] == ["post_fork", "when_ready"],
               what="post_fork then when_ready")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0


def test_post_request_keeps_a_file_wrapper_response_whole(processes, hook_log):
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve("parity_app:send_file", "-b", "127.0.0.1:0",
                                  *hook_flags("post_request"), env=env)
    status, body, _ = procs.get(server.address(), "/file")
    assert status == 200
    assert body == (procs.FIXTURE_APPS / "parity_app.py").read_text()
    wait_until(lambda: records(hook_log), what="post_request")
    assert records(hook_log)[0][3] == "/file status='200 OK'"


@pytest.mark.parametrize("app", ["flask_app", "wsproto_app"])
def test_request_hooks_around_a_websocket_hand_over(processes, hook_log, app):
    websocket = pytest.importorskip("websocket")  # websocket-client
    env = environment(HOOK_LOG=str(hook_log))
    server = processes.greenserve(f"ws_apps:{app}", "-b", "127.0.0.1:0",
                                  *hook_flags("pre_request", "post_request"), env=env)
    host, port = server.address()
    path = "/echo" if app == "flask_app" else "/"
    ws = websocket.create_connection(f"ws://{host}:{port}{path}", timeout=procs.WAIT)
    try:
        ws.send("through the hooks")
        assert ws.recv() == "through the hooks"
    finally:
        ws.close()
    wait_until(lambda: [row[0] for row in records(hook_log)] == ["pre_request",
                                                                 "post_request"],
               what="pre_request then post_request")
    # flask-sock ends with gunicorn's StopIteration and never calls start_response; the
    # wsproto app passes its own 101 to start_response.
    expected = "None" if app == "flask_app" else "'101 Switching Protocols'"
    assert records(hook_log)[1][3] == f"{path} status={expected}"


# -- hooks that raise --------------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("hook", ["on_starting", "when_ready", "post_fork",
                                  "post_worker_init"])
def test_a_hook_raising_at_start_up_exits_2(tmp_path, hook_log, hook, workers):
    env = environment(HOOK_LOG=str(hook_log), HOOK_RAISE=hook)
    result = run(["parity_app:app", "-b", "127.0.0.1:0", "-w", workers, *hook_flags(hook)],
                 tmp_path, env)
    assert_user_error(result, f"{hook} hook recording_hooks:{hook} raised RuntimeError: "
                              f"{hook} failed on purpose")
    # The hook's own traceback is in the log, ending in the hook's line.
    assert f"[ERROR] {hook} hook recording_hooks:{hook} raised" in result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert 'recording_hooks.py", line' in result.stderr


def test_hooks_raising_while_serving_are_logged_and_serving_goes_on(processes, hook_log):
    env = environment(HOOK_LOG=str(hook_log), HOOK_RAISE="pre_request,post_request,"
                                                         "worker_exit,on_exit")
    server = processes.greenserve(
        "parity_app:app", "-b", "127.0.0.1:0", "--supervise",
        *hook_flags("pre_request", "post_request", "worker_exit", "on_exit"), env=env)
    address = server.address()
    server.wait_for(r"worker 0 \(pid \d+\) booted")
    assert procs.get(address, "/")[:2] == (200, "ok")
    server.wait_for(r"\[ERROR\] post_request hook recording_hooks:post_request raised")
    assert procs.get(address, "/")[:2] == (200, "ok")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0
    text = server.output()
    for hook in ("pre_request", "post_request", "worker_exit", "on_exit"):
        assert f"[ERROR] {hook} hook recording_hooks:{hook} raised" in text
    assert "RuntimeError: worker_exit failed on purpose" in text


# -- bad hook names ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--post-fork", "nocolon"],
     "post-fork: 'nocolon' from the command line must name a function as MODULE:FUNCTION "
     "(e.g. myhooks:post_fork)"),
    (["--on-starting", "no_such_hooks:on_starting"],
     "hook on_starting: no module named 'no_such_hooks'"),
    (["--when-ready", "recording_hooks:when_redy"],
     "hook when_ready: module 'recording_hooks' has no attribute 'when_redy' (did you mean "
     "'when_ready'?)"),
    (["--post-request", "recording_hooks:gunicorn_post_request"],
     "hook post_request: recording_hooks:gunicorn_post_request cannot be called as "
     "post_request(worker, environ, status)"),
    (["--on-exit", "recording_hooks:not_a_function"],
     "hook on_exit: recording_hooks:not_a_function is not a function"),
    # A worker's hook is imported in the worker; its error still stops the start-up.
    (["--post-worker-init", "recording_hooks:nope"],
     "hook post_worker_init: module 'recording_hooks' has no attribute 'nope'"),
])
def test_bad_hook_names(tmp_path, hook_log, args, message):
    result = run(["parity_app:app", "-b", "127.0.0.1:0", *args], tmp_path,
                 environment(HOOK_LOG=str(hook_log)))
    assert_user_error(result, message)
    assert "Traceback" not in result.stderr
    assert not hook_log.exists()


def test_check_config_imports_every_hook(tmp_path, hook_log):
    env = environment(HOOK_LOG=str(hook_log))
    good = run(["parity_app:app", "--check-config", *hook_flags(*ALL_HOOKS)], tmp_path, env)
    assert good.returncode == 0, good.stderr
    bad = run(["parity_app:app", "--check-config", "--worker-exit",
               "recording_hooks:worker_exitt"], tmp_path, env)
    assert_user_error(bad, "hook worker_exit: module 'recording_hooks' has no attribute "
                           "'worker_exitt' (did you mean 'worker_exit'?)")
    assert not hook_log.exists()  # checked, never called
