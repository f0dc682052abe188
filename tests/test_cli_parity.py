"""What a gunicorn user reaches for, through the real command: --preload, --pid, -e, --name,
--check-config, --print-config, gunicorn's option names, the options that need a master,
app factories named without their call, and settings that must not pass in silence."""

import re
import signal
import socket
import subprocess

import pytest

import procs
from greenserve.cli import build_parser
from greenserve.gunicorn_options import GUNICORN_ABSENT, GUNICORN_SPELLINGS
from procs import environment, wait_until

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


@pytest.fixture
def processes(tmp_path):
    with procs.Processes(cwd=tmp_path) as started:
        yield started


def run(args, cwd, env=None):
    return procs.run(procs.greenserve_command(*args), cwd=cwd, env=env)


def assert_one_line_error(result, message):
    """Exit 2 and exactly one line on stderr: ``greenserve: error: MESSAGE``."""
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"greenserve: error: {message}"]


def proc_title(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as stream:
        return stream.read().replace(b"\0", b" ").decode().strip()


# -- gunicorn's option names -------------------------------------------------------------------

@pytest.mark.parametrize("args, spelling", [
    (["--access-logfile", "-"], "--access-log"),
    (["--access-logformat", "%(h)s"], "--access-log-format"),
    (["--error-logfile", "err.log"], "--error-log"),
    (["--log-file=err.log"], "--error-log"),
    (["--limit-request-field_size", "100"], "--limit-request-field-size"),
    (["--proxy-allow-from", "127.0.0.1"], "--proxy-allow-ips"),
    (["--log-config-json", "log.json"], "--log-config"),
    (["-v"], "--version"),
])
def test_gunicorn_spellings_get_a_hint(tmp_path, args, spelling):
    result = run(["webapp:app", *args], tmp_path)
    flag = args[0].partition("=")[0]
    assert_one_line_error(result, f"unknown option {flag} (gunicorn's): greenserve spells it "
                                  f"{spelling}")


@pytest.mark.parametrize("args", [
    ["-k", "gevent"], ["-kgevent"], ["--worker-class", "gevent"], ["--threads", "4"],
    ["-D"], ["--daemon"], ["--initgroups"], ["--paste", "x.ini"], ["--spew"],
    ["--statsd-host", "localhost:8125"], ["--reload-engine", "inotify"], ["--no-sendfile"],
    ["--strip-header-spaces"], ["--worker-tmp-dir", "/dev/shm"],
    ["--do-handshake-on-connect"], ["--suppress-ragged-eofs"],
])
def test_gunicorn_options_greenserve_lacks_say_why(tmp_path, args):
    result = run(["webapp:app", *args], tmp_path)
    flag = args[0] if args[0].startswith("--") else args[0][:2]
    assert_one_line_error(result, f"unknown option {flag} (gunicorn's): {GUNICORN_ABSENT[flag]}")


def test_worker_class_hint_names_the_worker_connections_translation(tmp_path):
    result = run(["webapp:app", "-k", "gevent", "--worker-connections", "500"], tmp_path)
    assert result.returncode == 2
    assert "-k gevent --worker-connections N is --max-connections N" in result.stderr
    # --worker-connections itself is accepted: it is --max-connections.
    shown = run(["--print-config", "--worker-connections", "500"], tmp_path)
    assert "\nmax-connections = 500\n" in shown.stdout


def test_several_gunicorn_options_get_a_line_each(tmp_path):
    result = run(["webapp:app", "--access-logfile", "-", "--threads", "2"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "greenserve: error: unknown option --access-logfile (gunicorn's): greenserve spells "
        "it --access-log",
        f"greenserve: error: unknown option --threads (gunicorn's): "
        f"{GUNICORN_ABSENT['--threads']}"]


@pytest.mark.parametrize("line, reason", [
    ('accesslog = "-"', "greenserve spells it 'access-log'"),
    ("preload_app = true", "greenserve spells it 'preload'"),
    ("worker_connections = 100", "greenserve spells it 'max-connections'"),
    ('access_logfile = "-"', "greenserve spells it 'access-log'"),
    ('worker_class = "gevent"', GUNICORN_ABSENT["--worker-class"]),
    ("threads = 4", GUNICORN_ABSENT["--threads"]),
    ('pre_exec = "hooks:pre_exec"', "greenserve has no pre_exec hook: greenserve never "
                                    "re-executes itself (no SIGUSR2 binary upgrade)"),
    ('worker_int = "hooks:worker_int"', "greenserve has no worker_int hook: workers ignore "
                                        "SIGINT (the master decides); use worker-exit"),
])
def test_gunicorn_config_file_names_get_a_hint(tmp_path, line, reason):
    # A TOML file written from a gunicorn.conf.py keeps gunicorn's names; a did-you-mean
    # would point some of them at the wrong setting (worker_class -> workers, pre_exec ->
    # pre-request).
    (tmp_path / "gs.toml").write_text(line + "\n")
    key = line.partition(" ")[0]
    assert_one_line_error(run(["webapp:app", "-c", "gs.toml"], tmp_path),
                          f"config file gs.toml: unknown option '{key}' (gunicorn's): {reason}")


def test_other_unknown_options_get_one_line_with_a_suggestion(tmp_path):
    result = run(["webapp:app", "--workers-connections", "3"], tmp_path)
    assert_one_line_error(result, "unrecognized option --workers-connections (did you mean "
                                  "--worker-connections?) (see greenserve --help)")


def test_the_hint_tables_match_the_options_greenserve_has():
    known = build_parser()._option_string_actions
    for gunicorn, ours in GUNICORN_SPELLINGS.items():
        assert gunicorn not in known, gunicorn
        assert ours in known, (gunicorn, ours)  # a spelling names a real option
    for gunicorn, reason in GUNICORN_ABSENT.items():
        assert gunicorn not in known, f"{gunicorn} exists now: drop it from GUNICORN_ABSENT"
        assert "\n" not in reason and len(reason) < 200


def test_every_gunicorn_option_is_known_or_answered():
    """Each command-line option of the installed gunicorn is greenserve's too, or gets a
    hint; and the migration guide names each of gunicorn's settings."""
    gunicorn_config = pytest.importorskip("gunicorn.config")
    known = build_parser()._option_string_actions
    unanswered = [flag for setting in gunicorn_config.KNOWN_SETTINGS
                  for flag in setting.cli or ()
                  if flag not in known and flag not in GUNICORN_SPELLINGS
                  and flag not in GUNICORN_ABSENT]
    assert unanswered == []
    guide = (procs.REPO / "docs" / "migrating-from-gunicorn.md").read_text()
    missing = [setting.name for setting in gunicorn_config.KNOWN_SETTINGS
               if f"`{setting.name}`" not in guide and f"`{setting.name}(" not in guide]
    assert missing == []


@pytest.mark.parametrize("args, name, value", [
    (["--worker-connections", "7"], "max-connections", 7),
    (["-p", "run/gs.pid"], "pid", "run/gs.pid"),
    (["-e", "A=1", "--env", "B=two=2"], "env", ["A=1", "B=two=2"]),
    (["-n", "shop"], "name", "shop"),
    (["--preload"], "preload", True),
    (["--reload-extra-file", "a.html", "--reload-extra-file", "b.html"],
     "reload-extra-files", ["a.html", "b.html"]),
    (["--graceful-timeout", "3"], "graceful-timeout", 3.0),
    (["--max-requests", "100", "--max-requests-jitter", "10"], "max-requests", 100),
])
def test_gunicorn_options_greenserve_spells_the_same(tmp_path, args, name, value):
    result = run(["--print-config", *args], tmp_path)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout)[name] == value


# -- --print-config and --check-config ---------------------------------------------------------

def test_print_config_reads_back_the_same(tmp_path):
    (tmp_path / "gs.toml").write_text('workers = 3\naccess-log-format = "%(h)s \\"%(r)s\\""\n')
    first = run(["--print-config", "-c", "gs.toml", "-b", "unix:/tmp/x.sock", "-e", "K=v"],
                tmp_path, environment(GREENSERVE_KEEP_ALIVE="7"))
    assert first.returncode == 0, first.stderr
    document = tomllib.loads(first.stdout)
    assert document["workers"] == 3 and document["keep-alive"] == 7.0
    assert document["access-log-format"] == '%(h)s "%(r)s"'
    assert document["bind"] == ["unix:/tmp/x.sock"] and document["env"] == ["K=v"]
    assert "config" not in document and "print-config" not in document
    (tmp_path / "printed.toml").write_text(first.stdout)
    again = run(["--print-config", "-c", "printed.toml"], tmp_path)
    assert again.stdout == first.stdout


def test_print_config_writes_defaults_commented_out(tmp_path):
    # Written out, a default would count as given when read back: timeout = 30.0 would
    # start a master (an explicit --timeout needs one), workers = 1 would hide
    # WEB_CONCURRENCY.
    first = run(["--print-config", "--timeout", "20"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert tomllib.loads(first.stdout) == {"timeout": 20.0}
    lines = first.stdout.splitlines()
    assert "# workers = 1  (default)" in lines and "# keep-alive = 5.0  (default)" in lines
    (tmp_path / "printed.toml").write_text(run(["--print-config"], tmp_path).stdout)
    again = run(["--print-config", "-c", "printed.toml"], tmp_path,
                environment(WEB_CONCURRENCY="2"))
    assert again.returncode == 0, again.stderr
    assert "# workers = 2  (default)" in again.stdout.splitlines()
    assert tomllib.loads(again.stdout) == {}


def test_print_config_writes_modes_in_octal(tmp_path):
    first = run(["--print-config", "--umask", "022", "--socket-mode", "660"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert 'umask = "022"' in first.stdout.splitlines()
    assert 'socket-mode = "660"' in first.stdout.splitlines()
    (tmp_path / "printed.toml").write_text(first.stdout)
    assert run(["--print-config", "-c", "printed.toml"], tmp_path).stdout == first.stdout


def test_print_config_validates(tmp_path):
    assert_one_line_error(run(["--print-config", "-w", "0"], tmp_path),
                          "workers: '0' from the command line must be a whole number of at "
                          "least 1")


def test_check_config_loads_the_app_and_binds_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run(["parity_app:app", "--check-config", "-b", f"127.0.0.1:{port}"],
                     tmp_path, environment(LOAD_LOG=str(tmp_path / "loads")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "greenserve: configuration OK; parity_app:app loads\n"
    assert len((tmp_path / "loads").read_text().split()) == 1  # the app was imported


def test_check_config_prints_the_warnings_a_start_would_log(tmp_path):
    result = run(["webapp:app", "--check-config"], tmp_path,
                 environment(GREENSERVE_WORKRS="4"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "greenserve: warning: unknown environment variable GREENSERVE_WORKRS ignored (did you "
        "mean GREENSERVE_WORKERS?)"]
    assert result.stdout == "greenserve: configuration OK; webapp:app loads\n"


GUNICORN_CONF_WARNING = (
    "./gunicorn.conf.py is not read: greenserve takes its settings from the command line, "
    "GREENSERVE_* variables and a TOML file given with -c (see docs/migrating-from-gunicorn.md)")


def test_a_gunicorn_conf_py_left_in_the_directory_is_named_at_start_up(processes, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 4\n")
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0")
    server.wait_for(r"\[WARNING\] " + re.escape(GUNICORN_CONF_WARNING) + "$")
    assert procs.get(server.address())[0] == 200  # a warning, not an error
    checked = run(["webapp:app", "--check-config"], tmp_path)
    assert checked.returncode == 0
    assert checked.stderr.splitlines() == [f"greenserve: warning: {GUNICORN_CONF_WARNING}"]


def test_no_gunicorn_conf_py_warning_with_a_config_file(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 4\n")
    (tmp_path / "gs.toml").write_text("workers = 1\n")
    checked = run(["webapp:app", "--check-config", "-c", "gs.toml"], tmp_path)
    assert (checked.returncode, checked.stderr) == (0, "")


@pytest.mark.parametrize("args, message", [
    (["webapp:ap"], "module 'webapp' has no attribute 'ap' (did you mean 'app'?)"),
    (["webapp:create_app"], "webapp:create_app looks like an app factory: use "
                            "webapp:create_app()"),
    (["webapp:app", "--log-level", "loud"], "log-level: 'loud' from the command line must be "
                                            "one of debug, info, warning, error, critical"),
])
def test_check_config_fails_with_the_reason(tmp_path, args, message):
    assert_one_line_error(run([*args, "--check-config"], tmp_path), message)


@pytest.mark.parametrize("args, message", [
    (["-b", "8000"], "malformed address '8000' (expected HOST:PORT, [IPv6]:PORT, unix:/path "
                     "or fd://N)"),
    (["-b", "127.0.0.1:0", "-b", "127.0.0.1:99999"],
     "malformed address '127.0.0.1:99999' (expected HOST:PORT, [IPv6]:PORT, unix:/path or "
     "fd://N)"),
    (["--certfile", "missing.pem"], "--certfile missing.pem: no such file"),
    (["--keyfile", "key.pem"], "--keyfile needs --certfile (the server's certificate) to serve "
                               "HTTPS"),
    (["--capture-output"], "capture-output: needs --error-log FILE (without it the app's "
                           "output already goes to stdout and stderr)"),
    (["--error-log", "missing/error.log"], "error-log: cannot open missing/error.log: no such "
                                           "file or directory"),
    (["--access-log", "missing/access.log"], "access-log: cannot open missing/access.log: no "
                                             "such file or directory"),
    (["--access-log", "."], "access-log: cannot open .: is a directory"),
    (["-b", "unix:missing/app.sock"], "bind unix:missing/app.sock: no such directory"),
    (["--pid", "/nonexistent-folder/gs.pid"], "pid file /nonexistent-folder/gs.pid: no such "
                                              "file or directory"),
])
def test_check_config_refuses_what_a_start_refuses(tmp_path, args, message):
    # --check-config must not say OK to settings the real start then stops on.
    start = run(["webapp:app", *args], tmp_path)
    assert_one_line_error(start, message)
    assert_one_line_error(run(["webapp:app", "--check-config", *args], tmp_path), message)


def test_check_config_creates_no_log_file(tmp_path):
    result = run(["webapp:app", "--check-config", "--error-log", "e.log", "--access-log",
                  "a.log"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "e.log").exists() and not (tmp_path / "a.log").exists()


def test_check_config_refuses_an_unknown_user(tmp_path):
    args = ["webapp:app", "--user", "no-such-user-greenserve"]
    start = run(args, tmp_path)
    assert start.returncode == 2
    message = start.stderr.strip().splitlines()[-1].removeprefix("greenserve: error: ")
    assert "no-such-user-greenserve" in message
    assert_one_line_error(run([*args, "--check-config"], tmp_path), message)


# -- --pid, -e, --name -------------------------------------------------------------------------

def test_pid_file_is_written_and_removed(processes, tmp_path):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "--pid", "gs.pid")
    server.address()
    assert (tmp_path / "gs.pid").read_text() == f"{server.pid}\n"  # the master's
    second = run(["webapp:app", "-b", "127.0.0.1:0", "--pid", "gs.pid"], tmp_path)
    assert_one_line_error(second, f"pid file {tmp_path / 'gs.pid'} names process "
                                  f"{server.pid}, which is running: is greenserve already "
                                  f"running? (if not, remove the file)")
    assert (tmp_path / "gs.pid").read_text() == f"{server.pid}\n"
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0
    assert not (tmp_path / "gs.pid").exists()


def test_a_stale_pid_file_is_replaced(processes, tmp_path):
    gone = _dead_pid()
    (tmp_path / "gs.pid").write_text(f"{gone}\n")
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--pid", "gs.pid")
    server.address()
    assert (tmp_path / "gs.pid").read_text() == f"{server.pid}\n"


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_pid_file_in_a_missing_directory(tmp_path):
    assert_one_line_error(run(["webapp:app", "--pid", "no/such/dir/gs.pid"], tmp_path),
                          f"pid file {tmp_path / 'no/such/dir/gs.pid'}: no such file or "
                          f"directory")


def test_env_reaches_the_app_in_every_worker(processes, tmp_path):
    server = processes.greenserve("parity_app:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "-e", "SHOP_MODE=a=b c", "--env", "EMPTY=")
    address = server.address()
    server.wait_for(r"worker 1 \(pid \d+\) booted")
    for _ in range(4):
        assert procs.get(address, "/env?SHOP_MODE")[1] == "a=b c"
        assert procs.get(address, "/env?EMPTY")[1] == ""


@pytest.mark.parametrize("pair", ["NOEQUALS", "=value", "1ABC=x", "A-B=x"])
def test_bad_env_pairs(tmp_path, pair):
    assert_one_line_error(run(["webapp:app", "-e", pair], tmp_path),
                          f"env: {pair!r} from the command line must be KEY=VALUE, KEY a "
                          f"letter or '_' then letters, digits or '_'")


def test_process_titles(processes):
    pytest.importorskip("setproctitle")
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "-w", "2", "-n", "shop")
    address = server.address()
    server.wait_for(r"worker 1 \(pid \d+\) booted")
    assert proc_title(server.pid) == "greenserve: master [shop]"
    worker = int(procs.get(address, "/who")[1].split()[1])
    assert proc_title(worker) == "greenserve: worker [shop]"
    single = processes.greenserve("webapp:app", "-b", "127.0.0.1:0")
    single.address()
    assert proc_title(single.pid) == "greenserve: server [webapp:app]"


# -- --preload ---------------------------------------------------------------------------------

def test_preload_loads_the_app_once_in_the_master(processes, tmp_path):
    loads = tmp_path / "loads"
    server = processes.greenserve("parity_app:app", "-b", "127.0.0.1:0", "-w", "2",
                                  "--preload", env=environment(LOAD_LOG=str(loads)))
    address = server.address()
    server.wait_for(r"serving parity_app:app \(preloaded in the master\)")
    server.wait_for(r"worker 1 \(pid \d+\) booted")
    assert loads.read_text() == f"{server.pid}\n"
    workers = set()
    for _ in range(400):
        pid, loaded_in = map(int, procs.get(address, "/pid")[1].split())
        assert loaded_in == server.pid
        workers.add(pid)
        if len(workers) == 2:
            break
    assert server.pid not in workers and len(workers) == 2

    # SIGHUP replaces the workers, from the master's copy: said out loud, and still loaded once.
    server.signal(signal.SIGHUP)
    server.wait_for(r"\[WARNING\] SIGHUP received; with --preload the app was loaded once in "
                    r"the master: 2 new worker\(s\) start from it, so code changes are NOT "
                    r"picked up \(restart greenserve for that\)")
    server.wait_for(r"worker 1 \(pid \d+\) booted", count=2)
    wait_until(lambda: int(procs.get(address, "/pid")[1].split()[0]) not in workers,
               what="a new worker answering")
    assert loads.read_text() == f"{server.pid}\n"
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0


def test_preload_patches_the_master_before_loading(processes):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", "--preload")
    address = server.address()
    server.wait_for(r"starting a master process \(as --supervise does\): --preload needs one")
    assert procs.get(address, "/patched")[1] == "True"


def test_preload_of_a_failing_app_exits_2(tmp_path):
    result = run(["webapp:broken_factory()", "--preload", "-w", "2"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "greenserve: error: factory webapp:broken_factory() raised RuntimeError: cannot reach "
        "the database")
    assert "started worker" not in result.stderr  # nothing was forked


# -- options that need a master ----------------------------------------------------------------

@pytest.mark.parametrize("args, reason", [
    (["--timeout", "30"], "--timeout needs one"),
    (["--max-requests", "1000"], "--max-requests needs one"),
    (["-t", "5", "--max-requests", "9"], "--timeout and --max-requests need one"),
])
def test_options_that_need_a_master_start_one(processes, args, reason):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", *args)
    server.wait_for(rf"starting a master process \(as --supervise does\): {reason}")
    server.wait_for(r"worker 0 \(pid \d+\) booted")
    assert server.listening()["pid"] == str(server.pid)
    assert procs.get(server.address(), "/who")[1].split()[1] != str(server.pid)


def test_timeout_zero_or_absent_keeps_one_process(processes):
    for args in ([], ["--timeout", "0"]):
        server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0", *args)
        address = server.address()
        assert procs.get(address, "/who")[1].split()[1] == str(server.pid)
        assert not server.matches("starting a master process")


# -- app factories and bad settings ------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ("webapp:create_app", "webapp:create_app looks like an app factory: use "
                          "webapp:create_app()"),
    ("parity_app:create_app", "parity_app:create_app looks like an app factory: use "
                              "parity_app:create_app()"),
    ("webapp:spin_forever", "webapp:spin_forever looks like an app factory: use "
                            "webapp:spin_forever()"),
    ("recording_hooks:post_request", "recording_hooks:post_request cannot be called with "
                                     "(environ, start_response), so it is not a WSGI "
                                     "application"),
])
def test_app_factory_without_its_call_is_refused(tmp_path, spec, message):
    assert_one_line_error(run([spec, "-b", "127.0.0.1:0"], tmp_path), message)


@pytest.mark.parametrize("toml, message", [
    ("workers = 4.5", "workers: 4.5 from config file gs.toml must be a whole number"),
    ("workers = 4.0", "workers: 4.0 from config file gs.toml must be a whole number"),
    ("max-requests = 1e3", "max-requests: 1000.0 from config file gs.toml must be a whole "
                           "number"),
    ("timeout = -1", "timeout: -1 from config file gs.toml must be a number of seconds, 0 or "
                     "more"),
])
def test_bad_numbers_in_the_config_file(tmp_path, toml, message):
    (tmp_path / "gs.toml").write_text(toml + "\n")
    assert_one_line_error(run(["webapp:app", "-c", "gs.toml"], tmp_path), message)


@pytest.mark.parametrize("args, env, message", [
    (["-t", "-1"], {}, "timeout: '-1' from the command line must be a number of seconds, 0 "
                       "or more"),
    ([], {"GREENSERVE_TIMEOUT": "-5"}, "timeout: '-5' from env must be a number of seconds, "
                                       "0 or more"),
    ([], {"GREENSERVE_WORKERS": "2.5"}, "workers: '2.5' from env is not a valid number"),
])
def test_bad_numbers_elsewhere(tmp_path, args, env, message):
    assert_one_line_error(run(["webapp:app", *args], tmp_path, environment(**env)), message)


def test_a_gunicorn_python_config_file_gets_a_pointer(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 4\nbind = '0.0.0.0:8000'\n")
    assert_one_line_error(run(["webapp:app", "-c", "gunicorn.conf.py"], tmp_path),
                          "config file gunicorn.conf.py: greenserve reads TOML, not Python: "
                          "put the settings in a .toml file and name hook functions as "
                          "MODULE:FUNCTION (e.g. post-fork = \"myhooks:post_fork\")")


def test_unknown_greenserve_variables_are_warned_about(processes):
    server = processes.greenserve("webapp:app", "-b", "127.0.0.1:0",
                                  env=environment(GREENSERVE_WORKER="2",
                                                  GREENSERVE_ZZZ_UNRELATED="1"))
    server.address()
    server.wait_for(r"\[WARNING\] unknown environment variable GREENSERVE_WORKER ignored "
                    r"\(did you mean GREENSERVE_WORKERS\?\)$")
    server.wait_for(r"\[WARNING\] unknown environment variable GREENSERVE_ZZZ_UNRELATED "
                    r"ignored$")
