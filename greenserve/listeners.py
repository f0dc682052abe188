"""Bind strings to listening sockets.

Accepted bind strings (``parse_bind`` returns the tuple on the right):

=====================  ===================================  ===============================
``HOST:PORT``          ``127.0.0.1:8000``, ``localhost:80``  ``("tcp", host, port)``
``[IPv6]:PORT``        ``[::1]:8000``, ``[::]:8000``         ``("tcp", host, port)``
``:PORT``              all IPv4 interfaces, as gunicorn      ``("tcp", "0.0.0.0", port)``
``HOST``               port 8000, as gunicorn                ``("tcp", host, 8000)``
``unix:PATH``          ``unix:/run/app.sock``                ``("unix", path)``
``fd://N``             an inherited listening socket         ``("fd", n)``
=====================  ===================================  ===============================

A bare number (``8000``) is refused rather than guessed at: gunicorn would take it for a
host name, and it is unclear whether all interfaces or only loopback were meant.

Sockets passed by systemd socket activation (``LISTEN_FDS``/``LISTEN_PID``, descriptors from
3 on) are taken by ``systemd_listeners``; ``reuse_port_copies`` binds one more set of
``SO_REUSEPORT`` sockets on the addresses already bound, one set per worker.

Sockets are plain ``socket.socket`` objects in blocking mode; the server decides how to use
them. Every failure is a ``ConfigError`` with one line naming the bind string.
"""

import errno
import os
import socket
import stat

from .errors import ConfigError

DEFAULT_PORT = 8000
_FORMS = "expected HOST:PORT, [IPv6]:PORT, unix:/path or fd://N"

# Short reasons for the errors people actually hit when binding.
_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.ENOENT: "no such directory",
    errno.EBADF: "not an open file descriptor",
    errno.ENOTSOCK: "not a socket",
}


def parse_bind(text):
    """Parse one bind string into ``("tcp", host, port)``, ``("unix", path)`` or ``("fd", n)``."""
    if not isinstance(text, str):
        raise ConfigError(f"malformed address {text!r} ({_FORMS})")
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if path.startswith("//"):  # unix:///run/x.sock, as some tools write it
            path = path[2:]
        if not path or "\0" in path:
            raise _malformed(text)
        return ("unix", path)
    if text.startswith("fd://"):
        number = text[len("fd://"):]
        if not number.isdigit() or not number.isascii():
            raise _malformed(text)
        return ("fd", int(number))
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or not host or (port and not port.startswith(":")):
            raise _malformed(text)
        if ":" not in host:
            raise _malformed(text)
        return ("tcp", host, _port(port[1:], text) if port else DEFAULT_PORT)
    host, sep, port = text.rpartition(":")
    if not sep:
        # No colon: a bare host name with the default port.
        if not text or text.isdigit() or not _plausible_host(text):
            raise _malformed(text)
        return ("tcp", text, DEFAULT_PORT)
    if ":" in host:  # an IPv6 address needs brackets to keep its colons apart from the port
        raise _malformed(text)
    if host == "":
        host = "0.0.0.0"
    elif not _plausible_host(host):
        raise _malformed(text)
    return ("tcp", host, _port(port, text))


def _port(text, original):
    if not (text.isdigit() and text.isascii()) or int(text) > 65535:
        raise _malformed(original)
    return int(text)


def _plausible_host(host):
    return all(ch.isalnum() or ch in "-._%" for ch in host)


def _malformed(text):
    return ConfigError(f"malformed address {text!r} ({_FORMS})")


