"""systemd socket activation and SO_REUSEPORT copies, in-process (fds, no servers)."""

import os
import socket

import pytest

from greenserve.errors import ConfigError
from greenserve.listeners import create_listeners, reuse_port_copies, systemd_listeners


def test_not_activated_without_the_variables():
    environ = {}
    assert systemd_listeners(environ, os.getpid()) == []


def test_variables_for_another_process_are_ignored_and_removed():
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert systemd_listeners(environ, os.getpid()) == []
    assert environ == {}  # children the app starts must not take the sockets for theirs


def test_descriptor_that_is_not_a_listening_socket_is_one_line():
    # Whatever sits at fd 3 in the test process (if anything) is not a listening socket
    # we made; LISTEN_FDS=1 with a pipe there must be refused cleanly.
    read_end, write_end = os.pipe()
    saved = os.dup(3) if _is_open(3) else None
    try:
        os.dup2(read_end, 3)
        environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1"}
        with pytest.raises(ConfigError, match=r"^systemd socket activation: fd 3: not a "
                                              r"socket$"):
            systemd_listeners(environ, os.getpid())
        assert _is_open(3)  # not ours to close
    finally:
        if saved is not None:
            os.dup2(saved, 3)
            os.close(saved)
        else:
            os.close(3)
        os.close(read_end)
        os.close(write_end)


def test_bad_count():
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "two"}
    with pytest.raises(ConfigError, match="LISTEN_FDS='two'"):
        systemd_listeners(environ, os.getpid())


def test_reuse_port_copies_share_the_port_and_leave_unix_sockets_shared(tmp_path):
    first = create_listeners(["127.0.0.1:0", f"unix:{tmp_path}/s.sock"], 16, reuse_port=True)
    copies = reuse_port_copies(first, 16)
    try:
        assert copies[0] is not first[0]
        assert copies[0].getsockname() == first[0].getsockname()
        assert copies[1] is first[1]
        # Either socket may get the connection; both are listening on the one port.
        with socket.create_connection(first[0].getsockname(), timeout=5):
            pass
    finally:
        copies[0].close()
        for sock in first:
            sock.close()


def test_copies_need_reuse_port_on_the_original():
    first = create_listeners(["127.0.0.1:0"], 16)
    try:
        assert reuse_port_copies(first, 16)[0] is first[0]  # shared, not rebound
    finally:
        first[0].close()


def _is_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False
