"""--block-warning: name the request whose code blocks a worker's gevent hub.

A gevent hub runs one greenlet at a time; code that never yields (a CPU loop, an
unpatched C driver, ``time.sleep`` without monkey-patching) stalls every other request of
the worker. ``BlockWatch`` logs one warning per greenlet that blocked, with the worker's
pid, the request (method and target) and the stack of the code that blocked, and counts
it in the metrics.

How: a small OS thread pings the hub through a libev async watcher every quarter of the
threshold; the hub answers in a callback as soon as its loop turns. While an answer is
overdue the thread samples the hub thread's running frame (``sys._current_frames``), so it
can tell one greenlet that keeps running from several taking turns. Once the same greenlet
has run for the threshold, the thread captures its stack and the request from its frames
(the ``environ`` local of the WSGI call) and counts the event; the warning itself is
logged by the hub when it runs again, with the stall's total length. Logging from the
thread is avoided on purpose: after monkey-patching, the logging handlers' locks are
gevent locks, which belong to the hub. A single call into C that holds the interpreter
lock (a huge regex, sort or JSON document) stops this thread too: it then wakes far too
late, and reports the stack as it finds it, soon after the call returned (the request is
still the right one; the innermost frames may have moved on).

Nothing runs per request or per greenlet switch; the cost is the thread's wake-ups. gevent's
own monitor thread (``gevent.config.monitor_thread``) was the alternative: its greenlet
trace function runs on every switch (measured +0.35 to +0.5 us per switch, a few per
request), it only sees a stall that spans a whole check period (one between 1x and 2x the
threshold can go unseen), and its report walks every object in the heap
(``format_run_info``: 2 s and 50,000 lines with 10,000 connections), printed to stderr.
"""

import logging
import os
import sys
import traceback
from collections import deque
from time import monotonic

from .accessformat import escape

error_log = logging.getLogger("greenserve.error")

# The thread never sleeps less than this between checks (a tiny threshold stays cheap).
MIN_INTERVAL = 0.01


class Report:
    """One greenlet seen blocking the hub: when it started, the request, its stack, and
    (once another greenlet was seen running) when it stopped."""

    __slots__ = ("seq", "since", "ended", "request", "stack", "held_lock")

    def __init__(self, seq, since, request, stack, held_lock=False):
        self.seq, self.since, self.request, self.stack = seq, since, request, stack
        self.ended = None
        # The thread could not even run: one call into C kept the interpreter lock.
        self.held_lock = held_lock


