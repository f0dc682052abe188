"""Counters, gauges and histograms for ``/metrics``, kept where every worker can add to them.

Each serving process owns one *slot* of an ``Arena``: a fixed row of 64-bit integers and
floats in memory shared by the master and its workers (an anonymous ``MAP_SHARED`` mmap
created before the first fork). A worker adds to its own slot only, with plain indexed
increments (``RequestStats.observe`` costs a few hundred nanoseconds); nothing is sent
anywhere, so a worker killed mid-request has lost nothing it had counted. The master's
admin listener sums the slots. When a worker exits, the master folds its slot into
*retired* totals before the slot is reused, so every counter stays monotonic across
restarts and nothing is counted twice (``Supervision``).

Without a master the process uses a one-slot arena of its own; the same code reads it.

This module is plain Python (no gevent): the master imports it. The text formats are the
Prometheus exposition format 0.0.4 and OpenMetrics 1.0.0, chosen by ``Accept``.
"""

import mmap
import os
import socket
import struct
import sys
import time
from bisect import bisect_left

# -- the layout of one slot ----------------------------------------------------------------

# Request methods with a series of their own; anything else is OTHER, so that a client
# cannot create series at will.
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds (seconds) of the request duration histogram: web latencies from a
# millisecond to a minute; long polls beyond that land in +Inf.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0, 60.0)
_NB = len(BUCKETS) + 1  # with +Inf

# Why a request (or a connection waiting for one) was refused or cut short.
REFUSAL_CAUSES = ("head_timeout", "body_timeout", "send_timeout", "deadline", "evicted",
                  "invalid")
# Connection states counted by a census (see admin.connection_census).
CONNECTION_STATES = ("reading", "active", "waiting", "idle", "closing")
# Why a worker process ended (reported by the master).
EXIT_CAUSES = ("stopped", "timeout", "boot_error", "crashed")

# Integer fields. One counter per (method, status class, duration bucket): the request
# counter and the histogram are both sums of it, so a request costs one increment there.
_REQUESTS = 0
_REQUEST_BYTES = _REQUESTS + len(METHODS) * len(STATUS_CLASSES) * _NB
_RESPONSE_BYTES = _REQUEST_BYTES + 1
_REFUSED = _RESPONSE_BYTES + 1
_APP_EXCEPTIONS = _REFUSED + len(REFUSAL_CAUSES)
_BLOCKED = _APP_EXCEPTIONS + 1
COUNTER_INTS = _BLOCKED + 1  # fields [0, COUNTER_INTS) are counters, folded on exit
# Gauges, written by the worker when the master asks (a census), never folded.
_CONNECTIONS = COUNTER_INTS
_FREE_SLOTS = _CONNECTIONS + len(CONNECTION_STATES)
_CENSUS_DONE = _FREE_SLOTS + 1  # the census generation last answered; -1: no more answers
SLOT_INTS = _CENSUS_DONE + 1

# Float fields, all counters.
_DURATION_SUM = 0
_CPU_SECONDS = 1  # written by the master from /proc (the worker's own CPU time)
SLOT_FLOATS = 2

