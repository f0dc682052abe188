"""Files in one private directory, safe to expose to anonymous clients (used by files.py).

What keeps it safe:
- The directory is created with mode 0700; an existing one must belong to the user running
  the server and be writable by nobody else. In a shared place such as /tmp another user
  could otherwise create it first and decide what is served, or swap files under it.
- Names are one path component: letters, digits and ``._-``, no leading dot. So no "/",
  "..", NUL, or hidden name (the partial uploads are hidden).
- Every open is relative to a descriptor held on the directory, with O_NOFOLLOW, and what is
  served is checked with fstat on the opened descriptor: a symlink in the directory is never
  followed, and nothing can be swapped in between a check and the open (checking a path and
  then opening it leaves exactly that window).
- An upload has a size limit, and the directory a total; it is written to a hidden
  ``.partial-*`` file and appears under its name only once complete, by link() (which never
  replaces an existing file) or, when overwriting is allowed, by an atomic rename. Partial
  files left by a killed server are removed when a store opens the directory; a live upload
  holds a lock on its partial file, so a second worker starting up leaves it alone.
"""

import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat

PIECE = 65536
PARTIAL_PREFIX = ".partial-"
SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# O_NONBLOCK: opening a FIFO placed in the directory must not wait for a writer (the flag
# changes nothing for regular files).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What a name that cannot be served looks like to open(): missing, a symlink, not readable,
# a socket.
NOT_SERVABLE = frozenset((errno.ENOENT, errno.ELOOP, errno.EACCES, errno.ENXIO))


