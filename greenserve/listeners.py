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

``[::]:PORT`` is dual-stack: it takes IPv4 clients too (as ``::ffff:a.b.c.d``), unless the
same list also binds the IPv4 wildcard on that port (``0.0.0.0:PORT`` or ``:PORT``), which
then gets them. A specific IPv6 address (``[2001:db8::10]:PORT``, ``[::1]:PORT``) only ever
takes IPv6.

Unix sockets are created with the mode asked for (``unix_socket_mode``) and may be handed to
the user the server will run as. ``resolve_identity`` and ``drop_privileges`` switch a root
process to that user once the sockets are bound.

Sockets are plain ``socket.socket`` objects in blocking mode; the server decides how to use
them. Every failure is a ``ConfigError`` with one line naming the bind string.
"""

import errno
import os
import socket
import stat
from dataclasses import dataclass

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


def create_listeners(binds, backlog, reuse_port=False, unix_mode=0o777, unix_owner=None):
    """Bound, listening sockets for every bind string, or ``ConfigError`` (none left open).

    ``reuse_port`` sets ``SO_REUSEPORT`` on TCP sockets, so that more can be bound to the
    same address (see ``reuse_port_copies``). Unix sockets get the permissions
    ``unix_mode`` (see ``unix_socket_mode``) and, if ``unix_owner`` is an ``Identity``,
    its user and group.
    """
    parsed = [(text, parse_bind(text)) for text in binds]
    # Ports the IPv4 wildcard is bound to: "[::]" on the same port must leave IPv4 to it.
    ipv4_wildcard_ports = {address[2] for _, address in parsed
                           if address[0] == "tcp" and address[1] == "0.0.0.0" and address[2]}
    sockets = []
    try:
        for text, address in parsed:
            sockets.append(_create(text, address, backlog, reuse_port, unix_mode, unix_owner,
                                   ipv4_wildcard_ports))
    except BaseException:
        # Undo the whole start: close what was bound and remove the unix socket files
        # created for it, so a failed start leaves no file behind.
        paths = unix_paths(sockets)
        for sock in sockets:
            sock.close()
        remove_unix_files(paths)
        raise
    return sockets


def unix_socket_mode(config):
    """The permissions of the unix sockets greenserve creates: --socket-mode if given, else
    what --umask leaves of 0777 (gunicorn's meaning: umask 0 lets every local user connect,
    as a reverse proxy running as another user must)."""
    if config.socket_mode is not None:
        return config.socket_mode
    return 0o777 & ~config.umask


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
                v6only = (sock.family == socket.AF_INET6 and
                          bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)))
                try:
                    copies.append(_tcp_socket(sock.family, sock.getsockname(), backlog, True,
                                              v6only))
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


def _create(text, address, backlog, reuse_port, unix_mode, unix_owner, ipv4_wildcard_ports):
    kind = address[0]
    try:
        if kind == "tcp":
            return _tcp(address[1], address[2], backlog, reuse_port,
                        address[2] in ipv4_wildcard_ports)
        if kind == "unix":
            return _unix(address[1], backlog, unix_mode, unix_owner)
        return _inherited(address[1])
    except socket.gaierror as exc:
        raise ConfigError(f"bind {text}: cannot resolve host '{address[1]}' "
                          f"({exc.strerror})") from None
    except OSError as exc:
        reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
        raise ConfigError(f"bind {text}: {reason}") from None


def _tcp(host, port, backlog, reuse_port, ipv4_bound_apart):
    # AI_PASSIVE: a wildcard host means "every interface"; the first address found wins,
    # so "localhost" gives one socket, not one per address family.
    family, _, _, _, sockaddr = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
    # The IPv6 wildcard serves IPv4 clients too (gunicorn's [::] does), unless the IPv4
    # wildcard is bound on the same port: then both bind, one per family (as nginx does).
    # Set either way, so the net.ipv6.bindv6only sysctl does not decide.
    v6only = not (family == socket.AF_INET6 and sockaddr[0] == "::" and not ipv4_bound_apart)
    return _tcp_socket(family, sockaddr, backlog, reuse_port, v6only)


def _tcp_socket(family, sockaddr, backlog, reuse_port, v6only=True):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Restarting must not wait out TIME_WAIT connections of the previous run.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _unix(path, backlog, mode, owner):
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        # Connecting needs write permission on the socket file (unix(7)), and the file is
        # created by bind() with 0777 minus the umask. Binding under a umask that leaves
        # exactly ``mode`` means there is no moment when the socket is more open than asked
        # (a chmod afterwards would leave one).
        previous = os.umask(0o777 & ~mode)
        try:
            sock.bind(path)
        finally:
            os.umask(previous)
        bound = True
        if owner is not None:
            # Not listening yet, so nobody can connect before the owner is right;
            # follow_symlinks=False: a link planted at the path must not redirect the chown.
            os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        if bound:
            remove_unix_files([path])
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


def describe(sock, tls=False):
    """How to reach ``sock``, for the startup log: ``http://127.0.0.1:8000``, ``unix:/path``
    (``https://`` when it serves TLS)."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):
            address = address.decode("utf-8", "replace")
        if address.startswith("\0"):
            address = "@" + address[1:]  # an abstract name, written as ss(8) does
        return f"unix:{address}"
    scheme = "https" if tls else "http"
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{address[0]}]:{address[1]}"
    return f"{scheme}://{address[0]}:{address[1]}"


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


# -- privileges ---------------------------------------------------------------------------------