SLOT_BYTES = -(-(SLOT_INTS + SLOT_FLOATS) * 8 // 64) * 64  # whole cache lines
HEADER_BYTES = 64  # the arena header: [0] = census generation the master wants
NOT_ANSWERING = -1

# The index of a request's counter is base(method) + class_offset(status) + bucket.
_METHOD_BASE = {}
for _index, _name in enumerate(METHODS):
    _METHOD_BASE[_name] = _METHOD_BASE[_name.encode()] = _index * len(STATUS_CLASSES) * _NB
_OTHER_BASE = _METHOD_BASE["OTHER"]
# status // 100 -> offset of its class; 0xx and 6xx-9xx (never valid) count as 5xx.
_CLASS_OFFSET = tuple((c - 1 if 1 <= c <= 5 else 4) * _NB for c in range(10))

# Processes whose slots an arena holds at once (workers, old and new during a reload).
DEFAULT_CAPACITY = 256


class Arena:
    """Slots for up to ``capacity`` processes in one anonymous shared mmap.

    Created before forking, it is shared with every child forked later: a worker writes
    its slot, the master reads them all. Pages no slot touches cost no memory.
    """

    def __init__(self, capacity=DEFAULT_CAPACITY):
        self.capacity = capacity
        # fileno -1 with the default MAP_SHARED: anonymous memory that children share.
        self._map = mmap.mmap(-1, HEADER_BYTES + capacity * SLOT_BYTES)
        self.header = memoryview(self._map)[:HEADER_BYTES].cast("q")

    def slot(self, index):
        """The (ints, floats) views of slot ``index``."""
        if not 0 <= index < self.capacity:
            raise IndexError(f"slot {index} outside 0..{self.capacity - 1}")
        start = HEADER_BYTES + index * SLOT_BYTES
        view = memoryview(self._map)
        ints = view[start:start + SLOT_INTS * 8].cast("q")
        floats_start = start + SLOT_INTS * 8
        floats = view[floats_start:floats_start + SLOT_FLOATS * 8].cast("d")
        return ints, floats

    def clear(self, index):
        ints, floats = self.slot(index)
        for i in range(SLOT_INTS):
            ints[i] = 0
        for i in range(SLOT_FLOATS):
            floats[i] = 0.0

    def stats(self, index):
        """The ``RequestStats`` writing slot ``index``."""
        ints, floats = self.slot(index)
        return RequestStats(ints, floats, self.header)


class RequestStats:
    """What one serving process counts, written straight into its slot.

    The hot path is ``observe``: called once per request, it is a dict lookup, a bisect
    and four indexed additions. The other methods are for rarer events.
    """

    __slots__ = ("ints", "floats", "header")

    def __init__(self, ints, floats, header):
        self.ints = ints
        self.floats = floats
        self.header = header

    def observe(self, method, status, seconds, bytes_in, bytes_out,
                _base=_METHOD_BASE.get, _other=_OTHER_BASE, _class=_CLASS_OFFSET,
                _bisect=bisect_left, _bounds=BUCKETS):
        """One request answered: ``method`` (bytes or str), ``status`` (100-599), its
        duration in seconds, request body bytes read and response body bytes sent."""
        ints = self.ints
        ints[_base(method, _other) + _class[status // 100] + _bisect(_bounds, seconds)] += 1
        self.floats[0] += seconds  # _DURATION_SUM
        ints[_RESPONSE_BYTES] += bytes_out
        if bytes_in:
            ints[_REQUEST_BYTES] += bytes_in

    def refused(self, cause):
        """A request refused or cut short; ``cause`` is one of ``REFUSAL_CAUSES``."""
        self.ints[_REFUSED + REFUSAL_CAUSES.index(cause)] += 1

    def app_exception(self):
        """The application raised (or its iterable did)."""
        self.ints[_APP_EXCEPTIONS] += 1

    def hub_blocked(self):
        """The hub was blocked past --block-warning (called from the watcher thread, the
        only writer of this field)."""
        self.ints[_BLOCKED] += 1

    # -- census: gauges the master cannot see from its own process ------------------------

    def census_wanted(self):
        """True when the master asked for fresh gauges since this process last answered."""
        done = self.ints[_CENSUS_DONE]
        return done != NOT_ANSWERING and done != self.header[0]

    def publish_census(self, states, free_slots):
        """Write the connection counts (``states`` in ``CONNECTION_STATES`` order) and the
        free connection slots, then mark the census answered."""
        ints = self.ints
        for i, count in enumerate(states):
            ints[_CONNECTIONS + i] = count
        ints[_FREE_SLOTS] = free_slots
        ints[_CENSUS_DONE] = self.header[0]

    def retire(self):
        """This process serves no more: zero its gauges and stop answering censuses (the
        master then does not wait for it)."""
        ints = self.ints
        for i in range(_CONNECTIONS, _CENSUS_DONE):
            ints[i] = 0
        ints[_CENSUS_DONE] = NOT_ANSWERING


def private_stats():
    """A one-slot arena and its stats, for a process without a master."""
    arena = Arena(1)
    return arena, arena.stats(0)


# -- sums -----------------------------------------------------------------------------------

class Totals:
    """Counters summed over slots (and retired totals), and gauges over live slots."""

    __slots__ = ("ints", "floats")

    def __init__(self):
        self.ints = [0] * SLOT_INTS
        self.floats = [0.0] * SLOT_FLOATS

    def add_counters(self, ints, floats):
        mine = self.ints
        for i in range(COUNTER_INTS):
            mine[i] += ints[i]
        for i in range(SLOT_FLOATS):
            self.floats[i] += floats[i]

    def add_gauges(self, ints):
        mine = self.ints
        for i in range(COUNTER_INTS, _CENSUS_DONE):
            mine[i] += ints[i]

    def add(self, ints, floats):
        # One copy first: summing out of shared memory field by field would read a
        # histogram while its worker keeps writing it.
        ints, floats = ints.tolist(), floats.tolist()
        self.add_counters(ints, floats)
        self.add_gauges(ints)


# -- families and the text formats ---------------------------------------------------------

class Family:
    """One metric family: ``samples`` are (suffix, labels, value), labels a tuple of
    (name, value) pairs; ``name`` has no ``_total`` (added for counters when rendered)."""

    __slots__ = ("name", "kind", "help", "unit", "samples")

    def __init__(self, name, kind, help, unit=None):
        self.name, self.kind, self.help, self.unit = name, kind, help, unit
        self.samples = []

    def add(self, value, labels=(), suffix=None):
        if suffix is None:
            suffix = "_total" if self.kind == "counter" else ""
        self.samples.append((suffix, labels, value))
        return self


TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def negotiate(accept):
    """The content type to answer an ``Accept`` header with: OpenMetrics when it is asked
    for at least as strongly as plain text (RFC 9110 §12.5.1 weights), else text 0.0.4."""
    best_openmetrics = best_text = 0.0
    for item in (accept or "").split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if media == "application/openmetrics-text":
            best_openmetrics = max(best_openmetrics, weight)
        elif media in ("text/plain", "text/*", "*/*"):
            best_text = max(best_text, weight)
    if best_openmetrics > 0 and best_openmetrics >= best_text:
        return OPENMETRICS_TYPE
    return TEXT_TYPE


def render(families, content_type=TEXT_TYPE):
    """The exposition of ``families`` as bytes, in the format of ``content_type``."""
    openmetrics = content_type == OPENMETRICS_TYPE
    lines = []
    for family in families:
        if not family.samples:
            continue
        name = family.name
        # 0.0.4 names a counter family by its sample name; OpenMetrics by the base name.
        shown = name + "_total" if family.kind == "counter" and not openmetrics else name
        lines.append(f"# HELP {shown} {_escape_help(family.help, openmetrics)}")
        lines.append(f"# TYPE {shown} {family.kind}")
        if openmetrics and family.unit:
            lines.append(f"# UNIT {shown} {family.unit}")
        for suffix, labels, value in family.samples:
            if labels:
                pairs = ",".join(f'{key}="{_escape_label(val)}"' for key, val in labels)
                lines.append(f"{name}{suffix}{{{pairs}}} {_number(value)}")
            else:
                lines.append(f"{name}{suffix} {_number(value)}")
    if openmetrics:
        lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def _number(value):
    if type(value) is int:
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(text):
    # Both formats: backslash, double quote and line feed are escaped in label values.
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text, openmetrics):
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if openmetrics else text


def _le(bound):
    # OpenMetrics wants canonical numbers for le: "1.0", "+Inf".
    return "+Inf" if bound == float("inf") else repr(float(bound))


# -- families from totals --------------------------------------------------------------------

def request_families(totals, census=True):
    """The per-request series (and, with ``census``, the connection gauges) of ``totals``."""
    ints = totals.ints
    requests = Family("greenserve_requests", "counter",
                      "Requests answered, by method and status class.")
    histogram = [0] * _NB
    for m, method in enumerate(METHODS):
        for c, status_class in enumerate(STATUS_CLASSES):
            start = _REQUESTS + (m * len(STATUS_CLASSES) + c) * _NB
            row = ints[start:start + _NB]
            count = sum(row)
            if count:
                requests.add(count, (("method", method), ("status", status_class)))
                for b in range(_NB):
                    histogram[b] += row[b]
    duration = Family("greenserve_request_duration_seconds", "histogram",
                      "Time from a request's head to the end of its response.", "seconds")
    cumulative = 0
    for bound, count in zip((*BUCKETS, float("inf")), histogram):
        cumulative += count
        duration.add(cumulative, (("le", _le(bound)),), "_bucket")
    # The count is the +Inf bucket by construction, as both formats require.
    duration.add(cumulative, (), "_count")
    duration.add(totals.floats[_DURATION_SUM], (), "_sum")
    refused = Family("greenserve_requests_refused", "counter",
                     "Requests refused or cut short, by cause: head_timeout (request head "
                     "too slow), body_timeout (body too slow), send_timeout (client not "
                     "reading, or too slowly), deadline (--request-timeout), evicted (closed at "
                     "--max-connections for a newcomer), invalid (malformed or too large).")
    for i, cause in enumerate(REFUSAL_CAUSES):
        refused.add(ints[_REFUSED + i], (("cause", cause),))
    families = [
        requests, duration,
        Family("greenserve_request_body_bytes", "counter",
               "Request body bytes read.", "bytes").add(ints[_REQUEST_BYTES]),
        Family("greenserve_response_body_bytes", "counter",
               "Response body bytes sent.", "bytes").add(ints[_RESPONSE_BYTES]),
        refused,
        Family("greenserve_app_exceptions", "counter",
               "Exceptions raised by the application.").add(ints[_APP_EXCEPTIONS]),
        Family("greenserve_hub_blocked", "counter",
               "Times code blocked a worker's event loop longer than --block-warning."
               ).add(ints[_BLOCKED]),
    ]
    if census:
        connections = Family("greenserve_connections", "gauge",
                             "Open client connections by state: reading (a request head "
                             "or body), active (in the app or sending, under a second), "
                             "waiting (in the app a second or more: long polls, streams), "
                             "idle (kept alive between requests), closing.")
        for i, state in enumerate(CONNECTION_STATES):
            connections.add(ints[_CONNECTIONS + i], (("state", state),))
        families += [
            connections,
            Family("greenserve_connection_slots_free", "gauge",
                   "Connections the workers can still accept before --max-connections."
                   ).add(ints[_FREE_SLOTS]),
        ]
    return families


# -- what the operating system tells ---------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = mmap.PAGESIZE


def process_usage(pid="self"):
    """(resident bytes, open fds, CPU seconds) of a process from /proc; None where /proc is
    missing (not Linux) or the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            stat = stream.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime
    rss = int(fields[21]) * _PAGE_SIZE
    return rss, fds, cpu


def listen_queue(sock):
    """(connections waiting to be accepted, the queue's limit) of a listening TCP socket,
    or None where unknown.

    Linux reports both through TCP_INFO of a listening socket: ``tcpi_unacked`` is the
    accept queue's length and ``tcpi_sacked`` its limit (the backlog).
    """
    if sock.fileno() == -1 or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not hasattr(socket, "TCP_INFO") or not sys.platform.startswith("linux"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < 32 or info[0] != 10:  # 10: TCP_LISTEN
        return None
    unacked, sacked = struct.unpack_from("II", info, 24)
    return unacked, sacked


def tcp_listen_overflows(path="/proc/net/netstat"):
    """The kernel's count of connections dropped because an accept queue was full, for the
    whole network namespace (TcpExt ListenOverflows), or None where unknown."""
    try:
        with open(path) as stream:
            lines = [line.split() for line in stream if line.startswith("TcpExt:")]
    except OSError:
        return None
    if len(lines) < 2 or "ListenOverflows" not in lines[0]:
        return None
    return int(lines[1][lines[0].index("ListenOverflows")])


def listener_name(sock):
    """A label for a listening socket: ``127.0.0.1:8000``, ``[::1]:8000``, ``unix:/path``."""
    try:
        address = sock.getsockname()
    except OSError:
        return "closed"
    if sock.family == socket.AF_UNIX:
        return f"unix:{address}"
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listener_families(sockets):
    """Accept-queue gauges of each listening TCP address (summed over reuse-port copies),
    and the namespace-wide overflow counter."""
    lengths, limits = {}, {}
    for sock in sockets:
        queue = listen_queue(sock)
        if queue is None:
            continue
        name = listener_name(sock)
        lengths[name] = lengths.get(name, 0) + queue[0]
        limits[name] = limits.get(name, 0) + queue[1]
    length = Family("greenserve_listen_queue_length", "gauge",
                    "Connections waiting in a listener's accept queue (the kernel refuses "
                    "or drops new ones once it reaches the limit).")
    limit = Family("greenserve_listen_queue_limit", "gauge",
                   "The accept queue's limit of a listener (--backlog, capped by "
                   "net.core.somaxconn).")
    for name in sorted(lengths):
        length.add(lengths[name], (("listener", name),))
        limit.add(limits[name], (("listener", name),))
    families = [length, limit]
    overflows = tcp_listen_overflows()
    if overflows is not None:
        families.append(Family(
            "greenserve_tcp_listen_overflows", "counter",
            "Connections the kernel dropped because an accept queue was full, for every "
            "listener of this host or container (TcpExt ListenOverflows), not only "
            "greenserve's.").add(overflows))
    return families


def process_families(usages, cpu_totals):
    """RSS, fds and CPU by role. ``usages`` maps a role to (rss, fds); ``cpu_totals`` maps a
    role to CPU seconds (for workers: live and exited ones)."""
    rss = Family("greenserve_process_resident_memory_bytes", "gauge",
                 "Resident memory of greenserve's processes by role (workers summed; "
                 "pages shared after fork are counted in each).", "bytes")
    fds = Family("greenserve_process_open_fds", "gauge",
                 "Open file descriptors of greenserve's processes by role (workers "
                 "summed).")
    cpu = Family("greenserve_process_cpu_seconds", "counter",
                 "CPU time (user and system) of greenserve's processes by role; for "
                 "workers, that of every worker since the start.", "seconds")
    for role, (resident, open_fds) in usages.items():
        rss.add(resident, (("role", role),))
        fds.add(open_fds, (("role", role),))
    for role, seconds in cpu_totals.items():
        cpu.add(seconds, (("role", role),))
    return [rss, fds, cpu]


# -- the master's view ------------------------------------------------------------------------

# How long a scrape waits for the workers to answer a census (they do on their next tick).
CENSUS_WAIT = 1.0
CENSUS_POLL = 0.005


class Supervision:
    """The master's bookkeeping: which worker writes which slot, what exited workers had
    counted, and the lifecycle counters.

    The supervisor calls ``reserve()`` before forking, ``adopt(index)`` in the child,
    ``spawned(pid, index, slot)`` in the parent, ``booted(pid)`` and
    ``exited(pid, cause, cpu_seconds)``; the admin listener's thread calls ``collect()``.
    A lock makes folding an exited worker's slot and summing for a scrape exclusive, so a
    scrape racing a restart sees the worker's counts exactly once.
    """

    def __init__(self, arena=None, listeners=lambda: ()):
        import threading  # here: importing this module must not load threading early
        self.arena = arena if arena is not None else Arena()
        self.listeners = listeners  # () -> the listening sockets, for queue gauges
        self.lock = threading.Lock()
        self.owners = {}              # pid -> slot index
        self.booted_pids = set()
        self.free = list(range(self.arena.capacity - 1, -1, -1))
        self.retired = Totals()
        self.starts = self.restarts = 0
        self.exits = dict.fromkeys(EXIT_CAUSES, 0)
        self.seen_slots = set()       # supervisor slots that had a worker (restarts)
        self.unslotted = 0            # workers started while every slot was taken

    def reserve(self):
        """Before a fork: a cleared slot index for the next worker, or None if all are
        taken (that worker then counts privately and its numbers are missing)."""
        with self.lock:
            if not self.free:
                self.unslotted += 1
                import logging
                logging.getLogger("greenserve.error").warning(
                    "all %d metrics slots are taken: the next worker's requests go "
                    "uncounted", self.arena.capacity)
                return None
            index = self.free.pop()
        self.arena.clear(index)
        return index

    def adopt(self, index):
        """In the forked child: the ``RequestStats`` of its slot (private if None)."""
        if index is None:
            return private_stats()[1]
        return self.arena.stats(index)

    def spawned(self, pid, index, slot):
        """In the master after a fork: worker ``pid`` writes slot ``index``; ``slot`` is
        the supervisor's slot (a second worker for it counts as a restart)."""
        with self.lock:
            self.starts += 1
            if slot in self.seen_slots:
                self.restarts += 1
            self.seen_slots.add(slot)
            if index is not None:
                self.owners[pid] = index

    def booted(self, pid):
        with self.lock:
            self.booted_pids.add(pid)

    def exited(self, pid, cause, cpu_seconds=None):
        """Worker ``pid`` has been reaped: fold its counts into the retired totals and free
        its slot. ``cpu_seconds``: its final CPU time if known (``os.wait4``)."""
        with self.lock:
            self.exits[cause] = self.exits.get(cause, 0) + 1
            self.booted_pids.discard(pid)
            index = self.owners.pop(pid, None)
            if index is None:
                return
            ints, floats = self.arena.slot(index)
            floats = floats.tolist()
            if cpu_seconds is not None and cpu_seconds > floats[_CPU_SECONDS]:
                floats[_CPU_SECONDS] = cpu_seconds
            self.retired.add_counters(ints.tolist(), floats)
            self.free.append(index)

    def collect(self):
        """Every family, summed over live and exited workers (called by the admin thread)."""
        self._census()
        usages = {"master": (0, 0)}
        cpu = {"master": 0.0, "worker": 0.0}
        own = process_usage()
        if own is not None:
            usages["master"] = own[:2]
            cpu["master"] = own[2]
        with self.lock:
            owners = dict(self.owners)
        # /proc outside the lock: a worker reaped meanwhile just reads as gone.
        worker_usage = {pid: process_usage(pid) for pid in owners}
        with self.lock:
            totals = Totals()
            totals.add_counters(self.retired.ints, self.retired.floats)
            rss = fds = 0
            for pid, index in self.owners.items():
                ints, floats = self.arena.slot(index)
                usage = worker_usage.get(pid)
                if usage is not None:
                    rss += usage[0]
                    fds += usage[1]
                    # The slot keeps the largest CPU time seen: folded on exit, it keeps
                    # the worker CPU counter monotonic.
                    if usage[2] > floats[_CPU_SECONDS]:
                        floats[_CPU_SECONDS] = usage[2]
                totals.add(ints, floats)
            usages["worker"] = (rss, fds)
            cpu["worker"] = totals.floats[_CPU_SECONDS]
            workers = len(self.owners)
            lifecycle = self._lifecycle_families(workers)
        return [*request_families(totals), *lifecycle,
                *process_families(usages, cpu), *listener_families(self.listeners())]

    def _census(self):
        """Ask every booted worker for fresh gauges and wait (boundedly) for the answers."""
        header = self.arena.header
        with self.lock:
            header[0] += 1
            wanted = header[0]
            waiting = [self.owners[pid] for pid in self.booted_pids if pid in self.owners]
        deadline = time.monotonic() + CENSUS_WAIT
        while waiting and time.monotonic() < deadline:
            time.sleep(CENSUS_POLL)
            with self.lock:
                live = set(self.owners.values())
            waiting = [index for index in waiting if index in live
                       and self.arena.slot(index)[0][_CENSUS_DONE] not in (wanted,
                                                                            NOT_ANSWERING)]

    def _lifecycle_families(self, workers):
        exits = Family("greenserve_worker_exits", "counter",
                       "Worker processes that ended, by cause: stopped (told to: stop, "
                       "reload, scale down, --max-requests), timeout (hub blocked past "
                       "--timeout), boot_error (the app failed to load), crashed (died "
                       "unexpectedly).")
        for cause in EXIT_CAUSES:
            exits.add(self.exits.get(cause, 0), (("cause", cause),))
        return [
            Family("greenserve_worker_starts", "counter",
                   "Worker processes started.").add(self.starts),
            Family("greenserve_worker_restarts", "counter",
                   "Worker processes started to replace one (a crash, a reload, "
                   "--max-requests).").add(self.restarts),
            exits,
            Family("greenserve_workers", "gauge",
                   "Worker processes running now (including ones starting or draining)."
                   ).add(workers),
        ]

