"""Unix socket permissions (--umask, --socket-mode) and switching user (--user, --group).

Real sockets, real processes, real users: the checks as root run greenserve as root and read
/proc/PID/status of the processes it became; another user connects with curl.
"""

import os
import pwd
import grp
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import procs
from greenserve.config import Config, load_config
from greenserve.errors import ConfigError
from greenserve.listeners import (Identity, create_listeners, resolve_identity, unreadable_part,
                                  unix_socket_mode)
from procs import WAIT, get, wait_until

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="switching users needs root")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def processes(tmp_path):
    with procs.Processes(cwd=tmp_path) as started:
        yield started


@pytest.fixture
def shared_dir():
    """A directory other users may reach (tmp_path's parents are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="gs-sock-"))
    path.chmod(0o711)  # others may reach files inside by name, not list them
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# -- the mode of unix sockets ---------------------------------------------------------------------

@pytest.mark.parametrize("settings, expected", [
    ({}, 0o777),                       # gunicorn's umask 0: any local user may connect
    ({"umask": "007"}, 0o770),
    ({"umask": "0o022"}, 0o755),
    ({"umask": "077", "socket_mode": "660"}, 0o660),  # the explicit mode wins
    ({"socket_mode": "0600"}, 0o600),
])
def test_unix_socket_mode_from_settings(settings, expected):
    assert unix_socket_mode(load_config(cli=settings)) == expected


@pytest.mark.parametrize("raw", ["8", "0o1000", "rwx", "-1", ""])
def test_bad_modes_are_refused(raw):
    with pytest.raises(ConfigError, match=r"^umask: .* must be an octal mode"):
        Config().replace(umask=raw)


@pytest.mark.parametrize("wanted", [0o777, 0o770, 0o660, 0o600])
def test_socket_file_gets_exactly_the_mode(tmp_path, wanted):
    path = tmp_path / "app.sock"
    before = os.umask(0o022)
    try:
        (sock,) = create_listeners([f"unix:{path}"], 16, unix_mode=wanted)
        with sock:
            assert mode(path) == wanted
            assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert os.umask(0o022) == 0o022  # the process umask is left as it was
    finally:
        os.umask(before)


@pytest.mark.parametrize("args, expected", [((), 0o777), (("--umask", "007"), 0o770),
                                            (("--socket-mode", "660"), 0o660)])
def test_command_creates_the_socket_with_the_mode(processes, tmp_path, args, expected):
    path = tmp_path / "gs.sock"
    server = processes.greenserve("webapp:app", "-b", f"unix:{path}", *args)
    server.wait_for(re.escape(f"Listening at unix:{path}"))
    assert mode(path) == expected


def curl_unix_as(user, path):
    """curl over the unix socket as another user: (exit status, body or error)."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", str(WAIT), "--unix-socket", str(path), "http://x/who-am-i"],
        user=user.pw_uid, group=user.pw_gid, extra_groups=[], capture_output=True, text=True,
        timeout=WAIT + 5)
    return result.returncode, result.stdout + result.stderr


@needs_root
def test_another_user_connects_by_default_and_not_with_a_private_mode(processes, shared_dir):
    # The socket nginx (running as www-data) gets "permission denied" on, unless it may write.
    open_path, private_path = shared_dir / "open.sock", shared_dir / "private.sock"
    server = processes.greenserve("webapp:app", "-b", f"unix:{open_path}")
    server.wait_for(re.escape(f"Listening at unix:{open_path}"))
    private = processes.greenserve("webapp:app", "-b", f"unix:{private_path}",
                                   "--socket-mode", "600")
    private.wait_for(re.escape(f"Listening at unix:{private_path}"))

    status, output = curl_unix_as(NOBODY, open_path)
    assert (status, output.split(" from ")[0]) == (0, "hello /who-am-i")
    status, output = curl_unix_as(NOBODY, private_path)
    assert status == 7, output  # curl's "could not connect": no write permission on it


# -- switching user ---------------------------------------------------------------------------

def test_resolve_identity():
    assert resolve_identity(None, None) is None
    assert resolve_identity("nobody", None, euid=0, check_access=False) == Identity(NOBODY.pw_uid, NOBODY.pw_gid,
                                                                 "nobody")
    www = grp.getgrnam("www-data").gr_gid
    assert resolve_identity("nobody", "www-data", euid=0, check_access=False) == Identity(NOBODY.pw_uid, www,
                                                                      "nobody")
    assert resolve_identity(str(NOBODY.pw_uid), None, euid=0, check_access=False).name == "nobody"
    # An id without a passwd entry, as containers often run: its group is the same number.
    assert resolve_identity("4000123", None, euid=0, check_access=False) == Identity(4000123, 4000123, None)
    assert resolve_identity(None, "www-data", euid=0, check_access=False) == Identity(os.getuid(), www, None)


