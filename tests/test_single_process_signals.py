"""Without a master, HUP, USR1, USR2, TTIN and TTOU never kill or freeze greenserve: HUP,
USR2, TTIN and TTOU are logged and ignored, USR1 reopens the log files (logrotate's
`kill -USR1` after moving them)."""

import signal

import pytest

import procs
from procs import get


def test_hup_usr1_usr2_keep_the_server_serving(tmp_path):
    error_log = tmp_path / "error.log"
    access_log = tmp_path / "access.log"
    with procs.Processes() as started:
        server = started.greenserve("webapp:app", "-b", "127.0.0.1:0", "--error-log",
                                    error_log, "--access-log", access_log)
        procs.wait_until(lambda: error_log.exists() and "Listening at" in error_log.read_text(),
                         what="the start-up line in the error log")
        address = server_address(error_log)
        assert get(address, "/one")[0] == 200

        # logrotate: move the files away, then USR1.
        error_log.rename(tmp_path / "error.log.1")
        access_log.rename(tmp_path / "access.log.1")
        server.signal(signal.SIGUSR1)
        procs.wait_until(lambda: error_log.exists() and "reopening log files" in
                         error_log.read_text() + (tmp_path / "error.log.1").read_text(),
                         what="the reopen")
        assert get(address, "/two")[0] == 200
        procs.wait_until(lambda: access_log.exists() and "/two" in access_log.read_text(),
                         what="the access line in the new file")
        assert "/two" not in (tmp_path / "access.log.1").read_text()

        # TTIN and TTOU would stop (freeze) a process that does not handle them.
        for signum in (signal.SIGHUP, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU):
            server.signal(signum)
            name = signal.Signals(signum).name
            procs.wait_until(lambda: f"{name} received and ignored" in error_log.read_text(),
                             what=f"the {name} line")
            assert server.running()
            assert get(address, "/after")[0] == 200

        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0


def server_address(error_log):
    match = procs.LISTENING.search(error_log.read_text())
    return match["host"], int(match["port"])


def test_quit_stops_at_once_and_cleans_up(tmp_path):
    pid_file = tmp_path / "gs.pid"
    unix_path = tmp_path / "gs.sock"
    error_log = tmp_path / "error.log"
    with procs.Processes() as started:
        server = started.greenserve("webapp:app", "-b", "127.0.0.1:0", "-b",
                                    f"unix:{unix_path}", "--pid", pid_file,
                                    "--error-log", error_log, "--graceful-timeout", "60")
        procs.wait_until(lambda: error_log.exists() and "Listening at" in error_log.read_text(),
                         what="the start-up line in the error log")
        address = server_address(error_log)
        # A request in flight does not hold a quick stop back (a graceful one would wait).
        held = procs.HeldRequest(server, address, tmp_path)
        server.signal(signal.SIGQUIT)
        assert server.exit_code() == 0
        assert "SIGQUIT received; stopping at once" in error_log.read_text()
        assert not pid_file.exists() and not unix_path.exists()
        held.thread.join(procs.WAIT)
        assert held.done() and "response" not in held.outcome  # cut, not answered


@pytest.mark.parametrize("patching", [[], ["--no-monkey-patch"]], ids=["patched", "unpatched"])
def test_sigterm_while_the_app_loads_stops_cleanly(tmp_path, patching):
    # systemd, Docker or Kubernetes may stop a server that is still importing a slow app:
    # nothing to drain yet, but it must end as a stop does (a line, status 0, no pid file
    # left behind), not be killed by the signal.
    # slow_to_import sleeps: patched, in gevent's hub, where the signal handler then runs.
    pid_file = tmp_path / "gs.pid"
    with procs.Processes() as started:
        server = started.greenserve("slow_to_import:app", "-b", "127.0.0.1:0", "--pid",
                                    pid_file, *patching)
        server.wait_for("IMPORTING")
        # Asleep: in the import's sleep (gevent's hub, when patched), not before it.
        procs.wait_until(lambda: process_state(server.pid) == "S", what="the import's sleep")
        assert pid_file.exists()
        server.signal(signal.SIGTERM)
        assert server.exit_code() == 0
        assert "SIGTERM received while starting (loading the app); stopped" in server.output()
        assert "Traceback" not in server.text()
        assert not pid_file.exists()


def process_state(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]