# uid_t and gid_t are 32 bits; (uid_t)-1 means "unchanged" to the system calls, not an id.
_NO_ID = 2**32 - 1


@dataclass(frozen=True)
class Identity:
    """Who the server becomes after binding: ``uid``, ``gid``, and the user ``name`` whose
    supplementary groups it takes (None: the user has no passwd entry, so only ``gid``)."""

    uid: int
    gid: int
    name: str = None


def resolve_identity(user, group, euid=None, check_access=True):
    """The ``Identity`` for --user/--group, or None when neither is given.

    ``ConfigError`` (one line) for an unknown user or group, and when this process is not
    root: only root can switch to another user, and silently serving as oneself would hide
    a broken deployment. With ``check_access``, also when that identity could not read
    what the server imports after switching (see ``unreadable_part``).
    """
    if user is None and group is None:
        return None
    import grp
    import pwd
    euid = os.geteuid() if euid is None else euid
    wanted = " and ".join(f"{kind} {name!r}" for kind, name in (("user", user), ("group", group))
                          if name is not None)
    if euid != 0:
        raise ConfigError(f"--user/--group: switching to {wanted} needs root, and greenserve "
                          f"runs as uid {euid} (start it as root, or leave --user and "
                          f"--group out)")
    uid, name, gid = os.getuid(), None, None
    if user is not None:
        entry = _lookup(pwd.getpwnam, pwd.getpwuid, user, "user")
        if entry is None:
            uid = int(user)  # an id without a passwd entry, as containers often run
        else:
            uid, name, gid = entry.pw_uid, entry.pw_name, entry.pw_gid
    if group is not None:
        entry = _lookup(grp.getgrnam, grp.getgrgid, group, "group")
        gid = int(group) if entry is None else entry.gr_gid
    if gid is None:  # --user given as a bare id: its group is the same number, as docker's
        gid = uid
    identity = Identity(uid, gid, name)
    if check_access:
        _check_readable_as(identity, wanted)
    return identity


def _needed_after_switching():
    """(directory, what it is, whether its listing must be readable) for what the process
    uses after switching user: Python's standard library, greenserve and gevent (imported
    later, so listed), and the working directory (entered; the app may come from
    elsewhere on the path)."""
    import importlib.util
    needed = [(os.path.dirname(os.__file__), "Python's standard library", True),
              (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "greenserve",
               True)]
    gevent = importlib.util.find_spec("gevent")  # found, not imported: the master has none
    if gevent is not None and gevent.origin:
        needed.append((os.path.dirname(os.path.dirname(gevent.origin)), "gevent", True))
    needed.append((os.getcwd(), "the working directory", False))
    return needed


def _check_readable_as(identity, wanted):
    """ConfigError (one line) if ``identity`` could not read what it needs: otherwise the
    switch happens and imports fail later with a traceback, or in every worker, for ever
    (Python installed under /root is the usual cause)."""
    if identity.uid == 0:
        return
    groups = set(os.getgrouplist(identity.name, identity.gid)) if identity.name is not None \
        else {identity.gid}
    groups.add(identity.gid)
    for path, what, listed in _needed_after_switching():
        blocked = unreadable_part(path, identity.uid, groups, listed)
        if blocked is not None:
            raise ConfigError(f"--user/--group: {wanted} cannot read {blocked}, on the way to "
                              f"{what} ({path}); make it readable for them, or install "
                              f"Python and the app where they can read them")


def unreadable_part(path, uid, groups, listed=True):
    """The first directory on the way to ``path`` (itself included) that user ``uid`` with
    ``groups`` cannot enter (search permission), or, with ``listed``, list if it is
    ``path``; None if none."""
    path = os.path.realpath(path)
    parts = [path]
    while parts[-1] != os.path.dirname(parts[-1]):
        parts.append(os.path.dirname(parts[-1]))
    for part in reversed(parts):
        try:
            info = os.stat(part)
        except OSError:
            return part
        if info.st_uid == uid:
            mode = info.st_mode >> 6
        elif info.st_gid in groups:
            mode = info.st_mode >> 3
        else:
            mode = info.st_mode
        needed = 0o5 if part == path and listed else 0o1  # pass through, maybe list
        if mode & needed != needed:
            return part
    return None


def _lookup(by_name, by_id, text, kind):
    """The passwd/group entry for a name or an id; None for an id that has none."""
    if text.isdigit() and (not text.isascii() or int(text) >= _NO_ID):
        raise ConfigError(f"--{kind} {text}: not a valid {kind} id")
    try:
        return by_id(int(text)) if text.isdigit() else by_name(text)
    except KeyError:
        if text.isdigit():
            return None
        raise ConfigError(f"--{kind} {text}: no such {kind} on this system") from None


def drop_privileges(identity):
    """Become ``identity`` for good: supplementary groups, then the group, then the user.

    That order is forced: once the user id is no longer root, the groups cannot change
    any more. Afterwards, getting root back must fail; if it does not, the switch did not
    take and serving on would be unsafe, so ``RuntimeError``.
    """
    if identity is None:
        return
    if identity.name is not None and identity.uid != 0:
        os.initgroups(identity.name, identity.gid)  # the user's groups, as a login has
    else:
        os.setgroups([identity.gid])  # drop root's own supplementary groups
    os.setgid(identity.gid)  # real, effective and saved ids all change (we are root)
    os.setuid(identity.uid)
    if identity.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise RuntimeError(f"could still become root after switching to uid {identity.uid}")