@pytest.mark.parametrize("user, group, message", [
    ("gs-no-such-user", None, "--user gs-no-such-user: no such user on this system"),
    (None, "gs-no-such-group", "--group gs-no-such-group: no such group on this system"),
    ("4294967295", None, "--user 4294967295: not a valid user id"),
    ("nobody", None, "--user/--group: switching to user 'nobody' needs root, and greenserve "
                     "runs as uid 1000 (start it as root, or leave --user and --group out)"),
])
def test_resolve_identity_errors(user, group, message):
    with pytest.raises(ConfigError) as caught:
        resolve_identity(user, group, euid=1000 if "needs root" in message else 0,
                         check_access=False)
    assert str(caught.value) == message


@pytest.mark.parametrize("raw", ["a b", "a:b", "", "../x"])
def test_malformed_user_names_are_refused(raw):
    if raw == "":  # empty means "not set"
        assert Config().replace(user=raw).user is None
        return
    with pytest.raises(ConfigError, match=r"^user: .* must be a user or group name"):
        Config().replace(user=raw)


def readable_by_others(path):
    """Whether another user can reach ``path`` (every directory on the way searchable)."""
    path = Path(path).resolve()
    return all(os.stat(part).st_mode & stat.S_IXOTH for part in [path, *path.parents])


@pytest.fixture
def python_for_all(shared_dir):
    """(argv prefix, environment) running this Python so that other users can import from it.

    After switching user the server still imports (the app, its libraries). Where this
    machine's Python is private to root (installed under /root), the test runs it from a
    bind mount of its prefix in a directory others may reach, in a mount namespace of the
    command's own: nothing changes for the rest of the machine.
    """
    if readable_by_others(sys.base_prefix) and readable_by_others(os.__file__):
        return [sys.executable], procs.environment()
    in_venv = sys.prefix != sys.base_prefix
    if shutil.which("unshare") is None or (in_venv and not readable_by_others(sys.prefix)):
        pytest.skip("this Python is private to root and cannot be mounted elsewhere here")
    view = shared_dir / "python"
    view.mkdir(mode=0o755)
    site = [str(view / Path(entry).relative_to(sys.base_prefix)) for entry in sys.path
            if entry.startswith(sys.base_prefix + os.sep) and entry.endswith("-packages")]
    # In a virtual environment (as CI runs) its own packages are readable where they are.
    site += [entry for entry in sys.path if in_venv and entry.endswith("-packages")
             and entry.startswith(sys.prefix + os.sep)]
    # A virtual environment's python is a link to the base one: run that, from the view.
    executable = Path(os.path.realpath(sys.executable)) if in_venv else Path(sys.executable)
    mount = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" "$0" && shift && exec "$@"', str(view), sys.base_prefix,
             str(view / executable.relative_to(sys.base_prefix))]
    return mount, procs.environment(pythonpath=site)


@pytest.fixture
def start_as_root(processes, shared_dir, python_for_all):
    """Start ``greenserve ARGS`` as root, in a directory the user it becomes may read."""
    python, env = python_for_all

    def start(*args):
        return processes.start([*python, "-m", "greenserve", *map(str, args)], cwd=shared_dir,
                               env=env)
    return start


