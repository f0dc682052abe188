"""Bind strings and real listening sockets."""

import contextlib
import os
import socket

import pytest

from greenserve.errors import ConfigError
from greenserve.listeners import (create_listeners, describe, parse_bind, remove_unix_files,
                                  unix_paths)


def ipv6_available():
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def opened():
    """Collects sockets a test creates and closes them however the test ends."""
    sockets = []
    yield sockets
    for sock in sockets:
        sock.close()


def listen(opened, *binds, backlog=16):
    sockets = create_listeners(binds, backlog)
    opened.extend(sockets)
    return sockets


def round_trip(sock):
    """A client can connect to the listener, and the server side sees the connection."""
    family = sock.family
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(sock.getsockname())
        sock.settimeout(5)
        conn, _ = sock.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8000", ("tcp", "127.0.0.1", 8000)),
    ("0.0.0.0:0", ("tcp", "0.0.0.0", 0)),
    ("localhost:65535", ("tcp", "localhost", 65535)),
    ("example.com:80", ("tcp", "example.com", 80)),
    (":9000", ("tcp", "0.0.0.0", 9000)),
    ("localhost", ("tcp", "localhost", 8000)),
    ("[::1]:8000", ("tcp", "::1", 8000)),
    ("[::]:1", ("tcp", "::", 1)),
    ("[fe80::1%eth0]:80", ("tcp", "fe80::1%eth0", 80)),
    ("[::1]", ("tcp", "::1", 8000)),
    ("unix:/run/app.sock", ("unix", "/run/app.sock")),
    ("unix:relative.sock", ("unix", "relative.sock")),
    ("unix:///run/app.sock", ("unix", "/run/app.sock")),
    ("fd://3", ("fd", 3)),
    (" 127.0.0.1:80 ", ("tcp", "127.0.0.1", 80)),
])
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize("text", [
    "", "8000", "x:y", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:80x",
    "::1:8000", "[::1", "[::1]8000", "[]:80", "[127.0.0.1]:80", "unix:", "fd://", "fd://x",
    "fd://-1", "host name:80", "127.0.0.1:８０",
])
def test_parse_bind_malformed(text):
    with pytest.raises(ConfigError) as caught:
        parse_bind(text)
    assert str(caught.value) == (f"malformed address {text.strip()!r} (expected HOST:PORT, "
                                 f"[IPv6]:PORT, unix:/path or fd://N)")


def test_tcp_ipv4(opened):
    (sock,) = listen(opened, "127.0.0.1:0")
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    port = sock.getsockname()[1]
    assert port > 0
    assert describe(sock) == f"http://127.0.0.1:{port}"
    round_trip(sock)


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
def test_tcp_ipv6_is_v6_only(opened):
    (sock,) = listen(opened, "[::1]:0")
    assert sock.family == socket.AF_INET6
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert describe(sock) == f"http://[::1]:{sock.getsockname()[1]}"
    round_trip(sock)


def test_several_binds(opened, tmp_path):
    path = str(tmp_path / "s.sock")
    sockets = listen(opened, "127.0.0.1:0", f"unix:{path}", "127.0.0.1:0")
    assert [s.family for s in sockets] == [socket.AF_INET, socket.AF_UNIX, socket.AF_INET]
    assert sockets[0].getsockname() != sockets[2].getsockname()
    for sock in sockets:
        round_trip(sock)


def test_unix_socket(opened, tmp_path):
    path = str(tmp_path / "app.sock")
    (sock,) = listen(opened, f"unix:{path}")
    assert sock.family == socket.AF_UNIX
    assert describe(sock) == f"unix:{path}"
    assert unix_paths([sock]) == [path]
    round_trip(sock)
    sock.close()
    remove_unix_files([path])
    assert not os.path.exists(path)


def test_abstract_unix_socket_is_described_without_its_nul(opened):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    opened.append(sock)
    name = f"greenserve-test-{os.getpid()}"
    sock.bind("\0" + name)
    assert describe(sock) == f"unix:@{name}"


def test_stale_unix_socket_is_replaced(opened, tmp_path):
    path = str(tmp_path / "stale.sock")
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(path)
    leftover.close()  # the file stays, nobody listens: what a crashed server leaves behind
    assert os.path.exists(path)
    (sock,) = listen(opened, f"unix:{path}")
    round_trip(sock)


def test_live_unix_socket_is_left_alone(opened, tmp_path):
    path = str(tmp_path / "live.sock")
    (first,) = listen(opened, f"unix:{path}")
    with pytest.raises(ConfigError) as caught:
        listen(opened, f"unix:{path}")
    assert str(caught.value) == f"bind unix:{path}: address already in use"
    # The liveness probe was one connection, closed at once; the server accepts it and sees
    # EOF, as it would for any impatient client. Then it carries on undisturbed.
    first.settimeout(5)
    probe, _ = first.accept()
    with probe:
        assert probe.recv(1) == b""
    round_trip(first)


def test_regular_file_is_not_unlinked(tmp_path, opened):
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(ConfigError, match=r"^bind unix:.*data.txt: a file that is not a socket"):
        listen(opened, f"unix:{path}")
    assert path.read_text() == "precious"
    remove_unix_files([str(path)])
    assert path.exists()