class BlockWatch:
    """Warns when the hub of the calling thread is blocked ``threshold`` seconds or more.

    ``on_block()`` is called from the watcher thread once per greenlet that blocked, as
    soon as it is seen (a metric counter: it must not take locks). ``start()`` in the hub's
    thread; ``stop()``.
    """

    def __init__(self, threshold, on_block=None, log=error_log):
        if not threshold > 0:
            raise ValueError("threshold must be positive")
        self.threshold = threshold
        self.interval = max(threshold / 4, MIN_INTERVAL)
        self.on_block = on_block
        self.log = log
        self._ping = None
        self._ident = None
        self._idle_code = None  # the hub's run(): the only frame while the hub waits
        self._running = False
        # Written by the thread: the ping sequence number and when it was sent.
        self._asked = 0
        self._asked_at = 0.0
        # Written by the hub: the last ping answered, and when.
        self._answered = 0
        self._answered_at = 0.0
        # Reports waiting for the hub to log them (a deque: appends and pops are atomic).
        self._reports = deque()

    def start(self):
        from gevent import get_hub
        from gevent.monkey import get_original
        if self._running:
            return
        # The real thread primitives, even in a monkey-patched process.
        self._ident = get_original("_thread", "get_ident")()
        hub = get_hub()
        self._idle_code = getattr(type(hub).run, "__code__", None)
        self._ping = hub.loop.async_(ref=False)  # must not keep the loop alive
        self._ping.start(self._answer)
        self._answered = self._asked = 0
        self._running = True
        start_thread = get_original("_thread", "start_new_thread")
        start_thread(self._watch, (self._ping, get_original("time", "sleep")))

    def stop(self):
        self._running = False
        ping, self._ping = self._ping, None
        if ping is not None:
            # Stopped, not closed: the thread may still send once (see timers.Sweeper).
            ping.stop()

    # -- in the hub --------------------------------------------------------------------------

    def _answer(self):
        now = monotonic()
        previous, previous_at = self._answered, self._answered_at
        self._answered, self._answered_at = self._asked, now
        reports = self._reports
        while reports:
            report = reports.popleft()
            ended = report.ended
            if ended is None:
                # A report stored after its ping was answered ended at that earlier answer.
                ended = now if report.seq > previous else previous_at
            self._log(report, ended - report.since)

    def _log(self, report, seconds):
        where = (f"{report.request} blocked the hub" if report.request
                 else "the hub was blocked outside any request")
        if report.held_lock:
            how = ("in one call that held the interpreter lock; the stack soon after it "
                   "returned (most recent call last)")
        else:
            how = "; the stack of the code that blocked (most recent call last)"
        self.log.warning("worker (pid %d): %s for %.3f s (--block-warning %g ms)%s:\n%s",
                         os.getpid(), where, seconds, self.threshold * 1000,
                         " " + how if report.held_lock else how, report.stack.rstrip("\n"))

    # -- in the watcher thread ---------------------------------------------------------------

    def _watch(self, ping, sleep):
        # [outermost frame of the greenlet seen running, since when, its Report or None]
        running = None
        last_check = monotonic()
        while True:
            sleep(self.interval)
            if not self._running or self._ping is not ping:
                return
            now = monotonic()
            if self._answered == self._asked:
                # The hub answered the last ping: all is well; ask again.
                running = None
                if now - last_check - self.interval >= self.threshold:
                    self._held_lock(last_check + self.interval, now)
                self._asked_at = now
                self._asked += 1
                ping.send()
            else:
                frame = sys._current_frames().get(self._ident)
                # Woken this late, this thread could not run either: what blocked the hub
                # held the interpreter lock, and the frame seen now is from after it (a
                # call that releases the lock, such as a send, let this thread in).
                late = now - last_check - self.interval >= self.threshold
                running = self._sample(frame, running, now, last_check, late)
                del frame
            last_check = now

    def _sample(self, frame, running, now, last_check, late=False):
        """Follow who runs while the hub is overdue; report a greenlet once it has run
        for the threshold. Returns the new ``running`` record. ``frame`` is None when the
        hub's thread runs no Python code (a C function run directly as a greenlet);
        ``late``: this thread itself could not run since ``last_check``."""
        bottom = None if frame is None else _outermost(frame)
        if running is None:
            running = [bottom, self._asked_at, None]
        elif running[0] is not bottom:
            # Another greenlet: the previous one ended, and this one began, since the last
            # check at most.
            if running[2] is not None:
                running[2].ended = now
            running = [bottom, last_check, None]
        if running[2] is None and now - running[1] >= self.threshold:
            report = Report(self._asked, running[1], _request_of(frame), _stack(frame),
                            held_lock=late)
            running[2] = report
            self._reports.append(report)
            if self.on_block is not None:
                self.on_block()
        return running

    def _held_lock(self, since, now):
        """This thread woke far too late although the hub had answered: a call into C code
        (a huge regex, sort or JSON document) held the interpreter lock, so neither the hub
        nor this thread could run. Report it unless the hub is idle now (then it was only
        this thread that the operating system ran late)."""
        frame = sys._current_frames().get(self._ident)
        if frame is None or frame.f_code is self._idle_code:
            return
        report = Report(self._asked, since, _request_of(frame), _stack(frame),
                        held_lock=True)
        report.ended = now
        self._reports.append(report)
        if self.on_block is not None:
            self.on_block()


def _outermost(frame):
    """The first frame of the greenlet running ``frame`` (a greenlet's frames end there)."""
    while frame.f_back is not None:
        frame = frame.f_back
    return frame


def _stack(frame):
    if frame is None:
        return "  (no Python code: a C function runs as the greenlet itself)"
    return "".join(traceback.format_stack(frame))


def _request_of(frame):
    """``METHOD target`` of the WSGI request being served in ``frame``'s stack, or None.

    The outermost frame with an ``environ`` local holding a WSGI environ is the server's
    own call of the application; its ``RAW_URI`` is the target as received. Both are
    escaped: they come from the client and go to the log.
    """
    found = None
    while frame is not None:
        environ = frame.f_locals.get("environ")
        if isinstance(environ, dict) and "REQUEST_METHOD" in environ:
            found = environ
        frame = frame.f_back
    if found is None:
        return None
    target = found.get("RAW_URI")
    if not isinstance(target, str):
        target = found.get("SCRIPT_NAME", "") + found.get("PATH_INFO", "")
        if found.get("QUERY_STRING"):
            target += "?" + found["QUERY_STRING"]
    return f"{escape(str(found['REQUEST_METHOD']))} {escape(target)}"
