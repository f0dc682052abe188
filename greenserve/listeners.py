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


def create_listeners(binds, backlog):
    """Bound, listening sockets for every bind string, or ``ConfigError`` (none left open)."""
    parsed = [(text, parse_bind(text)) for text in binds]
    sockets = []
    try:
        for text, address in parsed:
            sockets.append(_create(text, address, backlog))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _create(text, address, backlog):
    kind = address[0]
    try:
        if kind == "tcp":
            return _tcp(address[1], address[2], backlog)
        if kind == "unix":
            return _unix(address[1], backlog)
        return _inherited(address[1])
    except socket.gaierror as exc:
        raise ConfigError(f"bind {text}: cannot resolve host '{address[1]}' "
                          f"({exc.strerror})") from None
    except OSError as exc:
        reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
        raise ConfigError(f"bind {text}: {reason}") from None


def _tcp(host, port, backlog):
    # AI_PASSIVE: a wildcard host means "every interface"; the first address found wins,
    # so "localhost" gives one socket, not one per address family.
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # Restarting must not wait out TIME_WAIT connections of the previous run.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
