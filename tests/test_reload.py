"""--reload through the real command: edit a file, the next requests see the new code.

The app is a copy of ``tests/fixtureapps/webapp.py`` in the test's own directory (the one
greenserve watches), whose ``VERSION`` the tests rewrite; ``GET /who`` answers
"VERSION PID MULTIPROCESS". Every wait polls the server and is bounded.
"""

import signal
import time

import pytest

import procs
from procs import FIXTURE_APPS, environment, wait_until

BOUND = 20  # seconds: the longest any change may take to be served (it takes about 1 s)
BOOTED = r"worker 0 \(pid (\d+)\) booted"


@pytest.fixture
def project(tmp_path):
    """A directory holding ``reloadme.py``, a copy of webapp.py to edit."""
    source = (FIXTURE_APPS / "webapp.py").read_text()
    (tmp_path / "reloadme.py").write_text(source)
    return tmp_path


@pytest.fixture
def processes(project):
    with procs.Processes(cwd=project) as started:
        yield started


def set_version(project, version, extra=""):
    path = project / "reloadme.py"
    text = path.read_text()
    start = text.index("VERSION = ")
    end = text.index("\n", start)
    path.write_text(text[:start] + f"VERSION = {version!r}{extra}" + text[end:])


def who(address):
    status, body, _ = procs.get(address, "/who")
    assert status == 200
    version, pid, _ = body.split()
    return version, int(pid)


def serves(address, version):
    """The pid serving ``version`` now, or None."""
    seen, pid = who(address)
    return pid if seen == version else None


def start(processes, *args):
    server = processes.greenserve("reloadme:app", "-b", "127.0.0.1:0", "--reload", *args)
    address = server.address()
    server.wait_for(r"--reload: watching .* for changes")
    server.wait_for(BOOTED)
    return server, address


def test_an_edit_is_served_by_a_new_worker(processes, project):
    server, address = start(processes)
    server.wait_for(r"starting a master process \(as --supervise does\): --reload needs one")
    version, first = who(address)
    assert version == "one"
    edited = time.monotonic()
    set_version(project, "two")
    second = wait_until(lambda: serves(address, "two"), timeout=BOUND, what="version two")
    took = time.monotonic() - edited
    print(f"the edit was served {took:.2f} s after it was saved")
    assert second != first
    server.wait_for(r"changed: reloadme\.py; reloading")
    server.signal(signal.SIGTERM)
    assert server.exit_code() == 0


def test_a_syntax_error_keeps_the_old_code_until_fixed(processes, project):
    server, address = start(processes)
    _, first = who(address)
    set_version(project, "broken", extra=" +")  # VERSION = 'broken' +
    server.wait_for(r"\[ERROR\] .*reloadme\.py:\d+: SyntaxError: ", timeout=BOUND)
    server.wait_for(r"not reloading after changes to reloadme\.py: the workers keep the code "
                    r"they loaded until the file is fixed")
    assert who(address) == ("one", first)  # same code, same worker
    assert len(server.matches(r"started worker")) == 1
    set_version(project, "fixed")
    assert wait_until(lambda: serves(address, "fixed"), timeout=BOUND, what="the fix") != first


def test_an_import_error_keeps_the_old_worker_serving(processes, project):
    server, address = start(processes)
    _, first = who(address)
    set_version(project, "broken", extra="; undefined_name")  # compiles, fails to import
    server.wait_for(r"cannot load the app: importing 'reloadme' failed: NameError: name "
                    r"'undefined_name' is not defined; the previous worker keeps serving",
                    timeout=BOUND)
    assert who(address) == ("one", first)
    set_version(project, "fixed")
    assert wait_until(lambda: serves(address, "fixed"), timeout=BOUND, what="the fix") != first


def test_extra_files_and_other_directories(processes, project, tmp_path_factory):
    """--reload-dir replaces the working directory; --reload-extra-file adds any file."""
    elsewhere = tmp_path_factory.mktemp("code")
    (elsewhere / "reloadme.py").write_text((project / "reloadme.py").read_text())
    (project / "reloadme.py").unlink()
    template = project / "page.html"
    template.write_text("<p>one</p>")
    server, address = start(processes, "--pythonpath", elsewhere, "--reload-dir", elsewhere,
                            "--reload-extra-file", "page.html")
    _, first = who(address)
    template.write_text("<p>two</p>")
    second = wait_until(lambda: (pid := who(address)[1]) != first and pid,
                        timeout=BOUND, what="a new worker after the template changed")
    server.wait_for(r"changed: page\.html; reloading")
    set_version(elsewhere, "two")
    third = wait_until(lambda: serves(address, "two"), timeout=BOUND, what="version two")
    assert third not in (first, second)


def test_reload_is_off_by_default(processes):
    server = processes.greenserve("reloadme:app", "-b", "127.0.0.1:0")
    server.address()
    assert server.listening()["pid"] == str(server.pid)  # one process, no master
    assert not server.matches("--reload")
    config = procs.run(procs.greenserve_command("--print-config"))
    assert "\n# reload = false  (default)\n" in config.stdout


def test_reload_without_watchfiles_says_how_to_install_it(project, tmp_path_factory):
    shadow = tmp_path_factory.mktemp("shadow")
    (shadow / "watchfiles.py").write_text("raise ImportError('No module named watchfiles')\n")
    result = procs.run(procs.greenserve_command("reloadme:app", "-b", "127.0.0.1:0",
                                                "--reload"),
                       cwd=project, env=environment(pythonpath=[shadow]))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "greenserve: error: --reload needs the watchfiles package: pip install watchfiles "
        "(the 'reload' extra)"]


def test_reload_and_preload_exclude_each_other(project):
    result = procs.run(procs.greenserve_command("reloadme:app", "--reload", "--preload"),
                       cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "greenserve: error: --reload and --preload exclude each other: with --preload the "
        "code is loaded once, in the master, and cannot reload"]


def test_a_missing_reload_dir(project):
    result = procs.run(procs.greenserve_command("reloadme:app", "--reload", "--reload-dir",
                                                "nowhere"), cwd=project)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"greenserve: error: --reload: cannot watch {project / 'nowhere'}: no such directory")
