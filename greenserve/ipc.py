"""The pipe from a worker to its master: the messages, one writer and one reader.

A worker tells its master four things with one byte each, and one thing with a line:

=========  ===============================================================================
``BEAT``   its hub ran (the heartbeat the master checks against ``--timeout``)
``BOOTED`` the app is loaded and it accepts connections
``RETIRE`` it served ``--max-requests``: start a replacement, then stop it
``DUMPED`` it logged its stacks after SIGABRT: kill it now
``ERROR``  followed by a one-line reason and ``\\n``: it cannot load the app
=========  ===============================================================================

The master speaks to workers with signals only, so the pipe goes one way. Every message
fits in ``PIPE_BUF`` bytes, which POSIX makes one atomic ``write()`` on a pipe: a message
lands whole or not at all, never interleaved or half-written. Reads have no such promise
(a read may stop anywhere), so the reader keeps an unfinished message for the next read.
"""

import os
import select
from typing import NamedTuple

BEAT = b"."
BOOTED = b"B"
RETIRE = b"R"
DUMPED = b"D"
ERROR = b"E"

# POSIX promises at least 512; Linux has 4096.
PIPE_BUF = getattr(select, "PIPE_BUF", 512)
READ_SIZE = 65536
# Reads per Reader.read() call at most, so a chatty worker cannot hold up the master.
MAX_READS = 16


class Message(NamedTuple):
    """One message from a worker: its kind (``BEAT`` ...) and, for ``ERROR``, the reason."""

    kind: bytes
    reason: str = ""


def encode(kind, reason=""):
    """The bytes of one message; an ``ERROR`` reason is made one line and cut to fit."""
    if kind != ERROR:
        return kind
    text = " ".join(reason.split()).encode("utf-8", "replace")
    room = PIPE_BUF - len(ERROR) - 1
    if len(text) > room:
        # Cut on a character boundary: the reader decodes what it gets.
        text = text[:room].decode("utf-8", "ignore").encode("utf-8")
    return ERROR + text + b"\n"


class Writer:
    """The worker's end. ``send`` never blocks: a worker must not stall on its master."""

    __slots__ = ("fd",)

    def __init__(self, fd):
        self.fd = fd
        os.set_blocking(fd, False)

    def send(self, kind, reason=""):
        """Write one message; False when the pipe was full and it was dropped.

        Only a master that stopped reading fills the pipe; a dropped heartbeat then costs
        nothing. ``BrokenPipeError`` means the master is gone.
        """
        try:
            os.write(self.fd, encode(kind, reason))
        except BlockingIOError:
            return False
        return True


class Reader:
    """The master's end: ``read()`` returns the messages that have arrived whole."""

    __slots__ = ("fd", "_pending", "_skipping")

    def __init__(self, fd):
        self.fd = fd
        os.set_blocking(fd, False)
        self._pending = b""     # the start of a message whose end has not arrived yet
        self._skipping = False  # dropping the rest of an over-long ERROR line

    @property
    def closed(self):
        """The worker closed its end (it is exiting) and so did we."""
        return self.fd is None

    def read(self):
        """Read what the pipe holds now (without waiting); the complete messages in it.

        At end of file the descriptor is closed and ``closed`` becomes true.
        """
        messages = []
        for _ in range(MAX_READS):
            if self.fd is None:
                break
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                data = b""  # the pipe is broken: as good as closed
            if not data:
                self.close()
                break
            messages += self.feed(data)
        return messages

    def feed(self, data):
        """The messages completed by ``data``, in order; keeps any unfinished one."""
        buffer = self._pending + data
        messages = []
        start = 0
        while start < len(buffer):
            if self._skipping:
                end = buffer.find(b"\n", start)
                if end < 0:
                    start = len(buffer)
                    break
                self._skipping = False
                start = end + 1
                continue
            kind = buffer[start:start + 1]
            if kind != ERROR:
                messages.append(Message(kind))
                start += 1
                continue
            end = buffer.find(b"\n", start + 1)
            if end < 0:
                if len(buffer) - start >= PIPE_BUF:
                    # Longer than any writer sends: keep what came, drop the rest of the line.
                    messages.append(Message(ERROR, _text(buffer[start + 1:])))
                    self._skipping = True
                    start = len(buffer)
                break
            messages.append(Message(ERROR, _text(buffer[start + 1:end])))
            start = end + 1
        self._pending = buffer[start:]
        return messages

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _text(raw):
    return raw.decode("utf-8", "replace")