class HTTPError(Exception):
    """A request the store will not carry out; ``status`` is the HTTP status line."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class UnsafeDirectory(Exception):
    """The directory could be changed by someone else: refuse to serve it."""


def open_private_directory(path):
    """A descriptor on the directory ``path``, created with mode 0700 when missing."""
    try:
        os.makedirs(path, mode=0o700)
    except FileExistsError:
        pass
    try:
        # O_NOFOLLOW: the directory itself must not be a symlink to somewhere else.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise UnsafeDirectory(f"refusing {path}: not a directory we can open "
                              f"({exc.strerror}; a symlink is refused too)") from None
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"it belongs to uid {info.st_uid}, not to this server's uid {os.geteuid()}"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"other users can write to it (mode {stat.filemode(info.st_mode)})"
    if problem:
        os.close(fd)
        raise UnsafeDirectory(f"refusing {path}: {problem}; use a directory only this user "
                              f"can write to, or a path that does not exist yet")
    return fd


class FileStore:
    """The files of one private directory, addressed by safe names only."""

    def __init__(self, directory, max_upload, max_total, overwrite=False):
        self.directory = directory
        self.max_upload = max_upload
        self.max_total = max_total
        self.overwrite = overwrite
        self.fd = open_private_directory(directory)
        self.removed_partials = self.remove_stale_partials()

    def close(self):
        os.close(self.fd)

    def names(self):
        """The regular files, sorted (no symlinks, no partial uploads)."""
        with os.scandir(self.fd) as entries:
            return sorted(entry.name for entry in entries if SAFE_NAME.fullmatch(entry.name)
                          and entry.is_file(follow_symlinks=False))

    def used_bytes(self):
        """Bytes in the directory's regular files, partial uploads included."""
        total = 0
        with os.scandir(self.fd) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    pass  # removed since the listing
        return total

    def open(self, name):
        """(binary file, size) of the regular file ``name``; a 404 HTTPError otherwise."""
        if not SAFE_NAME.fullmatch(name):
            raise HTTPError("404 Not Found", "no such file")
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in NOT_SERVABLE:
                raise HTTPError("404 Not Found", "no such file") from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise HTTPError("404 Not Found", "no such file")
        return os.fdopen(fd, "rb"), info.st_size

    def save(self, name, stream, length):
        """Copy ``length`` bytes (None: until the end) from ``stream`` to a new file ``name``.

        Refused before a byte is read when the name is bad (400), ``length`` is over the
        upload limit (413) or the room left (507), or the file exists and may not be
        replaced (409); a chunked body is stopped as soon as it passes a limit.
        """
        if not SAFE_NAME.fullmatch(name):
            raise HTTPError("400 Bad Request", "name: letters, digits and ._- only, "
                                               "no leading dot, at most 128 characters")
        if length is not None and length > self.max_upload:
            raise self._too_large()
        if not self.overwrite and self._exists(name):
            raise self._exists_error(name)
        room = self.max_total - self.used_bytes()
        if room <= 0 or (length is not None and length > room):
            raise self._no_room(room)
        partial, fd = self._create_partial()
        try:
            size, digest = self._copy(stream, fd, length, room)
            if length is not None and size < length:
                raise HTTPError("400 Bad Request", f"body ended after {size} of {length} bytes")
            self._publish(partial, name)
        finally:
            # Unlink before close: the lock on the partial file lasts until the close, so a
            # starting worker cannot take this name for a stale file in between.
            try:
                os.unlink(partial, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            os.close(fd)
        return {"name": name, "size": size, "sha256": digest}

    def _copy(self, stream, fd, length, room):
        digest = hashlib.sha256()
        size = 0
        while length is None or size < length:
            piece = stream.read(PIECE if length is None else min(PIECE, length - size))
            if not piece:
                break
            size += len(piece)
            if size > self.max_upload:
                raise self._too_large()
            if size > room:
                raise self._no_room(room)
            digest.update(piece)
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
        return size, digest.hexdigest()

    def _create_partial(self):
        """A new hidden file, locked, as (name, descriptor)."""
        name = PARTIAL_PREFIX + secrets.token_hex(8)
        # Created and locked under a shared lock on the directory: the stale-file sweep holds
        # it exclusively, so it never sees a partial file that is not locked yet.
        fcntl.flock(self.fd, fcntl.LOCK_SH)
        try:
            fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=self.fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException:
                os.unlink(name, dir_fd=self.fd)
                os.close(fd)
                raise
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return name, fd

    def _publish(self, partial, name):
        try:
            if self.overwrite:
                os.replace(partial, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            else:
                # link() fails when the name exists, also when another upload of the same
                # name finished while this one was arriving; rename would replace it.
                os.link(partial, name, src_dir_fd=self.fd, dst_dir_fd=self.fd,
                        follow_symlinks=False)
        except (FileExistsError, IsADirectoryError):
            raise self._exists_error(name) from None

    def _exists(self, name):
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def remove_stale_partials(self):
        """Delete the partial uploads nobody is writing (left by a killed server); how many."""
        removed = 0
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            with os.scandir(self.fd) as entries:
                names = [entry.name for entry in entries
                         if entry.name.startswith(PARTIAL_PREFIX)]
            for name in names:
                try:
                    fd = os.open(name, READ_FLAGS, dir_fd=self.fd)
                except OSError:
                    continue  # gone already, or not one of ours (a symlink)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        continue
                    # A live upload holds an exclusive lock on its file until it is done;
                    # the kernel drops the lock when the process holding it dies.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(name, dir_fd=self.fd)
                    removed += 1
                except (BlockingIOError, FileNotFoundError):
                    pass  # being written, or finished in the meantime
                finally:
                    os.close(fd)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return removed

    def _too_large(self):
        # RFC 9110 §15.5.14: 413 for content larger than the server is willing to process.
        return HTTPError("413 Content Too Large",
                         f"uploads are limited to {self.max_upload} bytes")

    def _no_room(self, room):
        # RFC 4918 §11.5: 507, the server cannot store the representation.
        return HTTPError("507 Insufficient Storage",
                         f"the store has {max(room, 0)} bytes left for uploads")

    def _exists_error(self, name):
        # RFC 9110 §15.5.10: 409, the request conflicts with the target's current state.
        return HTTPError("409 Conflict", f"{name} exists and uploads may not replace files")