def create_listeners(binds, backlog, reuse_port=False):
    """Bound, listening sockets for every bind string, or ``ConfigError`` (none left open).

    ``reuse_port`` sets ``SO_REUSEPORT`` on TCP sockets, so that more can be bound to the
    same address (see ``reuse_port_copies``).
    """
    parsed = [(text, parse_bind(text)) for text in binds]
    sockets = []
    try:
        for text, address in parsed:
            sockets.append(_create(text, address, backlog, reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def reuse_port_copies(sockets, backlog):
    """Another listening socket on the address of each ``SO_REUSEPORT`` socket in ``sockets``.

    Other sockets (unix, inherited, TCP without the option) are returned as they are: they
    are shared. The kernel spreads new connections over all sockets bound to one address.
    """
    copies = []
    try:
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_REUSEPORT):
                text = describe(sock)
                try:
                    copies.append(_tcp_socket(sock.family, sock.getsockname(), backlog, True))
                except OSError as exc:
                    reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
                    raise ConfigError(f"bind {text} (reuse-port): {reason}") from None
            else:
                copies.append(sock)
    except BaseException:
        for copy in copies:
            if copy not in sockets:
                copy.close()
        raise
    return copies


def systemd_listeners(environ, pid):
    """The sockets systemd passed to process ``pid`` (socket activation), or ``[]``.

    systemd sets ``LISTEN_PID`` and ``LISTEN_FDS`` (descriptors 3, 4, ...). The variables
    are removed from ``environ`` so that child processes the app starts do not take the
    sockets for theirs; the descriptors are made close-on-exec for the same reason.
    """
    expected_pid, count = environ.get("LISTEN_PID"), environ.get("LISTEN_FDS")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    if count is None or expected_pid != str(pid):
        return []  # not socket-activated, or the variables were meant for another process
    if not count.isdigit():
        raise ConfigError(f"LISTEN_FDS={count!r}: expected a number of descriptors")
    sockets = []
    try:
        for fd in range(3, 3 + int(count)):
            try:
                sock = _inherited(fd)
            except OSError as exc:
                reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
                raise ConfigError(f"systemd socket activation: fd {fd}: {reason}") from None
            os.set_inheritable(fd, False)
            sockets.append(sock)
    except BaseException:
        for sock in sockets:
            sock.detach()
        raise
    return sockets


def _create(text, address, backlog, reuse_port=False):
    kind = address[0]
    try:
        if kind == "tcp":
            return _tcp(address[1], address[2], backlog, reuse_port)
        if kind == "unix":
            return _unix(address[1], backlog)
        return _inherited(address[1])
    except socket.gaierror as exc:
        raise ConfigError(f"bind {text}: cannot resolve host '{address[1]}' "
                          f"({exc.strerror})") from None
    except OSError as exc:
        reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
        raise ConfigError(f"bind {text}: {reason}") from None


def _tcp(host, port, backlog, reuse_port=False):
    # AI_PASSIVE: a wildcard host means "every interface"; the first address found wins,
    # so "localhost" gives one socket, not one per address family.
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    return _tcp_socket(family, sockaddr, backlog, reuse_port)


def _tcp_socket(family, sockaddr, backlog, reuse_port):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restarting must not wait out TIME_WAIT connections of the previous run.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # [::]:8000 means IPv6 only; IPv4 is bound separately if wanted.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix(path, backlog):
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path):
    """Unlink ``path`` if it is a socket file that nobody listens on (left by a crash)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is in the way")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a listener with a full backlog must not hang the start-up
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except OSError:
        return  # let bind() report whatever is wrong with the path
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "address already in use")


def _inherited(fd):
    sock = socket.socket(fileno=fd)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.type != socket.SOCK_STREAM or not listening:
            raise OSError(errno.EINVAL, "not a listening stream socket")
    except BaseException:
        sock.detach()  # the descriptor is not ours to close
        raise
    return sock


def describe(sock):
    """How to reach ``sock``, for the startup log: ``http://127.0.0.1:8000``, ``unix:/path``."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):
            address = address.decode("utf-8", "replace")
        return f"unix:{address}"
    if sock.family == socket.AF_INET6:
        return f"http://[{address[0]}]:{address[1]}"
    return f"http://{address[0]}:{address[1]}"


def unix_paths(sockets):
    """The file paths of the unix sockets among ``sockets`` (to remove them after closing)."""
    return [sock.getsockname() for sock in sockets
            if sock.family == socket.AF_UNIX and isinstance(sock.getsockname(), str)
            and sock.getsockname()]


def remove_unix_files(paths):
    """Unlink socket files we created, once their sockets are closed; other files stay."""
    for path in paths:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