def ids(pid):
    """(uids, gids, groups) from /proc/PID/status: real, effective, saved, filesystem."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return (tuple(map(int, fields["Uid"].split())), tuple(map(int, fields["Gid"].split())),
            set(map(int, fields["Groups"].split())))


def children(pid):
    return [int(child) for child in
            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@needs_root
def test_user_switch_in_one_process(start_as_root, shared_dir):
    path = shared_dir / "gs.sock"
    www = grp.getgrnam("www-data").gr_gid
    server = start_as_root("webapp:app", "-b", "127.0.0.1:0", "-b", f"unix:{path}",
                           "--user", "nobody", "--group", "www-data", "--socket-mode", "660")
    address = server.address()
    assert get(address, "/x")[:2] == (200, f"hello /x from {server.pid}")
    uids, gids, groups = ids(server.pid)
    assert uids == (NOBODY.pw_uid,) * 4
    assert gids == (www,) * 4
    # The user's own supplementary groups plus the group asked for; root's are gone.
    assert groups == set(os.getgrouplist("nobody", www))
    assert 0 not in groups
    # The socket was handed over before serving: nginx in group www-data may connect.
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, www,
                                                                     0o660)
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0


@needs_root
def test_workers_switch_user_and_the_master_keeps_root(start_as_root):
    server = start_as_root("webapp:app", "-b", "127.0.0.1:0", "--workers", "2",
                           "--user", "nobody")
    address = server.address()
    server.wait_for("booted|started worker", count=2)
    workers = wait_until(lambda: len(children(server.pid)) == 2 and children(server.pid),
                         what="two workers")
    for pid in workers:
        wait_until(lambda: ids(pid)[0][0] == NOBODY.pw_uid, what=f"worker {pid} to switch")
        uids, gids, groups = ids(pid)
        assert uids == (NOBODY.pw_uid,) * 4 and gids == (NOBODY.pw_gid,) * 4
        assert groups == set(os.getgrouplist("nobody", NOBODY.pw_gid))
    assert ids(server.pid)[0] == (0, 0, 0, 0)
    status, body, _ = get(address, "/x")
    assert status == 200 and int(body.rsplit(" ", 1)[1]) in workers
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0


@needs_root
def test_group_alone_drops_root_supplementary_groups(start_as_root):
    www = grp.getgrnam("www-data").gr_gid
    server = start_as_root("webapp:app", "-b", "127.0.0.1:0", "--group", "www-data")
    server.address()
    uids, gids, groups = ids(server.pid)
    assert uids == (0,) * 4 and gids == (www,) * 4 and groups == {www}


def test_refused_when_not_root(request, tmp_path):
    if ROOT:
        # Become another user first, as an ordinary user's shell would be.
        python, env = request.getfixturevalue("python_for_all")
        code = (f"import os, sys; os.setgroups([]); os.setresgid(*[{NOBODY.pw_gid}] * 3); "
                f"os.setresuid(*[{NOBODY.pw_uid}] * 3); from greenserve.cli import main; "
                f"sys.exit(main())")
        argv, uid, cwd = [*python, "-c", code], NOBODY.pw_uid, request.getfixturevalue(
            "shared_dir")
    else:
        argv, uid, cwd, env = procs.greenserve_command(), os.geteuid(), tmp_path, None
    result = procs.run([*argv, "webapp:app", "-b", "127.0.0.1:0", "--user", "www-data"],
                       cwd=cwd, env=env)
    assert result.returncode == 2
    assert result.stderr == (f"greenserve: error: --user/--group: switching to user "
                             f"'www-data' needs root, and greenserve runs as uid {uid} (start "
                             f"it as root, or leave --user and --group out)\n")


def test_unreadable_parts_are_found_as_the_user_would_meet_them():
    with tempfile.TemporaryDirectory() as top:  # in /tmp: every directory above is passable
        os.chmod(top, 0o755)
        outer = Path(top) / "outer"
        inner = outer / "inner"
        inner.mkdir(parents=True)
        inner.chmod(0o755)
        uid, groups = 4000123, {4000123}  # no owner, no group: the "other" bits apply
        for mode, expected in [(0o755, None), (0o711, None), (0o700, outer), (0o744, outer)]:
            outer.chmod(mode)
            assert unreadable_part(inner, uid, groups) == (
                None if expected is None else str(expected)), oct(mode)
        outer.chmod(0o755)
        inner.chmod(0o711)  # passable, but its listing (the modules in it) is not readable
        assert unreadable_part(inner, uid, groups) == str(inner)
        assert unreadable_part(inner, uid, groups, listed=False) is None
        assert unreadable_part(inner, os.stat(inner).st_uid, groups) is None  # the owner


@needs_root
def test_a_user_that_could_not_import_the_app_is_refused_before_switching(tmp_path):
    # pytest's directories are private to root: nobody could import the app from here.
    private = tmp_path / "app"
    private.mkdir(mode=0o700)
    shutil.copy(procs.FIXTURE_APPS / "webapp.py", private / "webapp.py")
    result = procs.run([*procs.greenserve_command(), "webapp:app", "-b", "127.0.0.1:0",
                        "--user", "nobody"], cwd=private)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("greenserve: error: --user/--group: user 'nobody' cannot "
                                    "read /")
    assert result.stderr.count("\n") == 1


@needs_root
def test_unknown_user_is_one_line_and_exit_2(tmp_path):
    result = procs.run([*procs.greenserve_command(), "webapp:app", "-b", "127.0.0.1:0",
                        "--user", "gs-no-such-user"], cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2, "greenserve: error: --user gs-no-such-user: no such user on this system\n")
