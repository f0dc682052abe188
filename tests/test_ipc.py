"""The worker -> master pipe messages (greenserve.ipc), over real pipes, without forking.

A worker writes whole messages; the master's reads may stop anywhere. So every stream is
also cut at every byte offset and fed in two reads, and read one byte at a time.
"""

import os
import socket

import pytest

from greenserve import ipc
from greenserve.ipc import BEAT, BOOTED, DUMPED, ERROR, RETIRE, Message

REASON = "importing 'shop' failed: ModuleNotFoundError: No module named 'café'"

# One of each message, two ERRORs among them, several one-byte messages in a row.
MESSAGES = [Message(BEAT), Message(BOOTED), Message(ERROR, REASON), Message(BEAT),
            Message(BEAT), Message(RETIRE), Message(ERROR, "second"), Message(DUMPED)]
STREAM = b"".join(ipc.encode(kind, reason) for kind, reason in MESSAGES)


def test_wire_format():
    assert STREAM == (b".BE" + REASON.encode() + b"\n..RE" + b"second\nD")


@pytest.fixture(params=["pipe", "socketpair"])
def channel(request):
    """A (write fd, read fd) pair: a pipe as the supervisor uses, or a stream socket pair."""
    if request.param == "pipe":
        read_end, write_end = os.pipe()
        ends = [read_end, write_end]
    else:
        left, right = socket.socketpair()
        ends = [left.detach(), right.detach()]
        read_end, write_end = ends
    yield write_end, read_end
    for fd in ends:
        try:
            os.close(fd)
        except OSError:
            pass  # the Reader closed its end at EOF


def test_writer_and_reader_carry_every_message(channel):
    write_end, read_end = channel
    writer, reader = ipc.Writer(write_end), ipc.Reader(read_end)
    for kind, reason in MESSAGES:
        assert writer.send(kind, reason) is True
    assert reader.read() == MESSAGES  # several messages in one read


def test_a_stream_cut_at_every_offset_reads_the_same(channel):
    write_end, read_end = channel
    os.set_blocking(write_end, False)
    reader = ipc.Reader(read_end)
    for cut in range(len(STREAM) + 1):
        if cut:
            os.write(write_end, STREAM[:cut])
        first = reader.read()
        # The first read gives exactly the messages that arrived whole.
        assert b"".join(ipc.encode(*m) for m in first) == STREAM[:_whole_prefix(cut)], cut
        if cut < len(STREAM):
            os.write(write_end, STREAM[cut:])
        assert first + reader.read() == MESSAGES, cut


def test_a_stream_read_one_byte_at_a_time(channel):
    write_end, read_end = channel
    os.set_blocking(write_end, False)
    reader = ipc.Reader(read_end)
    got = []
    for i in range(len(STREAM)):
        os.write(write_end, STREAM[i:i + 1])
        got += reader.read()
    assert got == MESSAGES


@pytest.fixture
def parser():
    """A Reader used only through ``feed`` (its descriptor is never read)."""
    reader = ipc.Reader(os.open(os.devnull, os.O_RDONLY))
    yield reader
    reader.close()


def test_feed_parses_every_split_every_way():
    # Every pair of cut points: three pieces, empty ones included.
    for first in range(len(STREAM) + 1):
        for second in range(first, len(STREAM) + 1):
            reader = ipc.Reader(os.open(os.devnull, os.O_RDONLY))
            try:
                got = (reader.feed(STREAM[:first]) + reader.feed(STREAM[first:second])
                       + reader.feed(STREAM[second:]))
            finally:
                reader.close()
            assert got == MESSAGES, (first, second)


def _whole_prefix(cut):
    """How many bytes of STREAM[:cut] form whole messages."""
    end = 0
    for kind, reason in MESSAGES:
        size = len(ipc.encode(kind, reason))
        if end + size > cut:
            break
        end += size
    return end


def test_end_of_file_closes_the_reader(channel):
    write_end, read_end = channel
    writer, reader = ipc.Writer(write_end), ipc.Reader(read_end)
    writer.send(BOOTED)
    os.close(write_end)
    assert reader.read() == [Message(BOOTED)]
    assert reader.closed
    with pytest.raises(OSError):
        os.fstat(read_end)  # the descriptor itself was closed
    assert reader.read() == []


def test_nothing_to_read_returns_at_once(channel):
    _, read_end = channel
    reader = ipc.Reader(read_end)
    assert reader.read() == [] and not reader.closed


def test_error_reason_is_one_line():
    assert ipc.encode(ERROR, "no module\nnamed\t 'x'\r\n") == b"Eno module named 'x'\n"


def test_error_reason_is_cut_to_one_atomic_write_on_a_character_boundary(parser):
    # 'é' is two bytes in UTF-8: place one across the cut.
    reason = "x" * (ipc.PIPE_BUF - 3) + "é" * 10
    data = ipc.encode(ERROR, reason)
    assert len(data) <= ipc.PIPE_BUF
    assert data.endswith(b"x\n")  # the split 'é' was dropped, not mangled
    assert parser.feed(data) == [Message(ERROR, "x" * (ipc.PIPE_BUF - 3))]


def test_a_full_pipe_drops_whole_messages_and_never_blocks():
    read_end, write_end = os.pipe()
    try:
        writer, reader = ipc.Writer(write_end), ipc.Reader(read_end)
        sent = 0
        while writer.send(BEAT):  # a master that stopped reading
            sent += 1
        os.read(read_end, 100)  # a little room, less than the next message needs
        sent -= 100
        long_error = "y" * 1000
        dropped = writer.send(ERROR, long_error) is False
        messages = reader.read()
        assert dropped and messages == [Message(BEAT)] * sent  # no piece of the ERROR
        assert writer.send(ERROR, long_error)  # the empty pipe takes it whole
        assert reader.read() == [Message(ERROR, long_error)]
    finally:
        os.close(write_end)
        reader.close()


def test_the_writer_reports_a_master_that_is_gone():
    read_end, write_end = os.pipe()
    writer = ipc.Writer(write_end)
    os.close(read_end)
    try:
        with pytest.raises(BrokenPipeError):
            writer.send(BEAT)
    finally:
        os.close(write_end)


def test_an_overlong_error_line_from_a_foreign_writer_is_cut_and_the_rest_skipped(parser):
    junk = b"E" + b"z" * (ipc.PIPE_BUF + 10)
    first = parser.feed(junk[:ipc.PIPE_BUF + 5])
    assert first == [Message(ERROR, "z" * (ipc.PIPE_BUF + 4))]
    # The line's remainder is skipped, even a 'B' in it; what follows it is read.
    assert parser.feed(junk[ipc.PIPE_BUF + 5:] + b"B\nB.") == [Message(BOOTED), Message(BEAT)]