def test_unix_socket_in_missing_directory(tmp_path, opened):
    path = tmp_path / "nope" / "s.sock"
    with pytest.raises(ConfigError, match=r"^bind unix:.*: no such directory$"):
        listen(opened, f"unix:{path}")


def test_address_in_use(opened):
    (first,) = listen(opened, "127.0.0.1:0")
    port = first.getsockname()[1]
    with pytest.raises(ConfigError) as caught:
        listen(opened, f"127.0.0.1:{port}")
    assert str(caught.value) == f"bind 127.0.0.1:{port}: address already in use"


def test_failure_closes_the_sockets_already_opened(opened, tmp_path):
    (busy,) = listen(opened, "127.0.0.1:0")
    path = str(tmp_path / "first.sock")
    port = busy.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"^bind 127\.0\.0\.1:{port}: address already in use$"):
        create_listeners([f"unix:{path}", f"127.0.0.1:{port}"], 16)
    # The unix socket made first was closed (and its file removed): nobody accepts on it.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client, \
            pytest.raises((ConnectionRefusedError, FileNotFoundError)):
        client.connect(path)


def test_failure_removes_the_unix_socket_files_it_created(opened, tmp_path):
    (busy,) = listen(opened, "127.0.0.1:0")
    port = busy.getsockname()[1]
    first, second = tmp_path / "first.sock", tmp_path / "second.sock"
    with pytest.raises(ConfigError, match="address already in use"):
        create_listeners([f"unix:{first}", f"unix:{second}", f"127.0.0.1:{port}"], 16)
    # A failed start leaves nothing behind: no socket file for the next start to trip on.
    assert sorted(os.listdir(tmp_path)) == []


def test_failed_start_leaves_no_socket_file(opened, tmp_path):
    from procs import run, greenserve_command
    (busy,) = listen(opened, "127.0.0.1:0")
    port = busy.getsockname()[1]
    path = tmp_path / "app.sock"
    for workers in ("1", "2"):
        result = run(greenserve_command("examples.hello:app", "-w", workers, "-b", f"unix:{path}",
                                        "-b", f"127.0.0.1:{port}"))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == \
            f"greenserve: error: bind 127.0.0.1:{port}: address already in use"
        assert not path.exists()


@contextlib.contextmanager
def unprivileged():
    """Run the block without root's powers (seteuid, restored after), or as we are."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)  # nobody: binding below 1024 and writing root's directories now fail
    try:
        yield
    finally:
        os.seteuid(0)


def test_permission_denied(opened):
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as knob:
            if int(knob.read()) <= 1:
                pytest.skip("this kernel lets anyone bind port 1")
    except FileNotFoundError:
        pass  # not Linux: ports below 1024 are privileged
    with unprivileged(), pytest.raises(ConfigError) as caught:
        listen(opened, "127.0.0.1:1")
    assert str(caught.value) == "bind 127.0.0.1:1: permission denied"


def test_permission_denied_on_unix_path(opened, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    with unprivileged(), pytest.raises(ConfigError) as caught:
        listen(opened, f"unix:{locked}/s.sock")
    assert str(caught.value) == f"bind unix:{locked}/s.sock: permission denied"


def test_address_not_available(opened):
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to this machine.
    with pytest.raises(ConfigError, match=r"^bind 192.0.2.1:0: address not available"):
        listen(opened, "192.0.2.1:0")


def test_unresolvable_host(opened):
    with pytest.raises(ConfigError, match=r"^bind no-such-host.invalid:80: cannot resolve host"):
        listen(opened, "no-such-host.invalid:80")


def test_malformed_bind_in_list(opened):
    with pytest.raises(ConfigError, match=r"^malformed address 'x:y'"):
        listen(opened, "127.0.0.1:0", "x:y")


def test_inherited_fd(opened):
    parent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened.append(parent)
    parent.bind(("127.0.0.1", 0))
    parent.listen(8)
    fd = os.dup(parent.fileno())
    (sock,) = listen(opened, f"fd://{fd}")
    assert sock.fileno() == fd
    assert describe(sock) == f"http://127.0.0.1:{parent.getsockname()[1]}"
    round_trip(sock)


def test_inherited_fd_must_be_a_listening_socket(opened, tmp_path):
    not_listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    opened.append(not_listening)
    with pytest.raises(ConfigError, match=f"^bind fd://{not_listening.fileno()}: "
                                          f"not a listening stream socket$"):
        listen(opened, f"fd://{not_listening.fileno()}")
    os.fstat(not_listening.fileno())  # still open: the fd was not ours to close

    with open(tmp_path / "f", "w") as regular:
        with pytest.raises(ConfigError, match=r"not a socket$"):
            listen(opened, f"fd://{regular.fileno()}")
        os.fstat(regular.fileno())

    unused = os.open(os.devnull, os.O_RDONLY)
    os.close(unused)
    with pytest.raises(ConfigError, match=r"not an open file descriptor$"):
        listen(opened, f"fd://{unused}")
